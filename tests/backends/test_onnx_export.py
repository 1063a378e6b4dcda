"""export_onnx on modules that call delta_attention: one node per site, ONNX Runtime parity at
several lengths from one export, the checker, inline mode, file safety and clear errors."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch.export import Dim

import delta_opt
from delta_opt.backends.onnx import MissingFunctionError, count_delta_nodes, export_onnx, load_session
from delta_opt.backends.onnx.schema import DOMAIN, OP_TYPE, VERSION
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import error_floor, make_inputs

from .onnx_cases import DeltaModule, trt_ops

ATOL = 1e-4
PARAMS = dict(window=8, sinks=3, stride=4, tail=6)
BATCH, SEQ = Dim("batch"), Dim("seq")

# (mask, causal, q heads, kv heads, mask dynamic dims): every mask kind once, both causal modes,
# MHA / GQA / MQA. The body tests cover the full cross product without torch export.
CASES = {
    "none-causal-gqa4": ("none", True, 8, 2),
    "bool-bidirectional-mha": ("bool", False, 4, 4),
    "additive-causal-gqa2": ("additive", True, 6, 3),
    "key_padding-bidirectional-mqa": ("key_padding", False, 4, 1),
}
_MASK_DIMS = {"bool": {0: BATCH, 2: SEQ, 3: SEQ}, "additive": {2: SEQ, 3: SEQ}, "key_padding": {0: BATCH, 3: SEQ}}


def _inputs(mask: str, q_heads: int, kv_heads: int, n: int, batch: int, seed: int, dtype=torch.float32):
    return make_inputs(batch=batch, q_heads=q_heads, kv_heads=kv_heads, n=n, head_dim=16, mask=mask, seed=seed, dtype=dtype)


def _feed(sess: ort.InferenceSession, *tensors: torch.Tensor | None) -> dict[str, np.ndarray]:
    arrays = [t.numpy() for t in tensors if t is not None]
    return {i.name: a for i, a in zip(sess.get_inputs(), arrays)}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    mask, causal, q_heads, kv_heads = CASES[request.param]
    module = DeltaModule(causal=causal, **PARAMS)
    x = _inputs(mask, q_heads, kv_heads, n=48, batch=2, seed=0)
    dims = ({0: BATCH, 2: SEQ},) * 3 + ((_MASK_DIMS[mask],) if mask != "none" else ())
    args = (x.q, x.k, x.v) + ((x.attn_mask,) if mask != "none" else ())
    path = tmp_path_factory.mktemp("export") / f"{request.param}.onnx"
    result = export_onnx(module, args, path, dynamic_shapes=dims)
    return request.param, module, result


def test_exported_model_passes_the_full_checker(exported) -> None:
    _, _, result = exported
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)


def test_one_node_per_site_with_its_function(exported) -> None:
    name, _, result = exported
    model = onnx.load(str(result.path))
    causal = CASES[name][1]
    assert result.delta_sites == result.delta_nodes == count_delta_nodes(model) == 1
    assert [(f.domain, f.name) for f in model.functions] == [(DOMAIN, OP_TYPE)]
    assert any(o.domain == DOMAIN and o.version == VERSION for o in model.opset_import)
    node = next(n for n in model.graph.node if n.op_type == OP_TYPE)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {
        "causal": int(causal),
        "window": 8,
        "sinks": 3,
        "stride": 4,
        "tail": 6,
        "scale": pytest.approx(1 / math.sqrt(16)),
        "correction": [0],
    }
    # A paper-only model's body carries none of taylor's work (the leanest body).
    assert "Sigmoid" not in {n.op_type for n in model.functions[0].node}


def test_onnx_runtime_matches_pytorch_at_three_lengths(exported) -> None:
    name, module, result = exported
    mask, causal, q_heads, kv_heads = CASES[name]
    sess = load_session(result.path)
    for n, batch in ((17, 3), (48, 2), (101, 1)):  # shorter than the export, equal, longer; odd
        x = _inputs(mask, q_heads, kv_heads, n=n, batch=batch, seed=n)
        got = sess.run(None, _feed(sess, x.q, x.k, x.v, x.attn_mask))[0]
        eager = module(x.q, x.k, x.v, x.attn_mask) if mask != "none" else module(x.q, x.k, x.v)
        x64 = x.to(torch.float64)
        oracle = delta_attention_reference(x64.q, x64.k, x64.v, x64.attn_mask, causal=causal, **PARAMS)
        assert got.shape == tuple(eager.shape)
        assert np.abs(got - eager.numpy()).max() <= ATOL, n
        assert np.abs(got - oracle.numpy()).max() <= ATOL, n


def test_inline_writes_standard_ops_with_the_same_results(tmp_path) -> None:
    module = DeltaModule(causal=True, **PARAMS)
    x = _inputs("key_padding", 4, 2, n=40, batch=2, seed=1)
    args, dims = (x.q, x.k, x.v, x.attn_mask), ({0: BATCH, 2: SEQ},) * 3 + (_MASK_DIMS["key_padding"],)
    fn = export_onnx(module, args, tmp_path / "fn.onnx", dynamic_shapes=dims)
    flat = export_onnx(module, args, tmp_path / "flat.onnx", dynamic_shapes=dims, inline=True)
    model = onnx.load(str(flat.path))
    onnx.checker.check_model(model, full_check=True)
    assert flat.delta_nodes == 0 and flat.delta_sites == 1
    assert not model.functions and {n.domain for n in model.graph.node} == {""}
    assert {n.op_type for n in model.graph.node} <= trt_ops()
    a, b = ort.InferenceSession(str(fn.path)), ort.InferenceSession(str(flat.path))
    for n in (23, 64):
        y = _inputs("key_padding", 4, 2, n=n, batch=2, seed=n)
        out_a = a.run(None, _feed(a, y.q, y.k, y.v, y.attn_mask))[0]
        out_b = b.run(None, _feed(b, y.q, y.k, y.v, y.attn_mask))[0]
        np.testing.assert_allclose(out_a, out_b, atol=1e-6, rtol=0)


class ThreeSites(torch.nn.Module):
    """Three delta_attention calls with different parameters around one plain SDPA."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = delta_opt.delta_attention(q, k, v, causal=True, window=8, sinks=2, stride=4, tail=4)
        dense = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1))
        b = delta_opt.delta_attention(a, k, v, causal=False, window=4, sinks=0, stride=8, tail=0, scale=0.3)
        c = delta_opt.delta_attention(b + dense, k, v, causal=True, window=16, sinks=1, stride=2)
        return c


