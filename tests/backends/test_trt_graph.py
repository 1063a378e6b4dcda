"""``prepare_onnx``: DeltaAttention nodes -> the TensorRT plugins' nodes; and the prepared graph
computed through the emulated TensorRT launch (``trt_emulation``) against ONNX Runtime and the
float64 reference."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from torch.export import Dim

from delta_opt.backends.onnx import export_onnx, load_session
from delta_opt.backends.onnx.schema import DOMAIN, NodeAttributes
from delta_opt.backends.tensorrt.attributes import STAGE_ATTRIBUTES, UnsupportedNodeError
from delta_opt.backends.tensorrt.graph import PLUGIN_FIELDS, graph_bias, prepare_onnx
from delta_opt.backends.tensorrt.stages import DENSE, SPARSE
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.ops.triton import triton_available

from .onnx_cases import DeltaModule, node_mask, one_node_model, trt_ops
from .trt_emulation import ONNX_OPS

if not triton_available(torch.device("cpu")):
    pytest.skip("needs triton with TRITON_INTERPRET=1 (tests/conftest.py sets it on CPU machines)", allow_module_level=True)

PARAMS = dict(window=8, sinks=3, stride=4, tail=6)


def _export(tmp_path, module, inputs, dynamic=True, name="m.onnx"):
    dims = None
    if dynamic:
        batch, seq = Dim("batch"), Dim("seq")
        dims = ({0: batch, 2: seq},) * 3 + (({0: batch, 3: seq},) if len(inputs) == 4 else ())
    path = tmp_path / name
    export_onnx(module, inputs, path, dynamic_shapes=dims)
    return path


@pytest.fixture(scope="module")
def padded_model(tmp_path_factory):
    """fp32, GQA 4/2, D=16, causal, bool key padding [B,1,1,N], dynamic batch and length."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 40, 16, generator=g) for h in (4, 2, 2))
    mask = torch.rand(2, 1, 1, 40, generator=g) > 0.2
    return _export(tmp_path_factory.mktemp("trt"), DeltaModule(causal=True, **PARAMS), (q, k, v, mask))


# ---- the rewrite -------------------------------------------------------------------------------


def test_each_node_becomes_the_two_plugin_nodes(padded_model) -> None:
    original = onnx.load(padded_model)
    prepared = prepare_onnx(original)
    assert len(prepared.nodes) == 1 and prepared.nodes[0].has_bias
    nodes = {n.op_type: n for n in prepared.model.graph.node}
    dense, sparse = nodes[DENSE.plugin], nodes[SPARSE.plugin]
    assert "DeltaAttention" not in nodes and not prepared.model.functions  # the body is gone too
    assert list(dense.input[:3]) == list(sparse.input[:3]) == ["q", "k", "v"]
    assert sparse.input[5] == dense.input[5]  # the rules
    assert list(sparse.input[6:]) == list(dense.output)[1:] + [dense.output[0]]  # (delta, mean_key, offset, partial)
    assert list(sparse.output) == [o.name for o in original.graph.output]
    for node in (dense, sparse):
        names = [a.name for a in node.attribute]
        # The plugin's fields in registration order, then what the parser reads to find it.
        assert names == list(STAGE_ATTRIBUTES) + list(PLUGIN_FIELDS)
        values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert values["plugin_namespace"] == b"delta_opt" and values["plugin_version"] == b"1" and values["aot"] == 1
        assert values["has_bias"] == 1 and values["window"] == 8 and values["causal"] == 1
    scale = {i.name: onnx.numpy_helper.to_array(i) for i in prepared.model.graph.initializer}[dense.input[4]]
    assert scale.dtype == np.float32 and scale.shape == (1,)
    assert scale[0] == pytest.approx(16**-0.5 * math.log2(math.e), rel=1e-6)
    onnx.checker.check_model(prepared.model)
    # Everything TensorRT must import natively is on its list; the original model is untouched.
    standard = {n.op_type for n in prepared.model.graph.node if n.domain in ("", "ai.onnx")}
    assert standard <= trt_ops(), sorted(standard - trt_ops())
    assert [n.op_type for n in onnx.load(padded_model).graph.node] == [n.op_type for n in original.graph.node]


def test_the_exporters_no_mask_is_never_read(tmp_path) -> None:
    q, k, v = (torch.randn(1, h, 24, 16) for h in (2, 2, 2))
    prepared = prepare_onnx(onnx.load(_export(tmp_path, DeltaModule(causal=False, **PARAMS), (q, k, v))))
    assert not prepared.nodes[0].has_bias
    # Besides the plugins only the rules' Expand(code, Shape(q)[1:2]): no bias ops.
    assert {n.op_type for n in prepared.model.graph.node} == {DENSE.plugin, SPARSE.plugin, "Shape", "Slice", "Expand"}


