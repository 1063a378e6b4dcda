"""The plugins' attributes, derived from the ONNX node contract, and what the kernels can serve.

The TensorRT plugins take every attribute of the ``DeltaAttention`` node as
:data:`delta_opt.backends.onnx.schema.ATTRIBUTES` lists it (in that order: TensorRT's Python
plugins receive attributes positionally in the order of the node's fields), so an attribute
added to the schema reaches the plugin without a change here. The compiled kernels serve some
attribute values only: :func:`unserved` says which values they cannot compute, and the build
refuses those nodes instead of computing something else. An attribute this module does not know
is refused the same way: the kernels predate it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np
import numpy.typing as npt

from ...plan import Correction
from ..onnx import schema

__all__ = ["ATTRIBUTE_TYPES", "STAGE_ATTRIBUTES", "UnsupportedNodeError", "node_corrections", "node_values", "unserved"]

# ONNX attribute type -> the annotation TensorRT's Python plugins take (lists as 1-D numpy arrays).
_PYTHON_TYPES: dict[str, Any] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "INTS": npt.NDArray[np.int32],
    "FLOATS": npt.NDArray[np.float32],
}


class UnsupportedNodeError(ValueError):
    """A DeltaAttention node that the TensorRT kernels cannot compute as the node asks."""


def _attribute_types() -> dict[str, type]:
    types = {}
    for name, (kind, _doc) in schema.ATTRIBUTES.items():
        if kind not in _PYTHON_TYPES:
            raise TypeError(f"schema attribute {name!r} has ONNX type {kind}, which TensorRT plugins cannot take")
        types[name] = _PYTHON_TYPES[kind]
    return types


# name -> Python type of each DeltaAttention attribute, in the node's order.
ATTRIBUTE_TYPES: dict[str, type] = _attribute_types()

# The stage plugins also take ``has_bias``: 0 when the node's mask is the exporter's constant
# "no mask" (all zeros), so the kernels skip the bias loads exactly as the eager launcher does.
STAGE_ATTRIBUTES: dict[str, type] = {**ATTRIBUTE_TYPES, "has_bias": int}


def _positive(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            return f"must be an integer >= {minimum}"
        return None

    return check


def _causal(value: Any) -> str | None:
    return None if value in (0, 1) and not isinstance(value, float) else "must be 0 or 1"


def _scale(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok else "must be a finite float"


def node_corrections(value: Any) -> tuple[Correction, ...]:
    """The node's ``correction`` as rules: the op's string (``"paper"``, ``"taylor,none"``) or the
    node's rule codes (``[0]``, ``[2, 1, 0]``; any int sequence or numpy array).

    One rule (for every query head) or one per query head, as the node stores them; raises
    ValueError for an unknown name or code, or an empty list.
    """
    if isinstance(value, str):
        return tuple(Correction.parse(part) for part in value.split(","))
    if isinstance(value, (bool, float)) or value is None:
        raise ValueError(f"must be rule codes (ints) or rule names; got {value!r}")
    codes = np.asarray(value).reshape(-1)
    if codes.size == 0:
        raise ValueError("holds no rule code (one, or one per query head, is required)")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"must be integer rule codes; got {codes.dtype}")
    return tuple(Correction.from_code(int(c)) for c in codes)


def _correction(value: Any) -> str | None:
    """Every rule (paper 0, none 1, taylor 2) is served, one or per query head; the per-head
    count is checked against the query heads where those are known (graph and plugin build)."""
    try:
        node_corrections(value)
    except (ValueError, TypeError) as e:
        return str(e)
    return None


# What the kernels compute for each attribute they know; None from a check means served.
_SERVED: dict[str, Callable[[Any], str | None]] = {
    "causal": _causal,
    "window": _positive(1),
    "sinks": _positive(0),
    "stride": _positive(1),
    "tail": _positive(0),
    "scale": _scale,
    "correction": _correction,
    "has_bias": _causal,
}


def unserved(values: Mapping[str, Any]) -> dict[str, str]:
    """``{attribute: why}`` for every value in ``values`` the kernels cannot serve.

    Missing attributes of the schema, attributes the kernels do not know, and values they do not
    compute (e.g. ``correction=[7]``, no such rule) are all reported; an empty dict means servable.
    """
    reasons = {}
    for name in ATTRIBUTE_TYPES:
        if name not in values:
            reasons[name] = "missing (the node contract requires every attribute)"
    for name, value in values.items():
        check = _SERVED.get(name)
        if check is None:
            reasons[name] = f"={value!r} is not known to the TensorRT kernels (added to the node contract after them)"
            continue
        why = check(value)
        if why is not None:
            reasons[name] = f"={value!r} {why}"
    return reasons


def node_values(node: Any) -> dict[str, Any]:
    """The attribute values of an ONNX node as Python values (ints, floats, strings)."""
    from onnx import helper

    values = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        values[attr.name] = value.decode() if isinstance(value, bytes) else value
    return values
