"""TensorRT (an engine built by :func:`.engine.build_engine`) against ONNX Runtime, with Polygraphy.

ONNX Runtime runs the exported model through the DeltaAttention function body; TensorRT runs the
engine, whose plugins' kernels are embedded (no Python plugin code is needed to load it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..polygraphy.compare import ComparisonResult, _feeds, compare_runners

__all__ = ["compare_engine"]


def compare_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    atol: float = 1e-2,
    rtol: float = 1e-2,
) -> ComparisonResult:
    """Run ``inputs`` through ONNX Runtime (``onnx_path``) and TensorRT (``engine_path``).

    Args:
        onnx_path: the model as :func:`delta_opt.export_onnx` wrote it (with its function body).
        engine_path: the engine :func:`~delta_opt.backends.tensorrt.build_engine` built from it.
        inputs: one feed or a list of feeds (input name -> array); lengths must lie in the
            engine's optimization profile.
        atol, rtol: ``|tensorrt - onnxruntime| <= atol + rtol * |onnxruntime|`` elementwise (the
            defaults suit 16-bit engines; ONNX Runtime's body computes in float32).

    Returns:
        :class:`~delta_opt.backends.polygraphy.ComparisonResult` with one backend, "tensorrt",
        compared against "onnxruntime".
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    for name, path in (("onnx_path", onnx_path), ("engine_path", engine_path)):
        if not path.is_file():
            raise ValueError(f"{name} {str(path)!r} does not exist")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}")
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from ..onnx.session import load_session
    from .engine import _tensorrt

    session = load_session(onnx_path)
    feeds = _feeds(inputs, [i.name for i in session.get_inputs()])
    _tensorrt()  # a clear ImportError before Polygraphy's own
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    runners = [OnnxrtRunner(session, name="onnxruntime"), TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name="tensorrt")]
    return compare_runners(runners, feeds, atol=atol, rtol=rtol)