def _node_model(**attrs) -> onnx.ModelProto:
    model = one_node_model(NodeAttributes(causal=True, window=8, sinks=2, stride=4, tail=6, scale=0.25))
    query_dim = model.graph.input[3].type.tensor_type.shape.dim[2]
    query_dim.Clear()
    query_dim.dim_value = 1  # a key mask [Bm, Hm, 1, Mk]
    node = model.graph.node[0]
    kept = [a for a in node.attribute if a.name not in attrs]
    del node.attribute[:]
    node.attribute.extend(kept)
    for name, value in attrs.items():
        node.attribute.append(helper.make_attribute(name, value))
    return model


def test_nodes_the_kernels_cannot_serve_are_refused_with_every_reason() -> None:
    with pytest.raises(UnsupportedNodeError) as info:
        prepare_onnx(_node_model(correction=[0, 7], future_knob=1))
    message = str(info.value)
    assert "correction=[0, 7]" in message and "must be one of [0, 1, 2]" in message and "future_knob=1" in message
    assert "query dim" not in message
    # Every rule of the node contract (paper 0, none 1, taylor 2), one for every query head.
    for code in (0, 1, 2):
        assert prepare_onnx(_node_model(correction=[code])).nodes
    # One per query head needs the head count: this model's q is [B, "Hq", Nq, D].
    with pytest.raises(UnsupportedNodeError, match=r"query head count \(dim 1 of q\) is dynamic \('Hq'\)"):
        prepare_onnx(_node_model(correction=[0, 2]))


def _rules(prepared: onnx.ModelProto, feed: dict) -> np.ndarray:
    dense = next(n for n in prepared.graph.node if n.op_type == DENSE.plugin)
    return ReferenceEvaluator(prepared, new_ops=ONNX_OPS).run([dense.input[5]], feed)[0]


def test_the_rules_input_holds_every_heads_code(tmp_path) -> None:
    """One rule: Expand(code, Shape(q)[1:2]) for any head count; one per head: the codes as a
    constant; a per-head list that does not fit q's static head count is refused."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, h, 24, 16, generator=g) for h in (4, 2, 2))
    one = prepare_onnx(onnx.load(_export(tmp_path, DeltaModule(causal=True, correction="taylor", **PARAMS), (q, k, v), name="a.onnx")))
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    rules = _rules(one.model, feed)
    assert rules.dtype == np.int32 and rules.tolist() == [2] * 4
    per_head = DeltaModule(causal=True, correction="none,taylor,paper,none", **PARAMS)
    model = prepare_onnx(onnx.load(_export(tmp_path, per_head, (q, k, v), name="b.onnx"))).model
    assert _rules(model, feed).tolist() == [1, 2, 0, 1]
    dense = next(n for n in model.graph.node if n.op_type == DENSE.plugin)
    assert {a.name: list(helper.get_attribute_value(a)) for a in dense.attribute if a.name == "correction"} == {"correction": [1, 2, 0, 1]}
    static = _node_model(correction=[0, 2, 1])
    static.graph.input[0].type.tensor_type.shape.dim[1].Clear()
    static.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 4
    with pytest.raises(UnsupportedNodeError, match="3 rules but q has 4 query heads"):
        prepare_onnx(static)


def test_masks_that_vary_per_query_are_refused(tmp_path) -> None:
    q, k, v = (torch.randn(1, h, 24, 16) for h in (2, 1, 1))
    full = torch.rand(1, 1, 24, 24) > 0.3
    static = _export(tmp_path, DeltaModule(causal=True, **PARAMS), (q, k, v, full), dynamic=False, name="s.onnx")
    with pytest.raises(UnsupportedNodeError, match="varies along the query dim"):
        prepare_onnx(onnx.load(static))
    batch, seq = Dim("batch"), Dim("seq")
    dims = ({0: batch, 2: seq},) * 3 + ({0: batch, 2: seq, 3: seq},)
    dynamic = tmp_path / "d.onnx"
    export_onnx(DeltaModule(causal=True, **PARAMS), (q, k, v, full), dynamic, dynamic_shapes=dims)
    with pytest.raises(UnsupportedNodeError, match=r"attn_mask has shape \[.*'seq', 'seq'\]"):
        prepare_onnx(onnx.load(dynamic))


def test_the_torch_twin_of_the_bias_ops_matches_the_graph(padded_model) -> None:
    """The GPU check feeds ``graph_bias(mask)``; the engine computes the graph's ops."""
    prepared = prepare_onnx(onnx.load(padded_model)).model
    dense = next(n for n in prepared.graph.node if n.op_type == DENSE.plugin)
    mask = (torch.rand(3, 1, 1, 29) > 0.3).numpy()
    feed = {"q": np.zeros((3, 4, 29, 16), np.float32), "k": np.zeros((3, 2, 29, 16), np.float32)}
    feed.update(v=feed["k"], attn_mask=mask)
    got = ReferenceEvaluator(prepared, new_ops=ONNX_OPS).run([dense.input[3]], feed)[0]
    canonical = torch.from_numpy(node_mask(torch.from_numpy(mask)))
    assert np.array_equal(got, graph_bias(canonical, 29).numpy())


# ---- the prepared graph, computed ----------------------------------------------------------------