def test_node_count_equals_the_programs_op_count(tmp_path) -> None:
    x = _inputs("none", 4, 2, n=33, batch=2, seed=2)
    program = torch.export.export(ThreeSites(), (x.q, x.k, x.v), dynamic_shapes=({0: BATCH, 2: SEQ},) * 3)
    in_program = sum(1 for n in program.graph.nodes if n.target is torch.ops.delta_opt.delta_attention.default)
    result = export_onnx(program, None, tmp_path / "three.onnx")
    model = onnx.load(str(result.path))
    assert in_program == result.delta_sites == result.delta_nodes == count_delta_nodes(model) == 3
    sess = load_session(result.path)
    for n in (20, 50):
        y = _inputs("none", 4, 2, n=n, batch=1, seed=n)
        expected = ThreeSites()(y.q, y.k, y.v)
        assert np.abs(sess.run(None, _feed(sess, y.q, y.k, y.v))[0] - expected.numpy()).max() <= ATOL


class TwoPlans(torch.nn.Module):
    """A per-head plan on one site and taylor for every head on another (as a calibrated model)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        a = delta_opt.delta_attention(q, k, v, attn_mask, causal=True, **PARAMS, correction="taylor,none,paper,taylor")
        return delta_opt.delta_attention(a, k, v, attn_mask, causal=True, **PARAMS, correction="taylor")


def test_correction_plans_export_and_match_at_three_lengths(tmp_path) -> None:
    x = _inputs("key_padding", 4, 2, n=40, batch=2, seed=7)
    dims = ({0: BATCH, 2: SEQ},) * 3 + (_MASK_DIMS["key_padding"],)
    result = export_onnx(TwoPlans(), (x.q, x.k, x.v, x.attn_mask), tmp_path / "plans.onnx", dynamic_shapes=dims)
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    codes = [
        onnx.helper.get_attribute_value(a)
        for n in model.graph.node
        if n.op_type == OP_TYPE
        for a in n.attribute
        if a.name == "correction"
    ]
    assert sorted(codes) == [[2], [2, 1, 0, 2]]
    # One body for both nodes, built for the rules they use: taylor's mixing is in it.
    (body,) = model.functions
    assert "Sigmoid" in {n.op_type for n in body.node}
    sess = load_session(result.path)
    for n, batch in ((17, 3), (40, 2), (101, 1)):
        y = _inputs("key_padding", 4, 2, n=n, batch=batch, seed=n)
        got = sess.run(None, _feed(sess, y.q, y.k, y.v, y.attn_mask))[0]
        y64 = y.to(torch.float64)
        first = delta_attention_reference(y64.q, y64.k, y64.v, y64.attn_mask, causal=True, **PARAMS, correction="taylor,none,paper,taylor")
        oracle = delta_attention_reference(first, y64.k, y64.v, y64.attn_mask, causal=True, **PARAMS, correction="taylor")
        assert np.abs(got - oracle.numpy()).max() <= ATOL, n


def test_inline_with_a_per_head_plan(tmp_path) -> None:
    module = DeltaModule(causal=False, **PARAMS, correction="none,taylor,taylor,paper")
    x = _inputs("none", 4, 2, n=30, batch=1, seed=9)
    flat = export_onnx(module, (x.q, x.k, x.v), tmp_path / "flat.onnx", dynamic_shapes=({2: SEQ},) * 3, inline=True)
    model = onnx.load(str(flat.path))
    assert not model.functions and {n.op_type for n in model.graph.node} <= trt_ops()
    sess = ort.InferenceSession(str(flat.path))
    for n in (30, 45):
        y = _inputs("none", 4, 2, n=n, batch=1, seed=n)
        expected = delta_attention_reference(y.q.double(), y.k.double(), y.v.double(), causal=False, **PARAMS, correction="none,taylor,taylor,paper")
        assert np.abs(sess.run(None, _feed(sess, y.q, y.k, y.v))[0] - expected.numpy()).max() <= ATOL, n


def test_a_call_repeated_verbatim_shares_one_node(tmp_path) -> None:
    class Twice(torch.nn.Module):
        def forward(self, q, k, v):
            a = delta_opt.delta_attention(q, k, v, causal=True, **PARAMS)
            return a + delta_opt.delta_attention(q, k, v, causal=True, **PARAMS)

    x = _inputs("none", 4, 2, n=30, batch=2, seed=10)
    result = export_onnx(Twice(), (x.q, x.k, x.v), tmp_path / "twice.onnx")
    assert (result.delta_sites, result.delta_nodes) == (2, 1)  # the exporter computes it once
    sess = load_session(result.path)
    assert np.abs(sess.run(None, _feed(sess, x.q, x.k, x.v))[0] - Twice()(x.q, x.k, x.v).numpy()).max() <= ATOL


def test_decode_shapes_export_and_run_dense(tmp_path) -> None:
    # Separate query and key lengths: Nq != Nk is dense attention, causal bottom-right aligned.
    module = DeltaModule(causal=True, **PARAMS)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, h, n, 16, generator=g) for h, n in ((4, 3), (2, 20), (2, 20)))
    q_len, kv_len = Dim("q_len"), Dim("kv_len")
    result = export_onnx(module, (q, k, v), tmp_path / "decode.onnx", dynamic_shapes=({2: q_len}, {2: kv_len}, {2: kv_len}))
    sess = load_session(result.path)
    for n_q, n_k in ((1, 30), (7, 7), (5, 41)):
        q, k, v = (torch.randn(2, h, n, 16, generator=g) for h, n in ((4, n_q), (2, n_k), (2, n_k)))
        expected = delta_attention_reference(q.double(), k.double(), v.double(), causal=True, **PARAMS)
        assert np.abs(sess.run(None, _feed(sess, q, k, v))[0] - expected.numpy()).max() <= ATOL, (n_q, n_k)


def test_float16_export(tmp_path) -> None:
    module = DeltaModule(causal=True, **PARAMS)
    x = _inputs("bool", 4, 2, n=40, batch=2, seed=4, dtype=torch.float16)
    dims = ({0: BATCH, 2: SEQ},) * 3 + (_MASK_DIMS["bool"],)
    result = export_onnx(module, (x.q, x.k, x.v, x.attn_mask), tmp_path / "fp16.onnx", dynamic_shapes=dims)
    sess = load_session(result.path)
    y = _inputs("bool", 4, 2, n=57, batch=1, seed=5)
    y16 = y.to(torch.float16)
    got = sess.run(None, _feed(sess, y16.q, y16.k, y16.v, y16.attn_mask))[0]
    assert got.dtype == np.float16
    oracle = delta_attention_reference(y.q.double(), y.k.double(), y.v.double(), y.attn_mask, causal=True, **PARAMS)
    eager = delta_attention_reference(y16.q, y16.k, y16.v, y16.attn_mask, causal=True, **PARAMS)
    eager_err = float((eager.double() - oracle).abs().max())
    assert np.abs(got.astype(np.float64) - oracle.numpy()).max() <= 2 * eager_err + error_floor(torch.float16)


def test_stripped_body_is_rejected_with_an_explanation(tmp_path) -> None:
    x = _inputs("none", 4, 2, n=24, batch=2, seed=6)
    result = export_onnx(DeltaModule(causal=True, **PARAMS), (x.q, x.k, x.v), tmp_path / "full.onnx")
    model = onnx.load(str(result.path))
    del model.functions[:]  # what a TensorRT-plugin-only copy looks like
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    with pytest.raises(Exception, match="not a registered function/op"):  # ONNX Runtime's own words
        ort.InferenceSession(str(stripped))
    with pytest.raises(MissingFunctionError, match=r"delta_opt\.DeltaAttention node.*no function body") as info:
        load_session(stripped)
    assert "export_onnx" in str(info.value) and "custom domain 'delta_opt'" in str(info.value)


def test_never_overwrites_without_force(tmp_path) -> None:
    x = _inputs("none", 4, 2, n=24, batch=2, seed=7)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="force=True"):
        export_onnx(DeltaModule(causal=True, **PARAMS), (x.q, x.k, x.v), path)
    assert path.read_bytes() == b"keep me"
    export_onnx(DeltaModule(causal=True, **PARAMS), (x.q, x.k, x.v), path, force=True)
    assert count_delta_nodes(onnx.load(str(path))) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind


def test_mixed_dtypes_are_rejected(tmp_path) -> None:
    class Mixed(torch.nn.Module):
        def forward(self, q, k, v):
            a = delta_opt.delta_attention(q, k, v, causal=True, **PARAMS)
            b = delta_opt.delta_attention(q.half(), k.half(), v.half(), causal=True, **PARAMS)
            return a + b.float()

    x = _inputs("none", 4, 2, n=24, batch=2, seed=8)
    with pytest.raises(ValueError, match="share one dtype"):
        export_onnx(Mixed(), (x.q, x.k, x.v), tmp_path / "mixed.onnx")
    assert not (tmp_path / "mixed.onnx").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(path="model.txt"), "must end in .onnx"),
        (dict(opset=17), r"opset must be an integer in \[18, 23\]"),
        (dict(opset=24), r"opset must be an integer in \[18, 23\]"),
        (dict(model="not a model"), "torch.nn.Module or torch.export.ExportedProgram"),
        (dict(example_inputs=[1, 2]), "tuple of positional inputs or a dict"),
        (dict(inline="yes"), "inline must be a bool"),
        (dict(config={"window": 8}), "config must be a DeltaConfig"),
    ],
)
def test_bad_arguments_raise_before_any_work(tmp_path, kwargs: dict, message: str) -> None:
    x = _inputs("none", 4, 2, n=8, batch=1, seed=9)
    call = dict(model=DeltaModule(causal=True, **PARAMS), example_inputs=(x.q, x.k, x.v), path="model.onnx")
    call.update(kwargs)
    path = tmp_path / call.pop("path")
    with pytest.raises(ValueError, match=message):
        export_onnx(call.pop("model"), call.pop("example_inputs"), path, **call)
    assert not path.exists()
