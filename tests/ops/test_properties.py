"""The consequences of DESIGN §1 that every implementation must show, checked on each of them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from delta_opt.ops.reference import masked_attention
from delta_opt.testing import make_inputs

from .impls import IMPLS, impl_fn

pytestmark = pytest.mark.parametrize("impl", IMPLS)

CAUSALITY = pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])


def _dense(x, causal, attn_mask=None):
    """Dense attention in float64 with repeated K/V: the spec's O_d."""
    group = x.q.shape[1] // x.k.shape[1]
    k = x.k.repeat_interleave(group, 1)
    v = x.v.repeat_interleave(group, 1)
    n_q, n_k = x.q.shape[2], k.shape[2]
    allowed = torch.ones(n_q, n_k, dtype=torch.bool)
    if causal:
        allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
    scores = x.q @ k.transpose(-1, -2) / x.q.shape[-1] ** 0.5
    if attn_mask is not None:
        allowed = allowed & attn_mask
    return masked_attention(scores, allowed.expand_as(scores), v)


@CAUSALITY
def test_anchor_rows_equal_dense(impl, causal):
    x = make_inputs(batch=2, q_heads=6, kv_heads=3, n=101, head_dim=40)
    stride, tail = 8, 13
    out = impl_fn(impl)(x.q, x.k, x.v, causal=causal, window=5, sinks=2, stride=stride, tail=tail)
    dense = _dense(x, causal)
    n_corrected = (101 - tail) // stride * stride
    anchors = torch.arange(0, n_corrected, stride)
    torch.testing.assert_close(out[:, :, anchors], dense[:, :, anchors], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, :, n_corrected:], dense[:, :, n_corrected:], rtol=0, atol=1e-12)
    # ...and the rows between anchors are not dense (the test would pass vacuously otherwise).
    assert (out[:, :, 1:n_corrected] - dense[:, :, 1:n_corrected]).abs().max() > 1e-3


@CAUSALITY
@pytest.mark.parametrize(("window", "stride"), [(97, 7), (500, 7), (5, 1)], ids=["window=N", "window>N", "stride=1"])
def test_full_window_or_unit_stride_gives_dense(impl, causal, window, stride):
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=97, head_dim=64)
    out = impl_fn(impl)(x.q, x.k, x.v, causal=causal, window=window, sinks=3, stride=stride, tail=0)
    torch.testing.assert_close(out, _dense(x, causal), rtol=0, atol=1e-12)


def test_sparse_only_rows_differ_from_dense_when_window_is_short(impl):
    x = make_inputs(n=64, head_dim=16)
    out = impl_fn(impl)(x.q, x.k, x.v, causal=True, window=4, sinks=0, stride=64, tail=0)
    # stride 64 = N: only row 0 is an anchor; rows 1.. are sparse + delta and must not be dense.
    assert (out - _dense(x, True))[:, :, 8:].abs().amax() > 1e-2


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_no_future_leak_when_causal(impl, mask):
    """Changing k/v at positions > i leaves rows <= i unchanged, correction included."""
    x = make_inputs(batch=1, q_heads=4, kv_heads=1, n=90, head_dim=16, mask=mask, seed=3)
    params = dict(causal=True, window=6, sinks=3, stride=8, tail=10)
    before = impl_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params)
    for cut in (0, 17, 40, 63, 85):
        k2, v2 = x.k.clone(), x.v.clone()
        k2[:, :, cut + 1 :] = torch.randn_like(k2[:, :, cut + 1 :]) * 10
        v2[:, :, cut + 1 :] = torch.randn_like(v2[:, :, cut + 1 :]) * 10
        after = impl_fn(impl)(x.q, k2, v2, x.attn_mask, **params)
        torch.testing.assert_close(after[:, :, : cut + 1], before[:, :, : cut + 1], rtol=0, atol=1e-12)
        assert (after[:, :, cut + 1 :] - before[:, :, cut + 1 :]).abs().max() > 1e-3


