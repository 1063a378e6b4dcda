"""The DeltaAttention function body in ONNX Runtime against the spec (delta_opt/ops/reference.py).

These tests run the body through a one-node model (no torch export), so the parity matrix is
cheap: masks x causal x grouped-query ratios x head dims x odd lengths, decode steps, fp16.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from delta_opt.backends.onnx.body import build_function
from delta_opt.backends.onnx.schema import NodeAttributes
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import error_floor, make_inputs

from .onnx_cases import node_mask, one_node_model, trt_ops

ATOL = 1e-4  # fp32 ONNX Runtime vs the float64 spec
# W < N so that the window matters, N - T not a multiple of G, S > 0.
PARAMS = dict(window=8, sinks=3, stride=4, tail=6)

_sessions: dict[tuple, ort.InferenceSession] = {}


def session(
    causal: bool, element_type: int = TensorProto.FLOAT, head_dim: int = 16, rules=None, **params: int
) -> ort.InferenceSession:
    attrs = NodeAttributes.from_op_kwargs(dict(causal=causal, **params), head_dim)
    key = (attrs, element_type, None if rules is None else frozenset(rules))
    if key not in _sessions:
        model = one_node_model(attrs, element_type, rules=rules)
        _sessions[key] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return _sessions[key]


def run_body(q, k, v, attn_mask, *, causal: bool, dtype=np.float32, rules=None, **params) -> np.ndarray:
    """The one-node model (its body built for ``rules``, default: the node's own) on the inputs."""
    element_type = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}[dtype]
    sess = session(causal, element_type, q.shape[-1], rules=rules, **params)
    feed = {"q": q.numpy().astype(dtype), "k": k.numpy().astype(dtype), "v": v.numpy().astype(dtype)}
    feed["attn_mask"] = node_mask(attn_mask, dtype)
    return sess.run(None, feed)[0]


def max_error(got: np.ndarray, expected: torch.Tensor) -> float:
    return float(np.abs(got.astype(np.float64) - expected.numpy()).max()) if got.size else 0.0


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
def test_matches_reference_for_every_mask(mask: str, causal: bool) -> None:
    x = make_inputs(batch=2, q_heads=6, kv_heads=2, n=37, head_dim=16, mask=mask, seed=1)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **PARAMS)
    got = run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **PARAMS)
    assert got.shape == tuple(expected.shape)
    assert max_error(got, expected) <= ATOL


@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (4, 2), (8, 2), (3, 1)], ids=["mha", "gqa2", "gqa4", "mqa3"])
@pytest.mark.parametrize(("head_dim", "value_dim"), [(40, 40), (64, 64), (80, 48), (128, 128)])
def test_grouped_query_heads_and_head_dims(q_heads: int, kv_heads: int, head_dim: int, value_dim: int) -> None:
    x = make_inputs(batch=1, q_heads=q_heads, kv_heads=kv_heads, n=45, head_dim=head_dim, value_dim=value_dim, seed=2)
    expected = delta_attention_reference(x.q, x.k, x.v, causal=True, **PARAMS)
    assert max_error(run_body(x.q, x.k, x.v, None, causal=True, **PARAMS), expected) <= ATOL


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_any_length_from_one_body(causal: bool) -> None:
    # 1 row; shorter than W, T and G; not a multiple of G; several sparse blocks (bq = 20).
    params = dict(window=20, sinks=5, stride=16, tail=16)
    for n in (1, 7, 19, 33, 50, 171):
        x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=n, head_dim=16, mask="key_padding", seed=n)
        expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **params)
        assert max_error(run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **params), expected) <= ATOL, n


