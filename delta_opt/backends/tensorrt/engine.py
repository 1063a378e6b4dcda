"""``build_engine``: an exported ONNX model to a serialized TensorRT engine with the plugins.

Steps: :func:`.graph.prepare_onnx` (refuses nodes the kernels cannot compute), the optimization
profile from the sequence lengths (:func:`profile_shapes`, plain Python), then TensorRT: register
the plugins, parse, build, write the engine atomically. The first two steps run anywhere; the
last needs TensorRT and a GPU of the architecture the engine is for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import onnx

from ...bench.io import atomic_write_bytes
from .graph import PreparedNode, prepare_onnx

__all__ = ["PRECISIONS", "EngineBuild", "build_engine", "load_network", "profile_shapes"]

logger = logging.getLogger(__name__)

# "model": a strongly typed network, every tensor in the type the model was exported in (the
# plugins' q/k/v/out included). The others build a weakly typed network with TensorRT's FP16 /
# BF16 builder flags, for TensorRT versions that still have them.
PRECISIONS = ("model", "fp32", "fp16", "bf16")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class EngineBuild:
    """What :func:`build_engine` wrote."""

    path: Path
    nodes: tuple[PreparedNode, ...]  # the DeltaAttention nodes, each now two plugins
    profile: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)  # input -> (min, opt, max)
    precision: str = "model"


def _check_lengths(min_seq_len: int, opt_seq_len: int, max_seq_len: int, batch_size: int) -> None:
    for name, value in (("min_seq_len", min_seq_len), ("opt_seq_len", opt_seq_len), ("max_seq_len", max_seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if not min_seq_len <= opt_seq_len <= max_seq_len:
        raise ValueError(f"sequence lengths must satisfy min <= opt <= max; got {min_seq_len}, {opt_seq_len}, {max_seq_len}")


def profile_shapes(
    model: onnx.ModelProto,
    *,
    min_seq_len: int,
    opt_seq_len: int,
    max_seq_len: int,
    batch_size: int = 1,
    dims: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """The optimization profile of every graph input: ``{name: (min, opt, max)}``.

    A dynamic dim takes ``dims[name]`` when its name is given there, ``batch_size`` (fixed) when
    its name contains "batch", and the sequence lengths otherwise. Static dims stay as they are.
    """
    _check_lengths(min_seq_len, opt_seq_len, max_seq_len, batch_size)
    dims = dict(dims or {})
    for name, value in dims.items():
        ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(x, int) and x >= 0 for x in value)
        if not ok or not value[0] <= value[1] <= value[2]:
            raise ValueError(f"dims[{name!r}] must be (min, opt, max) ints with min <= opt <= max; got {value!r}")
    initializers = {i.name for i in model.graph.initializer}
    profile = {}
    for tensor in model.graph.input:
        if tensor.name in initializers:
            continue
        lows, opts, highs = [], [], []
        for axis, d in enumerate(tensor.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                lo = opt = hi = d.dim_value
            elif d.dim_param in dims:
                lo, opt, hi = dims[d.dim_param]
            elif not d.dim_param:
                raise ValueError(f"input {tensor.name!r} dim {axis} is dynamic and unnamed: give its range in dims")
            elif "batch" in d.dim_param.lower():
                lo = opt = hi = batch_size
            else:
                lo, opt, hi = min_seq_len, opt_seq_len, max_seq_len
            lows.append(lo)
            opts.append(opt)
            highs.append(hi)
        profile[tensor.name] = (tuple(lows), tuple(opts), tuple(highs))
    return profile


def _tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as e:
        from .plugin import REQUIREMENT

        raise ImportError(f"build_engine needs tensorrt: {REQUIREMENT}") from e
    return trt


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    min_seq_len: int,
    opt_seq_len: int,
    max_seq_len: int,
    precision: str = "model",
    batch_size: int = 1,
    dims: Mapping[str, tuple[int, int, int]] | None = None,
    workspace_bytes: int | None = None,
    force: bool = False,
) -> EngineBuild:
    """Build a TensorRT engine from a model exported by :func:`delta_opt.export_onnx`.

    Args:
        onnx_path: the exported model (DeltaAttention nodes with their function body).
        engine_path: where to write the serialized engine; never overwritten unless ``force``.
        min_seq_len, opt_seq_len, max_seq_len: the optimization profile of every dynamic dim that
            is not a batch dim (see :func:`profile_shapes`); the engine runs any length in range.
        precision: "model" (types as exported, a strongly typed network) or "fp32"/"fp16"/"bf16"
            (TensorRT's builder flags on a weakly typed network).
        batch_size: the value of dynamic dims named like "batch".
        dims: ``{dim name: (min, opt, max)}`` for dynamic dims that need another range.
        workspace_bytes: TensorRT's workspace pool limit (None: TensorRT's default).
        force: overwrite ``engine_path``.

    Raises:
        UnsupportedNodeError: a node the kernels cannot compute as the model asks (before TensorRT).
        ImportError: TensorRT is not installed.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise ValueError(f"onnx_path {str(onnx_path)!r} does not exist")
    if engine_path.exists() and not force:
        raise FileExistsError(f"{engine_path} exists; pass force=True to overwrite it")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if workspace_bytes is not None and (isinstance(workspace_bytes, bool) or not isinstance(workspace_bytes, int) or workspace_bytes < 1):
        raise ValueError(f"workspace_bytes must be a positive integer or None; got {workspace_bytes!r}")
    prepared = prepare_onnx(onnx.load(str(onnx_path)))
    profile = profile_shapes(
        prepared.model, min_seq_len=min_seq_len, opt_seq_len=opt_seq_len, max_seq_len=max_seq_len,
        batch_size=batch_size, dims=dims,
    )  # fmt: skip
    serialized = _build(prepared.model, profile, precision, workspace_bytes, str(onnx_path.parent))
    atomic_write_bytes(engine_path, serialized, force=force)
    logger.info("wrote %s: %d DeltaAttention node(s) as TensorRT plugins", engine_path, len(prepared.nodes))
    return EngineBuild(engine_path, prepared.nodes, profile, precision)


def load_network(onnx_path: str | Path, *, precision: str = "model") -> tuple[Any, Any, Any]:
    """``(builder, network, parser)`` of an exported model with its DeltaAttention nodes as the
    plugins (registered here): what a Polygraphy network script's ``load_network`` returns.

    Raises what :func:`build_engine` raises before TensorRT (unsupported nodes included).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    path = Path(onnx_path)
    prepared = prepare_onnx(onnx.load(str(path)))
    return _parse(prepared.model, precision, str(path.parent))


def _parse(model: onnx.ModelProto, precision: str, base_dir: str) -> tuple[Any, Any, Any]:
    trt = _tensorrt()
    from .plugin import register_plugins

    register_plugins()
    log = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(log)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision == "model" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(model.SerializeToString(), base_dir):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected the prepared model:\n{errors}")
    return builder, network, parser


def _build(model: onnx.ModelProto, profile: Mapping[str, tuple], precision: str, workspace: int | None, base_dir: str) -> bytes:
    trt = _tensorrt()
    builder, network, _parser = _parse(model, precision, base_dir)
    config = builder.create_builder_config()
    if precision in ("fp16", "bf16"):
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            raise ValueError(f"this TensorRT has no {precision.upper()} builder flag; export the model in {precision} and use precision='model'")
        config.set_flag(flag)
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    optimization = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        optimization.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see its log above)")
    return bytes(serialized)
