"""TensorRT lowering of DeltaAttention: two ahead-of-time plugins and an engine builder.

    from delta_opt.backends.tensorrt import build_engine, compare_engine
    build_engine("model.onnx", "model.engine", min_seq_len=1, opt_seq_len=4096, max_seq_len=8192)
    compare_engine("model.onnx", "model.engine", feeds)       # TensorRT vs ONNX Runtime

- :mod:`.graph`: ``prepare_onnx`` -- each DeltaAttention node becomes the two plugins' nodes;
- :mod:`.stages`, :mod:`.signature`, :mod:`.symbolic`: shapes, grids, arguments (plain Python);
- :mod:`.aot`, :mod:`.ptx`: the kernels compiled for a GPU architecture, PTX in TensorRT's order;
- :mod:`.plugin`: ``register_plugins`` with ``tensorrt.plugin``; :mod:`.engine`: ``build_engine``;
- :mod:`.compare`: ``compare_engine`` (Polygraphy); :mod:`.driver`: the CUDA-driver launch the
  GPU check uses.

Importing this package imports neither tensorrt nor triton; the names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "EngineBuild",
    "PreparedModel",
    "UnsupportedNodeError",
    "build_engine",
    "compare_engine",
    "load_network",
    "prepare_onnx",
    "profile_shapes",
    "register_plugins",
]

_SOURCES = {
    "EngineBuild": ".engine",
    "build_engine": ".engine",
    "profile_shapes": ".engine",
    "load_network": ".engine",
    "PreparedModel": ".graph",
    "prepare_onnx": ".graph",
    "UnsupportedNodeError": ".attributes",
    "compare_engine": ".compare",
    "register_plugins": ".plugin",
}


def __getattr__(name: str) -> Any:
    if name in _SOURCES:
        return getattr(import_module(_SOURCES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