@CAUSALITY
@pytest.mark.parametrize(
    ("group", "mask"),
    # bool: a full [B, 1, N, N] mask; key_padding: [B, 1, 1, N], the mask the Triton kernels take
    [(1, "bool"), (2, "bool"), (4, "bool"), (8, "bool"), (2, "key_padding"), (8, "key_padding")],
)
def test_grouped_query_equals_repeated_kv(impl, causal, group, mask):
    x = make_inputs(batch=2, q_heads=8, kv_heads=8 // group, n=77, head_dim=32, mask=mask)
    params = dict(causal=causal, window=9, sinks=4, stride=6, tail=11)
    gqa = impl_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params)
    repeated = impl_fn(impl)(
        x.q, x.k.repeat_interleave(group, 1), x.v.repeat_interleave(group, 1), x.attn_mask, **params
    )
    torch.testing.assert_close(gqa, repeated, rtol=0, atol=1e-12)


@CAUSALITY
def test_batch_rows_are_independent(impl, causal):
    x = make_inputs(batch=3, q_heads=2, kv_heads=2, n=70, head_dim=16, mask="key_padding")
    params = dict(causal=causal, window=5, sinks=2, stride=4, tail=6)
    whole = impl_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params)
    for b in range(3):
        alone = impl_fn(impl)(x.q[b : b + 1], x.k[b : b + 1], x.v[b : b + 1], x.attn_mask[b : b + 1], **params)
        torch.testing.assert_close(whole[b : b + 1], alone, rtol=0, atol=1e-12)


@CAUSALITY
@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_rows_with_no_visible_key_are_zero_not_nan(impl, causal, kind):
    x = make_inputs(batch=1, q_heads=2, kv_heads=1, n=50, head_dim=16)
    if kind == "bool":
        mask = torch.ones(50, 50, dtype=torch.bool)
        mask[[3, 21, 33]] = False  # 3 and 33 are corrected rows, 21 too; stride 4 -> anchor 20 feeds 21
        mask[20] = False  # an empty anchor row
    else:
        mask = torch.zeros(50, 50, dtype=torch.float64)
        mask[[3, 21, 33, 20]] = float("-inf")
    out = impl_fn(impl)(x.q, x.k, x.v, mask, causal=causal, window=4, sinks=1, stride=4, tail=8)
    assert not out.isnan().any()
    for row in (3, 20, 21, 33):
        assert out[:, :, row].abs().max() == 0


@CAUSALITY
@pytest.mark.parametrize("kind", ["bool", "additive", "key_padding"])
def test_masked_keys_have_no_influence(impl, causal, kind):
    """Scrambling keys that the mask hides from every row changes nothing."""
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=60, head_dim=16, mask=kind, seed=7)
    mask = x.attn_mask.clone()
    hidden = torch.zeros(2, 60, dtype=torch.bool)
    if kind == "key_padding":
        hidden = ~mask[:, 0, 0]  # the padded keys of each sequence
    else:
        hidden[:, [0, 5, 31, 59]] = True  # a sink, window keys, the last key
        mask[..., hidden[0]] = False if kind == "bool" else float("-inf")
    assert hidden.any()
    params = dict(causal=causal, window=7, sinks=3, stride=5, tail=7)
    before = impl_fn(impl)(x.q, x.k, x.v, mask, **params)
    k2, v2 = x.k.clone(), x.v.clone()
    for b in range(2):
        k2[b, :, hidden[b]] = 99.0
        v2[b, :, hidden[b]] = -99.0
    after = impl_fn(impl)(x.q, k2, v2, mask, **params)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)


@CAUSALITY
def test_decode_steps_and_chunks_are_dense_bottom_right(impl, causal):
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=40, head_dim=16)
    for n_q in (1, 7):
        q = x.q[:, :, -n_q:]
        out = impl_fn(impl)(q, x.k, x.v, causal=causal, window=3, sinks=1, stride=2, tail=0)
        group = 2
        expected = F.scaled_dot_product_attention(
            q,
            x.k.repeat_interleave(group, 1),
            x.v.repeat_interleave(group, 1),
            attn_mask=torch.ones(n_q, 40, dtype=torch.bool).tril(40 - n_q) if causal else None,
        )
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_additive_mask_shifts_scores(impl):
    """A finite additive mask enters the softmax: a large bias on one key pulls every row to it."""
    x = make_inputs(n=48, head_dim=16, q_heads=2, kv_heads=2)
    bias = torch.zeros(48, 48, dtype=torch.float64)
    bias[:, 0] = 1e3  # key 0 is a sink, visible to every row of both passes
    out = impl_fn(impl)(x.q, x.k, x.v, bias, causal=True, window=4, sinks=1, stride=4, tail=4)
    torch.testing.assert_close(out, x.v[:, :, :1].expand_as(out), rtol=0, atol=1e-9)
