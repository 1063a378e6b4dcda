"""Rewrite an exported model's DeltaAttention nodes into the TensorRT plugins' nodes.

TensorRT's ONNX parser maps a node to a plugin by op type plus two node attributes,
``plugin_namespace`` and ``plugin_version`` (the ONNX domain is not consulted), and uses a Python
plugin's ahead-of-time kernel when the node carries ``aot=1``. Each ``delta_opt.DeltaAttention``
node becomes (see :mod:`.stages`)::

    bias    = Expand(Cast(attn_mask, float) * log2(e), [Bm, Hm, Mq, Nk])   # standard ops
    rules   = Expand([code], Shape(q)[1:2])     # or the per-head codes as an int32 initializer
    partial, delta, mean_key, offset = DeltaAttentionDense(q, k, v, bias, scale, rules)
    out     = DeltaAttentionSparse(q, k, v, bias, scale, rules, delta, mean_key, offset, partial)

(``out`` aliases ``partial``) with ``scale`` a one-element fp32 initializer holding
``scale * log2(e)`` and ``rules`` the node's ``correction`` codes, one int32 per query head. A
mask that is the exporter's constant "no mask" (all zeros) is not read at all (``has_bias=0``). Nodes the kernels
cannot compute as asked (an attribute value they do not serve, a mask that varies per query) are
refused with every reason at once, before TensorRT runs. The file :func:`delta_opt.export_onnx`
wrote is not changed: ONNX Runtime keeps running it through the function body.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..onnx.schema import DOMAIN, INPUTS, OP_TYPE
from .attributes import STAGE_ATTRIBUTES, UnsupportedNodeError, node_corrections, node_values, unserved
from .stages import DENSE, NAMESPACE, SPARSE, VERSION

__all__ = ["PLUGIN_FIELDS", "PreparedModel", "PreparedNode", "prepare_onnx"]

# Node attributes the parser reads to find the plugin (they are not plugin fields).
PLUGIN_FIELDS: dict[str, Any] = {"plugin_namespace": NAMESPACE, "plugin_version": VERSION, "aot": 1}


@dataclass(frozen=True)
class PreparedNode:
    """What one DeltaAttention node became."""

    name: str
    has_bias: bool
    dense: str  # node names
    sparse: str


@dataclass(frozen=True)
class PreparedModel:
    model: onnx.ModelProto
    nodes: tuple[PreparedNode, ...]


def _is_delta(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def _constant_value(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    """The value of ``name`` when it is an initializer or a Constant node's output."""
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and list(node.output) == [name]:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.asarray(helper.get_attribute_value(attr))
    return None


def _mask_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Shapes ONNX shape inference can tell (int: static, str: named dynamic, None: unknown)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - inference is advisory here; TensorRT checks again at build
        return {}
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            dims = []
            for d in info.type.tensor_type.shape.dim:
                dims.append(d.dim_value if d.HasField("dim_value") else (d.dim_param or None))
            shapes[info.name] = dims
    return shapes


def _reasons(node: onnx.NodeProto, shapes: dict[str, list]) -> list[str]:
    values = node_values(node)
    unserved_values = unserved(values)
    reasons = [f"{name}{why}" if why.startswith("=") else f"{name} {why}" for name, why in unserved_values.items()]
    if len(node.input) != len(INPUTS) or not all(node.input):
        reasons.append(f"expects the inputs {list(INPUTS)}; got {list(node.input)}")
        return reasons
    q = shapes.get(node.input[0])
    heads = q[1] if q is not None and len(q) == 4 else None
    if "correction" in values and "correction" not in unserved_values:
        count = len(node_corrections(values["correction"]))
        if count > 1 and isinstance(heads, int) and count != heads:
            reasons.append(f"correction names {count} rules but q has {heads} query heads (one, or one per head, expected)")
        elif count > 1 and isinstance(heads, str):  # unknown (None) is left to the plugin's check
            reasons.append(f"correction names one rule per query head, but the query head count (dim 1 of q) is dynamic ({heads!r})")
    mask = shapes.get(node.input[3])
    query_dim = mask[2] if mask is not None and len(mask) == 4 else None
    # A named dim is dynamic (the sequence); an unknown one (None) is left to the plugin's check.
    if isinstance(query_dim, str) or (isinstance(query_dim, int) and query_dim != 1):
        reasons.append(
            f"attn_mask has shape {mask}: it varies along the query dim, but the kernels take key masks "
            "broadcastable to [B, Hq, 1, Nk] only (e.g. key padding [B, 1, 1, Nk])"
        )
    return reasons


