"""ONNX lowering of ``delta_opt::delta_attention``: one ``delta_opt.DeltaAttention`` node per site.

- :mod:`.schema`: the node contract (inputs, attributes, mask form) shared with TensorRT plugins;
- :mod:`.body`: the model-local function body in standard ONNX ops;
- :mod:`.translation`: the torch.onnx translation of the op into the node;
- :mod:`.export`: :func:`export_onnx`;
- :mod:`.session`: :func:`load_session`, an ONNX Runtime session that explains a missing body.

Importing this package imports onnx; ``delta_opt`` itself only imports it when these are used.
"""

from .export import DEFAULT_OPSET, OnnxExport, count_delta_nodes, export_onnx
from .session import MissingFunctionError, check_function_bodies, load_session

__all__ = [
    "DEFAULT_OPSET",
    "MissingFunctionError",
    "OnnxExport",
    "check_function_bodies",
    "count_delta_nodes",
    "export_onnx",
    "load_session",
]