@pytest.mark.parametrize(
    "params",
    [
        dict(window=1, sinks=0, stride=4, tail=0),  # window of one key: the diagonal
        dict(window=200, sinks=2, stride=4, tail=0),  # W >= N: dense
        dict(window=4, sinks=100, stride=4, tail=0),  # S >= N: dense
        dict(window=4, sinks=2, stride=1, tail=0),  # G = 1: every row an anchor
        dict(window=4, sinks=2, stride=64, tail=0),  # G > N
        dict(window=3, sinks=1, stride=5, tail=None),  # T = max(128, G) > N: all tail
    ],
    ids=["w1", "w_ge_n", "s_ge_n", "g1", "g_gt_n", "default_tail"],
)
def test_edge_parameters(params: dict) -> None:
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=41, head_dim=16, mask="bool", seed=3)
    for causal in (True, False):
        expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **params)
        assert max_error(run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **params), expected) <= ATOL


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_decode_steps_are_dense_bottom_right(causal: bool, with_mask: bool) -> None:
    g = torch.Generator().manual_seed(4)
    for n_q, n_k in ((1, 30), (5, 30), (3, 4)):
        q = torch.randn(2, 4, n_q, 16, generator=g, dtype=torch.float64)
        k = torch.randn(2, 2, n_k, 16, generator=g, dtype=torch.float64)
        v = torch.randn(2, 2, n_k, 16, generator=g, dtype=torch.float64)
        mask = torch.rand(2, 1, n_q, n_k, generator=g) > 0.3 if with_mask else None
        expected = delta_attention_reference(q, k, v, mask, causal=causal, **PARAMS)
        assert max_error(run_body(q, k, v, mask, causal=causal, **PARAMS), expected) <= ATOL, (n_q, n_k)


def test_rows_without_keys_are_zero_not_nan() -> None:
    x = make_inputs(batch=1, q_heads=2, kv_heads=1, n=40, head_dim=16, mask="bool", seed=5)
    mask = x.attn_mask.clone()
    mask[..., 12, :] = False  # a corrected row with no key at all
    mask[..., 16, :] = False  # an anchor row with no key (its delta must be 0)
    mask[..., 20, 18:] = False  # an anchor whose sparse keys are all masked, dense keys not
    expected = delta_attention_reference(x.q, x.k, x.v, mask, causal=True, **PARAMS)
    got = run_body(x.q, x.k, x.v, mask, causal=True, **PARAMS)
    assert np.isfinite(got).all()
    assert (got[..., 12, :] == 0).all() and (got[..., 16, :] == 0).all()
    assert max_error(got, expected) <= ATOL


def test_nan_inputs_propagate_like_the_reference() -> None:
    # Empty rows are zeroed from the mask alone, so a NaN from the data is never hidden.
    x = make_inputs(batch=1, q_heads=2, kv_heads=1, n=30, head_dim=16, seed=6)
    x.q[0, 0, 9] = float("nan")  # a corrected (non-anchor) row
    expected = delta_attention_reference(x.q, x.k, x.v, causal=True, **PARAMS)
    got = run_body(x.q, x.k, x.v, None, causal=True, **PARAMS)
    assert np.array_equal(np.isnan(got), expected.isnan().numpy())
    assert np.isnan(got).any()


def test_float16_body_computes_in_float32() -> None:
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=37, head_dim=16, mask="additive", seed=7)
    x16 = x.to(torch.float16)
    oracle = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=True, **PARAMS)
    eager16 = delta_attention_reference(x16.q, x16.k, x16.v, x16.attn_mask, causal=True, **PARAMS)
    got = run_body(x16.q.double(), x16.k.double(), x16.v.double(), x16.attn_mask, causal=True, dtype=np.float16, **PARAMS)
    assert got.dtype == np.float16
    eager_err = float((eager16.double() - oracle).abs().max())
    assert max_error(got, oracle) <= 2 * eager_err + error_floor(torch.float16)


# ---- correction rules -----------------------------------------------------------------------

# Every rule alone, and per-head plans that use each pair of rules and all three (6 query heads).
PLANS = ["none", "taylor", "taylor,none,paper,taylor,paper,none", "paper,paper,none,paper,none,none", "paper,taylor,taylor,paper,paper,taylor"]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
@pytest.mark.parametrize("correction", PLANS)
def test_correction_rules_match_reference(correction: str, mask: str, causal: bool) -> None:
    x = make_inputs(batch=2, q_heads=6, kv_heads=2, n=37, head_dim=16, mask=mask, seed=11)
    params = dict(PARAMS, correction=correction)
    expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **params)
    assert max_error(run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **params), expected) <= ATOL
    # The rules do differ on these inputs: a body that ignored the attribute would fail above.
    paper = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **PARAMS)
    assert (expected - paper).abs().max() > 100 * ATOL