class _Names:
    """Fresh value names that collide with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.taken = {i.name for i in graph.initializer} | {v.name for v in graph.input} | {v.name for v in graph.output}
        for node in graph.node:
            self.taken.update(node.output)
            self.taken.update(node.input)
            self.taken.add(node.name)

    def __call__(self, hint: str) -> str:
        name, n = hint, 0
        while name in self.taken:
            n += 1
            name = f"{hint}_{n}"
        self.taken.add(name)
        return name


def _stage_node(stage, inputs, outputs, values, has_bias, name) -> onnx.NodeProto:
    node = helper.make_node(stage.plugin, inputs, outputs, name=name, domain=DOMAIN)
    # Attributes in the plugin's registration order (its fields are taken in that order).
    fields = {**{k: values[k] for k in STAGE_ATTRIBUTES if k in values}, "has_bias": int(has_bias), **PLUGIN_FIELDS}
    node.attribute.extend(helper.make_attribute(k, v) for k, v in fields.items())
    return node


def _rewrite(node: onnx.NodeProto, graph: onnx.GraphProto, names: _Names, base: str) -> tuple[list, list, PreparedNode]:
    """The nodes and initializers that replace one DeltaAttention node."""
    values = node_values(node)
    q, k, v, mask = node.input
    mask_value = _constant_value(graph, mask)
    has_bias = not (mask_value is not None and mask_value.size > 0 and np.all(mask_value == 0))
    inits = []

    def init(hint: str, array: np.ndarray) -> str:
        name = names(f"{base}/{hint}")
        inits.append(numpy_helper.from_array(array, name))
        return name

    nodes = []

    def op(op_type: str, *inputs: str, **attrs: Any) -> str:
        out = names(f"{base}/{op_type.lower()}")
        nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    scale = init("scale_log2", np.array([values["scale"] * math.log2(math.e)], dtype=np.float32))
    zero, one, two, three = (init(f"i{i}", np.array([i], np.int64)) for i in range(4))
    if has_bias:
        logits = op("Mul", op("Cast", mask, to=TensorProto.FLOAT), init("log2e", np.array(math.log2(math.e), np.float32)))
        keys = op("Slice", op("Shape", k), two, three, zero)
        head = op("Slice", op("Shape", logits), zero, three, zero)
        bias = op("Expand", logits, op("Concat", head, keys, axis=0))
    else:
        bias = init("no_bias", np.zeros((1, 1, 1, 1), np.float32))  # never read (has_bias=0)
    # The rule code of every query head (static per node: a constant TensorRT folds).
    codes = np.array([rule.code for rule in node_corrections(values.get("correction", [0]))], np.int32)
    if codes.size == 1:
        rules = op("Expand", init("rule", codes), op("Slice", op("Shape", q), one, two, zero))
    else:
        rules = init("rules", codes)
    scratch = [names(f"{base}/{name}") for name in ("delta", "mean_key", "offset")]
    partial = names(f"{base}/partial")
    dense_name, sparse_name = names(f"{base}/{DENSE.plugin}"), names(f"{base}/{SPARSE.plugin}")
    nodes.append(_stage_node(DENSE, [q, k, v, bias, scale, rules], [partial, *scratch], values, has_bias, dense_name))
    sparse_inputs = [q, k, v, bias, scale, rules, *scratch, partial]
    nodes.append(_stage_node(SPARSE, sparse_inputs, list(node.output), values, has_bias, sparse_name))
    return nodes, inits, PreparedNode(base, has_bias, dense_name, sparse_name)


def graph_bias(node_mask: Any, kv_len: int) -> Any:
    """In torch, what the prepared graph feeds the plugins as ``bias`` for a node's mask.

    ``node_mask`` is the node's additive mask [Bm, Hm, Mq, Mk] (a torch tensor); the result is
    ``Expand(Cast(mask, float) * log2(e), [Bm, Hm, Mq, Nk])``, contiguous float32.
    """
    import torch

    bias = node_mask.to(torch.float32) * np.float32(math.log2(math.e))
    return bias.expand(*bias.shape[:3], kv_len).contiguous()


def prepare_onnx(model: onnx.ModelProto) -> PreparedModel:
    """A copy of ``model`` with every DeltaAttention node replaced by the plugins' nodes.

    Raises:
        UnsupportedNodeError: listing every node the kernels cannot compute, and why.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ValueError(f"model must be an onnx.ModelProto; got {type(model).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            if any(_is_delta(n) for g in subgraphs for n in g.node):
                raise UnsupportedNodeError(f"a DeltaAttention node inside {node.op_type} {node.name!r}: subgraphs are not rewritten")
    shapes = _mask_dims(out)
    problems = {}
    for i, node in enumerate(graph.node):
        if _is_delta(node):
            reasons = _reasons(node, shapes)
            if reasons:
                problems[node.name or f"#{i}"] = reasons
    if problems:
        lines = [f"  {name}: " + "; ".join(reasons) for name, reasons in problems.items()]
        raise UnsupportedNodeError(
            "the TensorRT kernels cannot compute these DeltaAttention node(s) as the model asks:\n" + "\n".join(lines)
        )
    names = _Names(graph)
    kept, prepared = [], []
    for i, node in enumerate(graph.node):
        if not _is_delta(node):
            kept.append(node)
            continue
        nodes, inits, record = _rewrite(node, graph, names, node.name or f"DeltaAttention_{i}")
        kept.extend(nodes)
        graph.initializer.extend(inits)
        prepared.append(record)
    del graph.node[:]
    graph.node.extend(kept)
    functions = [f for f in out.functions if (f.domain, f.name) != (DOMAIN, OP_TYPE)]
    del out.functions[:]
    out.functions.extend(functions)
    return PreparedModel(out, tuple(prepared))
