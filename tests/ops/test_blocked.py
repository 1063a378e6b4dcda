"""`blocked` against the reference: float64 to 1e-10, other dtypes within data-derived bounds,
and the memory promise (no N x N tensor when there is no mask)."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from delta_opt.ops.blocked import delta_attention_blocked
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import error_floor, make_inputs, reference_errors

CAUSALITY = pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])


@CAUSALITY
@pytest.mark.parametrize("head_dim", [40, 64, 80, 128])
@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (6, 2), (8, 1)], ids=["mha", "gqa3", "mqa"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
def test_float64_matches_reference(causal, head_dim, q_heads, kv_heads, mask):
    n = 131  # not a multiple of the stride, block or window
    x = make_inputs(batch=2, q_heads=q_heads, kv_heads=kv_heads, n=n, head_dim=head_dim, mask=mask, seed=head_dim)
    params = dict(causal=causal, window=19, sinks=5, stride=8, tail=21)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params, block_size=16)
    assert (got - expected).abs().max().item() <= 1e-10


@pytest.mark.parametrize("block_size", [1, 7, 64, 1000])
def test_block_size_does_not_change_the_result(block_size):
    x = make_inputs(n=97, head_dim=16, mask="bool")
    params = dict(causal=True, window=12, sinks=4, stride=6, tail=10)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params, block_size=block_size)
    assert (got - expected).abs().max().item() <= 1e-10


@CAUSALITY
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_low_precision_within_data_derived_tolerance(causal, dtype, mask):
    x = make_inputs(batch=2, q_heads=8, kv_heads=2, n=157, head_dim=64, mask=mask, seed=11)
    params = dict(causal=causal, window=24, sinks=4, stride=16, tail=20)
    impl_err, eager_err = reference_errors(delta_attention_blocked, x, dtype, **params)
    assert impl_err <= 2 * eager_err + error_floor(dtype), (impl_err, eager_err)


def test_values_of_other_width_than_keys():
    x = make_inputs(n=50, head_dim=32, value_dim=24)
    params = dict(causal=True, window=6, sinks=2, stride=4, tail=8)
    got = delta_attention_blocked(x.q, x.k, x.v, **params)
    assert got.shape == (1, 4, 50, 24)
    torch.testing.assert_close(got, delta_attention_reference(x.q, x.k, x.v, **params), rtol=0, atol=1e-10)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@CAUSALITY
def test_no_n_by_n_tensor_without_mask(causal):
    n, heads = 2048, 2
    x = make_inputs(batch=1, q_heads=heads, kv_heads=1, n=n, head_dim=16, dtype=torch.float32)
    with _LargestTensor() as probe:
        delta_attention_blocked(x.q, x.k, x.v, causal=causal, window=64, sinks=16, stride=32, tail=64)
    # The output is heads * n * 16; one N x N score matrix per head would be heads * n * n.
    assert probe.largest < n * n // 8, probe.largest
    # The probe does see the full-size tensors the reference builds:
    with _LargestTensor() as probe:
        delta_attention_reference(x.q, x.k, x.v, causal=causal, window=64, sinks=16, stride=32, tail=64)
    assert probe.largest >= heads * n * n


def test_bad_block_size_is_rejected():
    x = make_inputs(n=8, head_dim=8)
    with pytest.raises(ValueError, match="block_size must be an integer >= 1"):
        delta_attention_blocked(x.q, x.k, x.v, causal=True, window=2, sinks=0, stride=2, block_size=0)
