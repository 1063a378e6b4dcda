"""delta_opt: convert the attention of trained PyTorch models to Delta Attention.

Public API::

    delta_opt.delta_attention(q, k, v, attn_mask=None, *, causal, window, sinks, stride, tail, scale, impl)
    delta_opt.DeltaConfig(window=..., sinks=..., stride=..., tail=..., min_seq_len=..., impl=...)
    delta_opt.optimize(model, example_inputs, config, *, dynamic_shapes=None) -> (ExportedProgram, Report)
    delta_opt.export_onnx(program_or_model, example_inputs, path, *, config, opset, dynamic_shapes, inline)
    delta_opt.build_engine(onnx_path, engine_path, *, min_seq_len, opt_seq_len, max_seq_len, precision)

Importing the package registers the op ``delta_opt::delta_attention`` with torch.
"""

from .config import DeltaConfig, Impl
from .plan import Correction, LayerPlan
from .ops import delta_attention

__version__ = "0.1.0"

__all__ = [
    "Correction",
    "DeltaConfig",
    "Impl",
    "LayerPlan",
    "Report",
    "build_engine",
    "delta_attention",
    "export_onnx",
    "optimize",
    "__version__",
]


def __getattr__(name: str):
    # The passes import torch.export/fx machinery; load them on first use only.
    if name in ("optimize", "Report"):
        from . import passes

        return getattr(passes, name)
    # ONNX export pulls in onnx and onnxscript: imported on first use, not with the package.
    if name == "export_onnx":
        from .backends.onnx.export import export_onnx

        return export_onnx
    # TensorRT engines: tensorrt itself is imported only when an engine is built.
    if name == "build_engine":
        from .backends.tensorrt.engine import build_engine

        return build_engine
    raise AttributeError(f"module 'delta_opt' has no attribute {name!r}")
