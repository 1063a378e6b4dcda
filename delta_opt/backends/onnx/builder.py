"""A small helper that writes ONNX nodes as calls: ``b.MatMul(x, y)`` returns the output's name.

It keeps the function body in :mod:`.body` readable as a sequence of tensor expressions instead
of ``onnx.helper.make_node`` lists, and gives every value a unique name.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

__all__ = ["FLOAT", "NodeBuilder"]


class NodeBuilder:
    """Accumulates the nodes of one graph or function body (default domain only)."""

    def __init__(self, prefix: str = "t") -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._prefix = prefix
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}_{hint}"

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        """Append ``op_type(inputs, **attrs)`` and return the name of its single output."""
        out = self._name(name or op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def __getattr__(self, op_type: str) -> Callable[..., str]:
        # b.Add(x, y) == b.op("Add", x, y); only CamelCase names are op types.
        if not op_type[:1].isupper():
            raise AttributeError(op_type)
        return lambda *inputs, **attrs: self.op(op_type, *inputs, **attrs)

    # ---- constants -------------------------------------------------------------------------

    def const(self, value: object, dtype: np.dtype | type, name: str = "const") -> str:
        """A constant tensor (a Python scalar gives a 0-d tensor)."""
        array = np.asarray(value, dtype=dtype)
        return self.op("Constant", name=name, value=numpy_helper.from_array(array))

    def int64(self, value: int | Sequence[int], name: str = "i64") -> str:
        return self.const(value, np.int64, name)

    def attr_ref(self, attribute: str, kind: str) -> str:
        """A 0-d constant holding the value of the enclosing function's attribute ``attribute``.

        ``kind`` is ``"int"`` (a 0-d int64 tensor), ``"ints"`` (a 1-D int64 tensor) or ``"float"``
        (a 0-d float32 tensor).
        """
        field, attr_type = {
            "int": ("value_int", AttributeProto.INT),
            "ints": ("value_ints", AttributeProto.INTS),
            "float": ("value_float", AttributeProto.FLOAT),
        }[kind]
        out = self._name(attribute)
        node = helper.make_node("Constant", [], [out], name=out)
        node.attribute.append(helper.make_attribute_ref(field, attr_type, ref_attr_name=attribute))
        self.nodes.append(node)
        return out

    def cast(self, x: str, to: int, name: str = "cast") -> str:
        return self.op("Cast", x, to=to, name=name)

    def dim(self, shape: str, index: int, name: str = "dim") -> str:
        """Element ``index`` of a shape vector, as a 0-d int64 tensor."""
        return self.op("Gather", shape, self.int64(index), axis=0, name=name)

    def vector(self, *scalars: str, name: str = "shape") -> str:
        """A 1-D int64 tensor built from 0-d int64 tensors (for Reshape / Expand shapes)."""
        axis0 = self.int64([0])
        return self.op("Concat", *(self.op("Unsqueeze", s, axis0) for s in scalars), axis=0, name=name)


FLOAT = TensorProto.FLOAT
