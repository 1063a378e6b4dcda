"""The correction rules beyond the paper's ("none", "taylor") and per-head plans, in every implementation."""

from __future__ import annotations

import pytest
import torch

import delta_opt
from delta_opt import Correction
from delta_opt.ops.blocked import delta_attention_blocked
from delta_opt.ops.reference import delta_attention_reference, masked_attention
from delta_opt.testing import error_floor, make_inputs, reference_errors

from .impls import IMPLS, impl_fn, kernel_fn  # impl_fn: retrieval falls back from triton to blocked by design

CAUSALITY = pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
PLANS = ["none", "taylor", "taylor,none,paper,taylor,paper,none"]


@CAUSALITY
@pytest.mark.parametrize("correction", PLANS)
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
@pytest.mark.parametrize("head_dim", [40, 128])
def test_blocked_matches_reference_float64(causal, correction, mask, head_dim):
    x = make_inputs(batch=2, q_heads=6, kv_heads=2, n=103, head_dim=head_dim, value_dim=head_dim, mask=mask, seed=9)
    params = dict(causal=causal, window=9, sinks=3, stride=8, tail=13, correction=correction)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params, block_size=16)
    assert (got - expected).abs().max().item() <= 1e-10


def test_blocked_taylor_with_values_of_other_width():
    # D != Dv takes the matmul path instead of the fused CPU kernel.
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=70, head_dim=16, value_dim=24, mask="key_padding")
    params = dict(causal=True, window=6, sinks=2, stride=4, tail=8, correction="taylor")
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    assert (delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params) - expected).abs().max() <= 1e-10


@CAUSALITY
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_taylor_low_precision_within_data_derived_tolerance(causal, dtype):
    x = make_inputs(batch=1, q_heads=8, kv_heads=2, n=150, head_dim=64, mask="additive", seed=2)
    params = dict(causal=causal, window=20, sinks=4, stride=16, tail=20, correction="taylor")
    impl_err, eager_err = reference_errors(delta_attention_blocked, x, dtype, **params)
    assert impl_err <= 2 * eager_err + error_floor(dtype), (impl_err, eager_err)


@pytest.mark.parametrize("impl", IMPLS)
@CAUSALITY
def test_taylor_anchor_rows_are_exactly_dense(impl, causal):
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=90, head_dim=16)
    dense = delta_attention_reference(x.q, x.k, x.v, causal=causal, window=90, sinks=0, stride=8, tail=0)
    out = kernel_fn(impl)(x.q, x.k, x.v, causal=causal, window=5, sinks=2, stride=8, tail=10, correction="taylor")
    anchors = torch.arange(0, 80, 8)
    torch.testing.assert_close(out[:, :, anchors], dense[:, :, anchors], rtol=0, atol=1e-12)
    assert (out - dense)[:, :, 1:80].abs().max() > 1e-3  # the other rows are not dense


