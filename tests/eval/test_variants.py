"""Each attention variant against the spec (DESIGN §1) on small inputs.

The oracle is float64: the reference op for DENSE (W >= N) and DELTA, and the reference's own
``masked_attention`` over the spec's sparse pattern for SPARSE. SPARSE_TAIL is the sparse rows
then the dense rows; DELTA minus SPARSE_TAIL must be the anchor correction O_d(a) - O_s(a).
"""

from __future__ import annotations

import pytest
import torch

from delta_opt import DeltaConfig
from delta_opt.eval.variants import Variant, variant_attention
from delta_opt.ops.checks import num_corrected_rows
from delta_opt.ops.reference import delta_attention_reference, masked_attention
from delta_opt.testing import error_floor, make_inputs

CASES = [
    # (q_heads, kv_heads, n, head_dim, config)
    (4, 2, 53, 40, DeltaConfig(window=7, sinks=3, stride=5, tail=9)),
    (3, 3, 61, 64, DeltaConfig(window=12, sinks=0, stride=8)),  # default tail 128 > N: all tail
    (6, 2, 77, 80, DeltaConfig(window=16, sinks=4, stride=16, tail=16)),
    (2, 1, 70, 128, DeltaConfig(window=5, sinks=1, stride=3, tail=0)),
]


def _oracle(variant: Variant, x, *, causal: bool, config: DeltaConfig) -> torch.Tensor:
    """The variant from the spec, computed in the inputs' dtype (float64 for the oracle)."""
    q, k, v, mask = x.q, x.k, x.v, x.attn_mask
    n = q.shape[2]
    if variant is Variant.DELTA:
        return delta_attention_reference(q, k, v, mask, causal=causal, window=config.window, sinks=config.sinks,
                                         stride=config.stride, tail=config.resolved_tail)  # fmt: skip
    dense = delta_attention_reference(q, k, v, mask, causal=causal, window=n, sinks=0, stride=1, tail=0)
    if variant is Variant.DENSE:
        return dense
    group = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    scores = (q @ kr.transpose(-1, -2)) / q.shape[-1] ** 0.5
    i, j = torch.arange(n).view(-1, 1), torch.arange(n).view(1, -1)
    allowed = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
    allowed = allowed & (((i - j).abs() < config.window) | (j < config.sinks))
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            scores, allowed = scores + mask, allowed & (mask > float("-inf"))
    sparse = masked_attention(scores, allowed.expand_as(scores), vr)
    if variant is Variant.SPARSE:
        return sparse
    n_sparse = num_corrected_rows(n, config.stride, config.resolved_tail)
    return torch.cat([sparse[:, :, :n_sparse], dense[:, :, n_sparse:]], dim=2)


# DELTA is the op itself (tested at length in tests/ops); here only that the variant is the op.
@pytest.mark.parametrize("variant", [Variant.DENSE, Variant.SPARSE, Variant.SPARSE_TAIL])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"Hq{c[0]}_Hkv{c[1]}_N{c[2]}_D{c[3]}")
@pytest.mark.parametrize("causal, mask", [(True, "none"), (True, "key_padding"), (False, "bool"), (True, "additive")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_variant_matches_the_spec(variant, case, causal, mask, dtype):
    q_heads, kv_heads, n, head_dim, config = case
    x = make_inputs(batch=2, q_heads=q_heads, kv_heads=kv_heads, n=n, head_dim=head_dim, mask=mask, seed=n)
    expected = _oracle(variant, x, causal=causal, config=config)
    xd = x.to(dtype)
    got = variant_attention(variant, xd.q, xd.k, xd.v, xd.attn_mask, causal=causal, config=config)
    assert got.dtype == dtype and got.shape == expected.shape
    # Data-derived slack: what rounding costs the same spec computed in `dtype`.
    rounding = 0.0
    if dtype != torch.float64:
        rounding = (_oracle(variant, xd, causal=causal, config=config).double() - expected).abs().max().item()
    err = (got.double() - expected).abs().max().item()
    assert err <= 2 * rounding + error_floor(dtype), f"{variant.value}: error {err:.3g}, rounding {rounding:.3g}"


@pytest.mark.parametrize("causal, mask", [(True, "key_padding"), (False, "none")])
def test_delta_variant_is_the_op(causal, mask):
    q_heads, kv_heads, n, head_dim, config = CASES[0]
    x = make_inputs(batch=2, q_heads=q_heads, kv_heads=kv_heads, n=n, head_dim=head_dim, mask=mask)
    got = variant_attention(Variant.DELTA, x.q, x.k, x.v, x.attn_mask, causal=causal, config=config)
    expected = _oracle(Variant.DELTA, x, causal=causal, config=config)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_delta_minus_sparse_tail_is_the_anchor_correction(causal):
    config = DeltaConfig(window=6, sinks=2, stride=4, tail=10)
    x = make_inputs(q_heads=4, kv_heads=2, n=50, head_dim=16)
    kw = dict(causal=causal, config=config)
    delta = variant_attention(Variant.DELTA, x.q, x.k, x.v, **kw)
    tail = variant_attention(Variant.SPARSE_TAIL, x.q, x.k, x.v, **kw)
    sparse = variant_attention(Variant.SPARSE, x.q, x.k, x.v, **kw)
    dense = variant_attention(Variant.DENSE, x.q, x.k, x.v, **kw)
    n_sparse = num_corrected_rows(50, 4, 10)
    anchors = torch.arange(n_sparse) // 4 * 4
    correction = dense[:, :, anchors] - sparse[:, :, anchors]
    torch.testing.assert_close(delta[:, :, :n_sparse] - tail[:, :, :n_sparse], correction, rtol=0, atol=1e-12)
    torch.testing.assert_close(delta[:, :, n_sparse:], tail[:, :, n_sparse:], rtol=0, atol=1e-12)
    assert correction.abs().max() > 1e-3  # the window really drops keys here


def test_variants_agree_where_the_window_covers_everything():
    config = DeltaConfig(window=64, sinks=0, stride=4, tail=8)
    x = make_inputs(n=40, head_dim=16)
    outs = [variant_attention(v, x.q, x.k, x.v, causal=True, config=config) for v in Variant]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-12)


def test_bad_arguments():
    x = make_inputs(n=8, head_dim=16)
    with pytest.raises(ValueError, match="variant must be one of"):
        variant_attention("window", x.q, x.k, x.v, causal=True, config=DeltaConfig())
    with pytest.raises(ValueError, match="DeltaConfig"):
        variant_attention("sparse", x.q, x.k, x.v, causal=True, config={"window": 4})
    with pytest.raises(ValueError, match="prefill"):
        variant_attention("sparse", x.q[:, :, :1], x.k, x.v, causal=True, config=DeltaConfig())
    assert Variant.parse("SPARSE_TAIL") is Variant.SPARSE_TAIL
