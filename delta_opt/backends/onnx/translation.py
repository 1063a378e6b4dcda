"""Lowering of one ``delta_opt::delta_attention`` call to one ``delta_opt.DeltaAttention`` node.

Used as the torch.onnx (dynamo) exporter's ``custom_translation_table`` entry for
``torch.ops.delta_opt.delta_attention.default``. The op's keyword arguments are resolved into the
node's attributes (:class:`.schema.NodeAttributes`) and its ``attn_mask`` is brought into the
node's canonical form (:mod:`.schema`: additive, rank 4, the element type of q) by a few standard
ops in front of the node.
"""

from __future__ import annotations

from typing import Any, Callable

import onnx
from onnx import TensorProto, helper
from onnxscript import opset18 as op
from onnxscript.values import Op, Opset

from ...plan import Correction
from .body import SUPPORTED_ELEMENT_TYPES
from .schema import DOMAIN, OP_TYPE, VERSION, NodeAttributes, op_schema

__all__ = ["ExportError", "Translation"]


class ExportError(ValueError):
    """A delta_attention site that cannot become a DeltaAttention node (raised through the exporter)."""


def _scalar(value: float, element_type: int, name: str) -> onnx.TensorProto:
    return helper.make_tensor(name, element_type, [], [value])


class Translation:
    """The translation function plus what it saw: the element types and the number of sites.

    A model gets one function body, generated for one element type, so every site must share it;
    a second element type raises :class:`ExportError` at export time.
    """

    def __init__(self) -> None:
        self.node = Op(Opset(DOMAIN, VERSION), OP_TYPE, op_schema())
        self.element_types: set[int] = set()
        self.rules: set[Correction] = set()  # every correction rule some node uses
        self.sites = 0

    @property
    def element_type(self) -> int | None:
        return next(iter(self.element_types), None)

    def table(self) -> dict[Callable[..., Any], Callable[..., Any]]:
        """The ``custom_translation_table`` for torch.onnx.export."""
        import torch

        # The exporter reads the signature (and __name__) of a plain function.
        def delta_attention(
            q: Any,
            k: Any,
            v: Any,
            attn_mask: Any = None,
            *,
            causal: bool,
            window: int = 2048,
            sinks: int = 1024,
            stride: int = 64,
            tail: int | None = None,
            scale: float | None = None,
            correction: str = "paper",
            retrieve: int = 0,
            impl: str = "auto",
        ) -> Any:
            if retrieve:
                raise ExportError(
                    f"retrieve={retrieve}: the DeltaAttention function body does not pick long-range keys; "
                    "export this model with retrieve=0 or keep it in PyTorch"
                )
            return self.translate(
                q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
                correction=correction,
            )  # fmt: skip

        return {torch.ops.delta_opt.delta_attention.default: delta_attention}

    def translate(
        self,
        q: Any,
        k: Any,
        v: Any,
        attn_mask: Any = None,
        *,
        causal: bool,
        window: int = 2048,
        sinks: int = 1024,
        stride: int = 64,
        tail: int | None = None,
        scale: float | None = None,
        correction: str = "paper",
    ) -> Any:
        """One ``DeltaAttention`` node for one site (q, k, v, attn_mask are exporter values)."""
        element_type = int(q.dtype)
        if element_type not in SUPPORTED_ELEMENT_TYPES:
            raise ExportError(
                f"delta_attention sites export as DeltaAttention nodes for float32/float16/bfloat16 inputs; "
                f"got {TensorProto.DataType.Name(element_type)}"
            )
        if self.element_types and element_type not in self.element_types:
            seen = TensorProto.DataType.Name(self.element_type)  # type: ignore[arg-type]
            raise ExportError(
                f"all delta_attention sites of a model must share one dtype (one function body per model); "
                f"got {seen} and {TensorProto.DataType.Name(element_type)}"
            )
        self.element_types.add(element_type)
        head_dim = q.shape[3]
        if scale is None and not isinstance(head_dim, int):
            raise ExportError(
                "the head dim of q (dim 3) is dynamic, but the node's scale attribute is 1/sqrt(D) for a fixed D: "
                "make dim 3 static in dynamic_shapes or pass scale= to delta_attention"
            )
        kwargs = dict(causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale, correction=correction)
        attrs = NodeAttributes.from_op_kwargs(kwargs, head_dim if isinstance(head_dim, int) else 1)
        q_heads = q.shape[1]
        if len(attrs.correction) > 1 and not (isinstance(q_heads, int) and q_heads == len(attrs.correction)):
            raise ExportError(
                f"correction={correction!r} names one rule per query head ({len(attrs.correction)} rules), so the "
                f"query head dim of q (dim 1) must be static and equal to that; got {q_heads}"
            )
        self.rules.update(attrs.correction)
        self.sites += 1
        return self.node(q, k, v, _canonical_mask(attn_mask, element_type), **attrs.to_onnx())


def _canonical_mask(attn_mask: Any, element_type: int) -> Any:
    """The op's mask (None, bool, or additive float of rank <= 4) as the node's additive rank-4 mask."""
    if attn_mask is None:
        return op.Constant(value=helper.make_tensor("no_mask", element_type, [1, 1, 1, 1], [0.0]))
    mask = attn_mask
    rank = len(mask.shape)
    if rank < 4:
        mask = op.Unsqueeze(mask, op.Constant(value_ints=list(range(4 - rank))))
    dtype = int(mask.dtype)
    if dtype == TensorProto.BOOL:
        zero = op.Constant(value=_scalar(0.0, element_type, "zero"))
        neg_inf = op.Constant(value=_scalar(float("-inf"), element_type, "neg_inf"))
        return op.Where(mask, zero, neg_inf)
    if dtype != element_type:
        return op.Cast(mask, to=element_type)
    return mask
