"""Helpers for the ONNX backend tests: a one-node DeltaAttention model, masks in the node's form,
and modules that call the op for the exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

import delta_opt
from delta_opt.backends.onnx.body import build_function
from delta_opt.backends.onnx.schema import DOMAIN, INPUTS, OP_TYPE, VERSION, NodeAttributes

TRT_OPS_FILE = Path(__file__).with_name("trt_onnx_ops.txt")


def trt_ops() -> set[str]:
    """The ops TensorRT's ONNX parser imports natively (copied from the project's shared list)."""
    lines = TRT_OPS_FILE.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def one_node_model(
    attrs: NodeAttributes, element_type: int = TensorProto.FLOAT, opset: int = 18, rules=None
) -> onnx.ModelProto:
    """A model whose graph is one DeltaAttention node over inputs q, k, v, attn_mask; its body
    implements ``rules`` (default: the rules the node uses, as ``export_onnx`` builds it)."""
    node = helper.make_node(OP_TYPE, list(INPUTS), ["out"], domain=DOMAIN, name="delta", **attrs.to_onnx())
    dims = {"q": ["B", "Hq", "Nq", "D"], "k": ["B", "Hkv", "Nk", "D"], "v": ["B", "Hkv", "Nk", "Dv"], "attn_mask": ["Bm", "Hm", "Mq", "Mk"]}
    inputs = [helper.make_tensor_value_info(name, element_type, dims[name]) for name in INPUTS]
    output = helper.make_tensor_value_info("out", element_type, ["B", "Hq", "Nq", "Dv"])
    graph = helper.make_graph([node], "delta_attention", inputs, [output])
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, VERSION)],
        functions=[build_function(element_type, opset, rules=attrs.correction if rules is None else rules)],
        ir_version=10,
    )


def node_mask(attn_mask: torch.Tensor | None, dtype: np.dtype = np.float32) -> np.ndarray:
    """The op's mask in the node's canonical form: additive, rank 4 ([1,1,1,1] zeros for None)."""
    if attn_mask is None:
        return np.zeros((1, 1, 1, 1), dtype)
    mask = attn_mask.numpy()
    if mask.dtype == np.bool_:
        mask = np.where(mask, 0.0, -np.inf)
    mask = mask.astype(dtype)
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


class DeltaModule(torch.nn.Module):
    """``delta_attention(q, k, v[, attn_mask])`` with fixed parameters, for export."""

    def __init__(self, **params: object) -> None:
        super().__init__()
        self.params = params

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        return delta_opt.delta_attention(q, k, v, attn_mask, **self.params)