@pytest.mark.parametrize("impl", IMPLS)
def test_none_keeps_sparse_rows_and_the_dense_tail(impl):
    x = make_inputs(batch=1, q_heads=2, kv_heads=1, n=60, head_dim=16)
    i, j = torch.arange(60).view(-1, 1), torch.arange(60).view(1, -1)
    scores = x.q @ x.k.repeat_interleave(2, 1).transpose(-1, -2) / 4
    v = x.v.repeat_interleave(2, 1)
    sparse = masked_attention(scores, (j <= i) & (((i - j) < 5) | (j < 2)), v)
    dense = masked_attention(scores, j <= i, v)
    # stride 1 would make "paper" dense everywhere; "none" keeps rows [0, Np) sparse regardless.
    out = kernel_fn(impl)(x.q, x.k, x.v, causal=True, window=5, sinks=2, stride=1, tail=10, correction="none")
    torch.testing.assert_close(out[:, :, :50], sparse[:, :, :50], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, :, 50:], dense[:, :, 50:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("correction", PLANS[1:])
def test_no_future_leak(impl, correction):
    x = make_inputs(batch=1, q_heads=6, kv_heads=2, n=80, head_dim=16, seed=4)
    # An additive key mask (what every implementation, the kernels included, takes): finite
    # biases with a few keys hidden.
    g = torch.Generator().manual_seed(4)
    bias = torch.randn(1, 1, 1, 80, generator=g, dtype=torch.float64)
    x.attn_mask = bias.masked_fill(torch.rand(1, 1, 1, 80, generator=g) < 0.2, float("-inf"))
    params = dict(causal=True, window=6, sinks=2, stride=8, tail=8, correction=correction)
    before = kernel_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params)
    for cut in (9, 40, 70):
        q2, k2, v2 = x.q.clone(), x.k.clone(), x.v.clone()
        for t in (q2, k2, v2):  # queries after the row too: taylor reads q_i and q_a only
            t[:, :, cut + 1 :] = torch.randn_like(t[:, :, cut + 1 :]) * 10
        after = kernel_fn(impl)(q2, k2, v2, x.attn_mask, **params)
        torch.testing.assert_close(after[:, :, : cut + 1], before[:, :, : cut + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_per_head_plan_equals_each_rule_alone(impl):
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=77, head_dim=16, mask="key_padding", seed=8)
    rules = ["taylor", "paper", "none", "taylor"]
    params = dict(causal=True, window=7, sinks=2, stride=6, tail=9)
    planned = kernel_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params, correction=rules)
    for h, rule in enumerate(rules):
        alone = kernel_fn(impl)(x.q, x.k, x.v, x.attn_mask, **params, correction=rule)
        torch.testing.assert_close(planned[:, h], alone[:, h], rtol=0, atol=1e-12)
    repeated = kernel_fn(impl)(
        x.q, x.k.repeat_interleave(2, 1), x.v.repeat_interleave(2, 1), x.attn_mask, **params, correction=rules
    )
    torch.testing.assert_close(planned, repeated, rtol=0, atol=1e-12)


def test_taylor_is_closer_to_dense_than_paper_on_smooth_queries():
    """The rule's premise: when q_i moves little from q_a, extrapolating the anchor's long-range
    mass beats adding the anchor's difference. A sanity check of the direction, not a benchmark."""
    g = torch.Generator().manual_seed(0)
    n, d = 256, 32
    base = torch.randn(1, 1, 1, d, generator=g)
    q = base + 0.3 * torch.randn(1, 1, n, d, generator=g).cumsum(2) / n**0.5
    k = torch.randn(1, 1, n, d, generator=g)
    v = torch.randn(1, 1, n, d, generator=g)
    q, k, v = q.double(), k.double(), v.double()
    dense = delta_attention_reference(q, k, v, causal=True, window=n, sinks=0, stride=1, tail=0)
    err = {}
    for rule in ("none", "paper", "taylor"):
        out = delta_attention_reference(q, k, v, causal=True, window=16, sinks=0, stride=16, tail=0, correction=rule)
        err[rule] = ((out - dense).norm() / dense.norm()).item()
    assert err["taylor"] < err["paper"] and err["taylor"] < err["none"], err


def test_public_api_accepts_enums_and_sequences():
    x = make_inputs(n=40, head_dim=8, q_heads=2, kv_heads=1)
    params = dict(causal=True, window=4, sinks=1, stride=4, tail=4)
    a = delta_opt.delta_attention(x.q, x.k, x.v, **params, correction=Correction.TAYLOR)
    b = delta_opt.delta_attention(x.q, x.k, x.v, **params, correction=["taylor", "taylor"])
    c = delta_opt.delta_attention(x.q, x.k, x.v, **params, correction="taylor")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, c, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("correction", "message"),
    [
        ("delta", r"correction must be one of 'paper', 'none', 'taylor'; got 'delta'"),
        ("taylor,none,paper", r"one per query head \(Hq=4\); got 3 rules"),
        ("", r"correction must be a rule name"),
    ],
)
def test_bad_correction_is_rejected_before_any_work(correction, message):
    x = make_inputs(n=16, head_dim=8, q_heads=4, kv_heads=2)
    params = dict(causal=True, window=4, sinks=1, stride=4, tail=4)
    with pytest.raises(ValueError, match=message):
        delta_opt.delta_attention(x.q, x.k, x.v, **params, correction=correction)
    with pytest.raises(ValueError, match=message):
        torch.ops.delta_opt.delta_attention(x.q, x.k, x.v, None, **params, correction=correction)


