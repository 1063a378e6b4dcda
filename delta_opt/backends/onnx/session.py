"""ONNX Runtime sessions for exported models, with a clear error when a function body is missing.

ONNX Runtime has no kernel for the ``delta_opt`` domain: it runs each ``DeltaAttention`` node
through the model-local function that :func:`~delta_opt.backends.onnx.export_onnx` embeds. A copy
of the model without that function (for example one prepared for a TensorRT plugin) fails inside
ONNX Runtime with "is not a registered function/op"; :func:`load_session` checks first and says
what is missing and how to get it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import onnx

from .schema import DOMAIN, OP_TYPE

__all__ = ["MissingFunctionError", "check_function_bodies", "load_session"]

# Domains whose ops ONNX Runtime implements itself.
_RUNTIME_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.training"}


class MissingFunctionError(ValueError):
    """A node of a custom domain has no model-local function for ONNX Runtime to run."""


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:  # If / Loop / Scan bodies
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _nodes(g)


def check_function_bodies(model: onnx.ModelProto) -> None:
    """Raise :class:`MissingFunctionError` if a custom-domain node has no model-local function."""
    functions = {(f.domain, f.name) for f in model.functions}
    for node in _nodes(model.graph):
        key = (node.domain, node.op_type)
        if node.domain in _RUNTIME_DOMAINS or key in functions:
            continue
        if key == (DOMAIN, OP_TYPE):
            raise MissingFunctionError(
                f"node {node.name!r} is a {DOMAIN}.{OP_TYPE} node, but the model carries no function body for it. "
                f"ONNX Runtime has no kernel for the custom domain {DOMAIN!r}: it runs the node through the "
                f"model-local FunctionProto ({DOMAIN}.{OP_TYPE}) that delta_opt.export_onnx writes next to it, "
                "and this copy of the model has had that function stripped (as for a TensorRT-plugin build). "
                "Re-export with delta_opt.export_onnx(...) to get the body back, or with inline=True for a "
                "model of standard ONNX ops only."
            )
        raise MissingFunctionError(
            f"node {node.name!r} has op {node.domain}.{node.op_type}, which neither ONNX Runtime nor a "
            "model-local function defines"
        )


def load_session(
    model: str | Path | onnx.ModelProto,
    *,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    options: Any = None,
) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model`` (a path or a ModelProto).

    Raises:
        ValueError: the path does not exist.
        MissingFunctionError: a ``DeltaAttention`` (or other custom-domain) node has no function
            body in the model, with what to do about it.
    """
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        check_function_bodies(model)
        return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=list(providers))
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be a path or an onnx.ModelProto; got {type(model).__name__}")
    path = Path(model)
    if not path.is_file():
        raise ValueError(f"model file {str(path)!r} does not exist")
    check_function_bodies(onnx.load(str(path), load_external_data=False))
    return ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