@pytest.mark.parametrize(("q_heads", "kv_heads"), [(4, 4), (8, 2), (3, 1)], ids=["mha", "gqa4", "mqa3"])
@pytest.mark.parametrize(("head_dim", "value_dim"), [(40, 40), (80, 48), (128, 128)])
def test_taylor_with_grouped_query_heads_and_head_dims(q_heads: int, kv_heads: int, head_dim: int, value_dim: int) -> None:
    x = make_inputs(batch=1, q_heads=q_heads, kv_heads=kv_heads, n=45, head_dim=head_dim, value_dim=value_dim, seed=12)
    plan = ",".join(["taylor", "paper", "none"][h % 3] for h in range(q_heads))
    for correction in ("taylor", plan):
        expected = delta_attention_reference(x.q, x.k, x.v, causal=True, **PARAMS, correction=correction)
        got = run_body(x.q, x.k, x.v, None, causal=True, **PARAMS, correction=correction)
        assert max_error(got, expected) <= ATOL, correction


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_any_length_from_one_body_with_a_per_head_plan(causal: bool) -> None:
    params = dict(window=20, sinks=5, stride=16, tail=16, correction="taylor,none,paper,taylor")
    for n in (1, 7, 19, 33, 50, 171):
        x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=n, head_dim=16, mask="key_padding", seed=n)
        expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **params)
        assert max_error(run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **params), expected) <= ATOL, n


@pytest.mark.parametrize(
    "params",
    [
        dict(window=200, sinks=2, stride=4, tail=0),  # W >= N: no long-range key
        dict(window=4, sinks=100, stride=4, tail=0),  # S >= N: no long-range key
        dict(window=4, sinks=2, stride=1, tail=0),  # G = 1: every row an anchor
        dict(window=4, sinks=2, stride=64, tail=0),  # G > N
        dict(window=3, sinks=1, stride=5, tail=None),  # all tail
        dict(window=1, sinks=0, stride=7, tail=3),  # the diagonal only; N - T not a multiple of G
    ],
    ids=["w_ge_n", "s_ge_n", "g1", "g_gt_n", "default_tail", "w1"],
)
@pytest.mark.parametrize("correction", ["taylor", "none,taylor,paper,none"])
def test_correction_edge_parameters(params: dict, correction: str) -> None:
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=41, head_dim=16, mask="bool", seed=13)
    for causal in (True, False):
        expected = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=causal, **params, correction=correction)
        got = run_body(x.q, x.k, x.v, x.attn_mask, causal=causal, **params, correction=correction)
        assert max_error(got, expected) <= ATOL, causal


def test_correction_rows_without_keys_are_zero_not_nan() -> None:
    x = make_inputs(batch=1, q_heads=3, kv_heads=1, n=40, head_dim=16, mask="bool", seed=5)
    mask = x.attn_mask.clone()
    mask[..., 12, :] = False  # a corrected row with no key at all
    mask[..., 16, :] = False  # an anchor row with no key
    mask[..., 20, :12] = False  # an anchor whose long-range keys are all masked
    mask[..., 24, 18:] = False  # an anchor whose window keys are all masked, long-range keys not
    params = dict(PARAMS, correction="taylor,paper,none")
    for causal in (True, False):
        expected = delta_attention_reference(x.q, x.k, x.v, mask, causal=causal, **params)
        got = run_body(x.q, x.k, x.v, mask, causal=causal, **params)
        assert np.isfinite(got).all()
        assert (got[..., 12, :] == 0).all() and (got[..., 16, :] == 0).all()
        assert max_error(got, expected) <= ATOL


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
def test_decode_steps_are_dense_whatever_the_rule(with_mask: bool) -> None:
    g = torch.Generator().manual_seed(14)
    q = torch.randn(2, 4, 5, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 30, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 30, 16, generator=g, dtype=torch.float64)
    mask = torch.rand(2, 1, 5, 30, generator=g) > 0.3 if with_mask else None
    for correction in ("none", "taylor,none,paper,taylor"):
        expected = delta_attention_reference(q, k, v, mask, causal=True, **PARAMS, correction=correction)
        assert max_error(run_body(q, k, v, mask, causal=True, **PARAMS, correction=correction), expected) <= ATOL