def test_export_keeps_the_correction():
    class Module(torch.nn.Module):
        def forward(self, q, k, v):
            return delta_opt.delta_attention(q, k, v, causal=True, window=4, sinks=1, stride=4, correction="taylor")

    x = make_inputs(n=40, head_dim=8, q_heads=2, kv_heads=1, dtype=torch.float32)
    program = torch.export.export(Module(), (x.q, x.k, x.v))
    (node,) = [n for n in program.graph.nodes if n.target == torch.ops.delta_opt.delta_attention.default]
    assert node.kwargs["correction"] == "taylor"
    torch.testing.assert_close(
        program.module()(x.q, x.k, x.v),
        delta_attention_reference(x.q, x.k, x.v, causal=True, window=4, sinks=1, stride=4, correction="taylor"),
    )


# ---- retrieval (retrieve=K) -----------------------------------------------------------------


@CAUSALITY
@pytest.mark.parametrize("correction", ["paper", "none", "taylor", "taylor,none,paper,taylor,paper,none"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
@pytest.mark.parametrize("retrieve", [1, 6, 500])
def test_blocked_with_retrieval_matches_reference_float64(causal, correction, mask, retrieve):
    x = make_inputs(batch=2, q_heads=6, kv_heads=2, n=97, head_dim=16, mask=mask, seed=retrieve)
    params = dict(causal=causal, window=9, sinks=3, stride=8, tail=13, correction=correction, retrieve=retrieve)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_blocked(x.q, x.k, x.v, x.attn_mask, **params, block_size=16)
    assert (got - expected).abs().max().item() <= 1e-10


@pytest.mark.parametrize("impl", IMPLS)
@CAUSALITY
def test_retrieving_every_long_range_key_with_unit_stride_is_dense(impl, causal):
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=60, head_dim=16, mask="key_padding")
    dense = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, window=60, sinks=0, stride=1, tail=0)
    out = impl_fn(impl)(
        x.q, x.k, x.v, x.attn_mask, causal=causal, window=5, sinks=2, stride=1, tail=4, correction="none", retrieve=60
    )
    torch.testing.assert_close(out, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_retrieval_finds_a_needle_the_window_misses(impl):
    """A far key that the anchor's query matches sharply: retrieval hands it to the whole block."""
    g = torch.Generator().manual_seed(0)
    n, d = 96, 16
    q = torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    u = torch.randn(d, generator=g, dtype=torch.float64)
    u = u / u.norm() * d**0.5
    q[0, 0, 64:72] = 2 * u + 0.1 * q[0, 0, 64:72]  # the block [64, 72) asks for direction u...
    k[0, 0, 10] = 2 * u  # ...which key 10, far behind the window, answers (score ~16)
    v[0, 0, 10] = 50.0
    params = dict(causal=True, window=8, sinks=1, stride=8, tail=8)
    without = impl_fn(impl)(q, k, v, **params, correction="none")
    with_needle = impl_fn(impl)(q, k, v, **params, correction="none", retrieve=1)
    dense = delta_attention_reference(q, k, v, causal=True, window=n, sinks=0, stride=1, tail=0)
    block = slice(65, 72)
    assert (without - dense)[..., block, :].abs().max() > 10  # the window alone misses the needle
    assert (with_needle - dense)[..., block, :].abs().max() < 0.05  # the rest: other far keys, weight ~1e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_retrieval_reads_nothing_after_the_row(impl):
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=80, head_dim=16, seed=6)
    params = dict(causal=True, window=6, sinks=2, stride=8, tail=8, correction="taylor,none,paper,taylor", retrieve=4)
    before = impl_fn(impl)(x.q, x.k, x.v, **params)
    for cut in (20, 50):
        q2, k2, v2 = x.q.clone(), x.k.clone(), x.v.clone()
        for t in (q2, k2, v2):
            t[:, :, cut + 1 :] = torch.randn_like(t[:, :, cut + 1 :]) * 10
        after = impl_fn(impl)(q2, k2, v2, **params)
        torch.testing.assert_close(after[:, :, : cut + 1], before[:, :, : cut + 1], rtol=0, atol=1e-12)


def test_bad_retrieve_is_rejected():
    x = make_inputs(n=16, head_dim=8, q_heads=2, kv_heads=1)
    with pytest.raises(ValueError, match="retrieve must be an integer >= 0; got -1"):
        delta_opt.delta_attention(x.q, x.k, x.v, causal=True, window=4, sinks=1, stride=4, retrieve=-1)
