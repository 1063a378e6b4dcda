"""delta_opt: convert the attention of trained PyTorch models to Delta Attention.

Public API::

    delta_opt.delta_attention(q, k, v, attn_mask=None, *, causal, window, sinks, stride, tail, scale, impl)
    delta_opt.DeltaConfig(window=..., sinks=..., stride=..., tail=..., min_seq_len=..., impl=...)
    delta_opt.optimize(model, example_inputs, config, *, dynamic_shapes=None) -> (ExportedProgram, Report)
    delta_opt.export_onnx(program_or_model, example_inputs, path, *, config, opset, dynamic_shapes, inline)
    delta_opt.apply_to_hf(model, config)      # a transformers model's prefill -> delta attention
    delta_opt.eval                            # fidelity metrics, variants, probes (lazy)
    delta_opt.calibrate(model, calibration_inputs, config) -> DeltaConfig   # per-layer plans
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
    "apply_to_hf",
    "build_engine",
    "calibrate",
    "delta_attention",
    "eval",
    "export_onnx",
    "optimize",
    "__version__",
]


def __getattr__(name: str):
    # Heavy or optional parts load on first use, not with the package: the passes (torch.export
    # machinery), ONNX export (onnx, onnxscript), the Hugging Face integration and the eval harness.
    if name in ("optimize", "Report"):
        from . import passes

        return getattr(passes, name)
    if name == "export_onnx":
        from .backends.onnx.export import export_onnx

        return export_onnx
    if name == "calibrate":
        from .calibration import calibrate

        return calibrate
    if name == "apply_to_hf":
        from .integrations.transformers import apply_to_hf

        return apply_to_hf
    if name == "eval":
        import importlib

        return importlib.import_module(".eval", __name__)
    # TensorRT engines: tensorrt itself is imported only when an engine is built.
    if name == "build_engine":
        from .backends.tensorrt.engine import build_engine

        return build_engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