def _feed(batch: int, n: int, mask: bool, seed: int, dtype=np.float32):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, h, n, 16, generator=g) for h in (4, 2, 2))
    feed = {"q": q, "k": k, "v": v}
    if mask:
        lengths = torch.randint(n // 2, n + 1, (batch,), generator=g)
        feed["attn_mask"] = torch.arange(n).view(1, 1, 1, n) < lengths.view(batch, 1, 1, 1)
    return {name: (t.numpy().astype(dtype) if t.dtype != torch.bool else t.numpy()) for name, t in feed.items()}


@pytest.mark.parametrize(("batch", "n"), [(1, 29), (2, 64), (1, 7)], ids=["n29", "b2-n64", "all-tail"])
def test_the_prepared_graph_computes_what_onnx_runtime_computes(padded_model, batch, n) -> None:
    prepared = prepare_onnx(onnx.load(padded_model)).model
    feed = _feed(batch, n, mask=True, seed=n)
    emulated = ReferenceEvaluator(prepared, new_ops=ONNX_OPS).run(None, feed)[0]
    body = load_session(padded_model).run(None, feed)[0]
    x = {k: torch.from_numpy(a) for k, a in feed.items()}
    oracle = delta_attention_reference(*(x[n].double() for n in "qkv"), x["attn_mask"], causal=True, **PARAMS)
    assert not np.isnan(emulated).any()  # every row written exactly once
    np.testing.assert_allclose(emulated, body, atol=2e-6, rtol=0)
    np.testing.assert_allclose(emulated, oracle.numpy(), atol=2e-6, rtol=0)


def test_a_float16_model_through_the_prepared_graph(tmp_path) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 33, 16, generator=g).half() for h in (4, 2, 2))
    path = _export(tmp_path, DeltaModule(causal=False, **PARAMS), (q, k, v), name="h.onnx")
    prepared = prepare_onnx(onnx.load(path)).model
    assert prepared.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    feed = _feed(2, 45, mask=False, seed=4, dtype=np.float16)
    emulated = ReferenceEvaluator(prepared, new_ops=ONNX_OPS).run(None, feed)[0]
    assert emulated.dtype == np.float16
    x = {k: torch.from_numpy(a) for k, a in feed.items()}
    oracle = delta_attention_reference(*(x[n].double() for n in "qkv"), causal=False, **PARAMS)
    same = delta_attention_reference(*(x[n] for n in "qkv"), causal=False, **PARAMS).double()
    err, floor = np.abs(emulated.astype(np.float64) - oracle.numpy()).max(), (same - oracle).abs().max().item()
    assert err <= 2 * floor + 2e-3, (err, floor)
    assert DOMAIN == "delta_opt"


class _TwoLayers(torch.nn.Module):
    """Two sites with different parameters: two node pairs, names that do not collide."""

    def forward(self, q, k, v):
        import delta_opt

        h = delta_opt.delta_attention(q, k, v, causal=True, **PARAMS)
        return delta_opt.delta_attention(h, k, v, causal=False, window=5, sinks=1, stride=3, tail=4)


def test_every_node_of_a_model_is_rewritten(tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 30, 16, generator=g) for _ in "qkv")
    path = _export(tmp_path, _TwoLayers(), (q, k, v), name="two.onnx")
    prepared = prepare_onnx(onnx.load(path))
    assert len(prepared.nodes) == 2
    names = [n.name for n in prepared.model.graph.node]
    assert len(names) == len(set(names))
    feed = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    emulated = ReferenceEvaluator(prepared.model, new_ops=ONNX_OPS).run(None, feed)[0]
    np.testing.assert_allclose(emulated, load_session(path).run(None, feed)[0], atol=2e-6, rtol=0)


@pytest.mark.parametrize("correction", ["none", "taylor", "taylor,none,paper,taylor"])
def test_correction_rules_through_the_prepared_graph(tmp_path, correction) -> None:
    """The node's rules reach the plugins: the prepared graph computes what ONNX Runtime computes
    through the function body, and the float64 reference, for each rule and a per-head plan."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, h, 40, 16, generator=g) for h in (4, 2, 2))
    mask = torch.rand(2, 1, 1, 40, generator=g) > 0.2
    path = _export(tmp_path, DeltaModule(causal=True, correction=correction, **PARAMS), (q, k, v, mask))
    prepared = prepare_onnx(onnx.load(path)).model
    feed = _feed(2, 53, mask=True, seed=11)
    emulated = ReferenceEvaluator(prepared, new_ops=ONNX_OPS).run(None, feed)[0]
    body = load_session(path).run(None, feed)[0]
    x = {k: torch.from_numpy(a) for k, a in feed.items()}
    oracle = delta_attention_reference(*(x[n].double() for n in "qkv"), x["attn_mask"], causal=True, correction=correction, **PARAMS)
    assert not np.isnan(emulated).any()
    np.testing.assert_allclose(emulated, body, atol=2e-6, rtol=0)
    np.testing.assert_allclose(emulated, oracle.numpy(), atol=2e-6, rtol=0)