def test_float16_body_with_a_per_head_plan() -> None:
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=37, head_dim=16, mask="additive", seed=15)
    x16 = x.to(torch.float16)
    params = dict(PARAMS, correction="taylor,paper,none,taylor")
    oracle = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, causal=True, **params)
    eager16 = delta_attention_reference(x16.q, x16.k, x16.v, x16.attn_mask, causal=True, **params)
    got = run_body(x16.q.double(), x16.k.double(), x16.v.double(), x16.attn_mask, causal=True, dtype=np.float16, **params)
    eager_err = float((eager16.double() - oracle).abs().max())
    assert max_error(got, oracle) <= 2 * eager_err + error_floor(torch.float16)


@pytest.mark.parametrize("rules", [["paper"], ["paper", "none"], ["none"], ["taylor"]], ids=lambda r: "+".join(r))
def test_heads_whose_rule_the_body_lacks_output_nan(rules: list[str]) -> None:
    """A body built for some rules never passes another rule off as one of them."""
    x = make_inputs(batch=1, q_heads=3, kv_heads=1, n=30, head_dim=16, seed=16)
    params = dict(PARAMS, correction="paper,none,taylor")
    got = run_body(x.q, x.k, x.v, None, causal=True, rules=rules, **params)
    expected = delta_attention_reference(x.q, x.k, x.v, causal=True, **params)
    for h, rule in enumerate(params["correction"].split(",")):
        if rule in rules:
            assert max_error(got[:, h], expected[:, h]) <= ATOL, rule
        else:
            assert np.isnan(got[:, h]).all(), rule


def test_a_plan_of_the_wrong_length_fails_loudly() -> None:
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=20, head_dim=16, seed=17)
    with pytest.raises(Exception, match="Expand"):  # ONNX Runtime cannot broadcast 3 codes to 4 heads
        run_body(x.q, x.k, x.v, None, causal=True, **PARAMS, correction="taylor,none,paper")


def _all_nodes(nodes):
    for node in nodes:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g.node)


@pytest.mark.parametrize("rules", [None, ["paper"], ["none"], ["paper", "none"], ["taylor", "none"]], ids=str)
@pytest.mark.parametrize("element_type", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_body_uses_only_ops_tensorrt_imports(element_type: int, rules) -> None:
    function = build_function(element_type, rules=rules)
    used = {node.op_type for node in _all_nodes(function.node)}
    assert {node.domain for node in _all_nodes(function.node)} == {""}
    assert used <= trt_ops(), f"ops outside the TensorRT list: {sorted(used - trt_ops())}"
    assert "Attention" not in used


@pytest.mark.parametrize("correction", ["paper", "taylor,none,paper"])
@pytest.mark.parametrize("opset", [18, 21, 23])
def test_one_node_model_passes_the_full_checker(opset: int, correction: str) -> None:
    attrs = NodeAttributes.from_op_kwargs(dict(causal=True, **PARAMS, correction=correction), 16)
    onnx.checker.check_model(one_node_model(attrs, opset=opset), full_check=True)


def test_bad_rule_sets_are_rejected() -> None:
    with pytest.raises(ValueError, match="rules must name at least one correction rule"):
        build_function(rules=[])
    with pytest.raises(ValueError, match="rules must be a collection"):
        build_function(rules="taylor")
    with pytest.raises(ValueError, match="rules must be one of"):
        build_function(rules=["delta"])


@pytest.mark.parametrize("correction", ["paper", "taylor,none,paper,taylor"])
def test_no_tensor_grows_like_n_squared(tmp_path, correction: str) -> None:
    # A masked dense attention would build [B, Hq, N, N] scores; the body's largest tensor must
    # stay far below that (sparse scores ~ N (S + W + bq), dense rows ~ (N / G + T) N).
    n, params = 2048, dict(window=64, sinks=16, stride=64, tail=64)
    attrs = NodeAttributes.from_op_kwargs(dict(causal=True, **params, correction=correction), 16)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    sess = ort.InferenceSession(one_node_model(attrs).SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=n, head_dim=16, dtype=torch.float32, seed=8)
    sess.run(None, {"q": x.q.numpy(), "k": x.k.numpy(), "v": x.v.numpy(), "attn_mask": node_mask(None)})
    events = json.loads(open(sess.end_profiling()).read())
    sizes = [
        math.prod(shape)
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
        for out in e["args"].get("output_type_shape", [])
        for shape in out.values()
    ]
    assert sizes, "the profile recorded no node outputs"
    assert max(sizes) <= 4 * n * n / 8  # 4 query heads: an N x N tensor per head would be 4 N^2
