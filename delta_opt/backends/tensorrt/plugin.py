"""Registration of the two plugins with TensorRT's Python plugin API (``tensorrt.plugin``).

For each stage of :mod:`.stages` this registers, under ``delta_opt::<name>`` version 1:

- ``@trtp.register``: output shapes and types from :func:`.stages.output_shapes` (the dense
  stage's scratch -- anchor corrections, taylor mean keys and offsets -- in fp32);
- ``@trtp.autotune``: the I/O types the kernels take (:meth:`.stages.Stage.type_combination`);
- ``@trtp.aot_impl``: the Triton kernel compiled for the build GPU (:func:`.aot.compile_stage`),
  its PTX laid out in TensorRT's parameter order, the grid, block and shared memory, and the
  extra int32 arguments -- all as expressions of the input sizes that the engine evaluates at run
  time, so the engine runs without Python (``trtexec --loadEngine`` serves it).

The functions' signatures are built from :data:`.attributes.STAGE_ATTRIBUTES` (the node
contract's attributes), so a new attribute of the schema reaches the plugins; values the kernels
cannot serve fail the engine build with :class:`.attributes.UnsupportedNodeError`. The node's
``correction`` (rule codes, one or per query head) is such a field: it picks the compiled variant
(taylor or not) and the anchor blocks, while the kernels read each head's code from the ``rules``
input -- an ahead-of-time plugin cannot own a device buffer, so :mod:`.graph` feeds the codes as a
constant int32 tensor.

Importing this module does not import tensorrt; :func:`register_plugins` does. Nothing here
runs without TensorRT, which no machine of this project has: it is written against the
documented API (TensorRT >= 10.8) and everything it calls is tested without it.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Tuple, Union

from .attributes import STAGE_ATTRIBUTES, UnsupportedNodeError, unserved
from .stages import DENSE, STAGES, Stage, StageAttributes, StageDims, output_shapes
from .symbolic import Sym, SymInt

__all__ = ["REQUIREMENT", "register_plugins"]

REQUIREMENT = (
    "the TensorRT plugins need TensorRT >= 10.8 with its Python package (`pip install tensorrt`, the `trt` "
    "extra), whose tensorrt.plugin module provides aot_impl"
)
_registered = False


def _import_tensorrt() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise ImportError(REQUIREMENT) from e
    if not hasattr(trtp, "aot_impl"):
        raise ImportError(f"tensorrt {getattr(trt, '__version__', '?')} has no tensorrt.plugin.aot_impl; {REQUIREMENT}")
    return trt, trtp


def register_plugins() -> None:
    """Register ``delta_opt::DeltaAttentionDense`` and ``delta_opt::DeltaAttentionSparse`` (once)."""
    global _registered
    if _registered:
        return
    trt, trtp = _import_tensorrt()
    for stage in STAGES:
        _register(stage, trt, trtp)
    _registered = True


def _algebra(trtp: Any) -> dict[str, Any]:
    """:meth:`Sym.lower` operations onto TensorRT's symbolic integers."""

    def lhs(x: Any) -> Any:  # TensorRT's expressions take a plain int on the right only
        return trtp.ShapeExpr(x) if isinstance(x, int) else x

    def commutative(fn: Any) -> Any:  # keep the symbolic operand first: no constant built for it
        return lambda a, b: fn(b, a) if isinstance(a, int) else fn(a, b)

    return {
        "add": commutative(lambda a, b: a + b),
        "sub": lambda a, b: lhs(a) - b,
        "mul": commutative(lambda a, b: a * b),
        "floordiv": lambda a, b: lhs(a) // b,
        "cdiv": trtp.cdiv,
        "max": commutative(trtp.max),
        "min": commutative(trtp.min),
    }


def _lower(value: SymInt, leaves: Mapping[str, Any], trtp: Any) -> Any:
    return value if isinstance(value, int) else value.lower(leaves.__getitem__, _algebra(trtp))


def _constant(expr: Any) -> int | None:
    """The value of a constant TensorRT dimension expression, else None (also for the fake
    expressions TensorRT passes while it only asks for output types)."""
    if getattr(expr, "is_fake", False):
        return None
    raw = getattr(expr, "_expr", None)  # the IDimensionExpr: its own is_constant is the reliable one
    if raw is None:
        return None
    return int(raw.get_constant_value()) if raw.is_constant() else None


def _sizes(tensors: Mapping[str, Any], *, constants: bool) -> tuple[dict[str, tuple], dict[str, Any], dict[str, tuple[int, int]]]:
    """Symbolic shapes of the input descriptors: ``(shapes, leaves, ranges)``.

    Dim i of input ``x`` is the int it is when constant (and ``constants``), else ``Sym.var("x{i}")``
    with ``leaves["x{i}"]`` its TensorRT expression and ``ranges`` its optimization-profile bounds.
    """
    shapes, leaves, ranges = {}, {}, {}
    for name, desc in tensors.items():
        dims = []
        concrete = desc.shape if getattr(desc, "has_shape", False) else None
        for i, expr in enumerate(desc.shape_expr):
            value = _constant(expr) if constants else None
            if value is not None:
                dims.append(value)
                continue
            var = f"{name}{i}"
            dims.append(Sym.var(var))
            leaves[var] = expr
            if concrete is not None:
                if concrete.is_dynamic:
                    ranges[var] = (int(concrete.min[i]), int(concrete.max[i]))
                else:
                    ranges[var] = (int(concrete[i]),) * 2
        shapes[name] = tuple(dims)
    return shapes, leaves, ranges


def _describe(stage: Stage, args: Mapping[str, Any], trt: Any, trtp: Any) -> Any:
    if stage is not DENSE:
        return args["partial"].aliased()  # written in place
    shapes, leaves, _ = _sizes({n: args[n] for n in ("q", "k", "v")}, constants=False)
    q, k, v = shapes["q"], shapes["k"], shapes["v"]
    dims = StageDims(q[0], q[1], k[1], q[2], k[2], q[3], v[3])  # type: ignore[arg-type]
    attrs = StageAttributes.from_values({n: args[n] for n in STAGE_ATTRIBUTES})
    shape = output_shapes(DENSE, dims, attrs)
    if any(getattr(e, "is_fake", False) for e in args["q"].shape_expr):
        # TensorRT only asks for the output types here, with placeholder sizes: no arithmetic.
        shape = {name: (q[0], q[1], q[2], v[3]) for name in DENSE.outputs}
    dtypes = {name: trt.float32 for name in DENSE.outputs}  # the scratch between the plugins
    dtypes["out"] = args["q"].dtype
    return tuple(
        trtp.from_shape_expr(tuple(_lower(d, leaves, trtp) for d in shape[name]), dtype=dtypes[name])
        for name in DENSE.outputs
    )


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
    if dtype not in table:
        raise UnsupportedNodeError(f"the kernels take float32, float16 or bfloat16 q/k/v; got {dtype}")
    return table[dtype]


def _device_arch() -> int:
    """Compute capability x10 of the GPU TensorRT builds for (the current CUDA device)."""
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return 10 * major + minor
    import triton  # a CPU-only torch next to a CUDA driver: ask Triton's driver

    return int(triton.runtime.driver.active.get_current_target().arch)


def _aot(stage: Stage, args: Mapping[str, Any], trt: Any, trtp: Any) -> tuple:
    from .aot import compile_stage, driver_ptx_version, kernel_function, plan_stage
    from .signature import check_ranges

    values = {n: args[n] for n in STAGE_ATTRIBUTES}
    reasons = unserved(values)
    if reasons:
        raise UnsupportedNodeError(f"{stage.plugin}: " + "; ".join(f"{k}{v}" for k, v in reasons.items()))
    shapes, leaves, ranges = _sizes({n: args[n] for n in ("q", "k", "v", "bias", "rules")}, constants=True)
    dims = StageDims.from_shapes(shapes)
    rules = shapes["rules"]
    if len(rules) != 1 or (isinstance(rules[0], int) and isinstance(dims.q_heads, int) and rules[0] != dims.q_heads):
        raise UnsupportedNodeError(f"{stage.plugin}: rules must hold one int32 code per query head ({dims.q_heads}); got shape {rules}")
    attrs = StageAttributes.from_values(values)
    build = plan_stage(stage, dims, attrs, _torch_dtype(trt, args["q"].dtype), kernel_function(stage).arg_names)
    problems = check_ranges(build.layout, build.grid, ranges)
    if problems:
        raise UnsupportedNodeError(f"{stage.plugin} over the optimization profile: " + "; ".join(problems))
    arch = _device_arch()
    artifact = compile_stage(build, arch, ptx_version=driver_ptx_version(arch))

    launch = trtp.KernelLaunchParams()
    launch.grid_x, launch.grid_y, launch.grid_z = (_lower(g, leaves, trtp) for g in build.grid)
    launch.block_x = artifact.block[0]
    launch.shared_mem = artifact.shared_mem
    extra = build.layout.extra_values()
    extras = trtp.SymIntExprs(len(extra))
    for i, value in enumerate(extra):
        extras[i] = trtp.SymInt32(_lower(value, leaves, trtp))
    return artifact.kernel_name.encode(), artifact.ptx.encode(), launch, extras


def _register(stage: Stage, trt: Any, trtp: Any) -> None:
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    tensors = [inspect.Parameter(n, keyword, annotation=trtp.TensorDesc) for n in stage.inputs]
    attributes = [inspect.Parameter(n, keyword, annotation=t) for n, t in STAGE_ATTRIBUTES.items()]
    outputs_type = Tuple[tuple([trtp.TensorDesc] * len(stage.outputs))]  # type: ignore[misc]
    outputs = inspect.Parameter("outputs", keyword, annotation=outputs_type)
    returns = trtp.TensorDesc if len(stage.outputs) == 1 else outputs_type

    def signature_of(params: list, returns: Any) -> inspect.Signature:
        return inspect.Signature(params, return_annotation=returns)

    describe_sig = signature_of(tensors + attributes, returns)
    autotune_sig = signature_of(tensors + [outputs], list[trtp.AutoTuneCombination])
    aot_returns = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]
    aot_sig = signature_of(tensors + attributes + [outputs, inspect.Parameter("tactic", keyword, annotation=int)], aot_returns)

    def describe(*a: Any, **kw: Any) -> Any:
        return _describe(stage, describe_sig.bind(*a, **kw).arguments, trt, trtp)

    def autotune(*a: Any, **kw: Any) -> Any:
        return [trtp.AutoTuneCombination(stage.type_combination())]

    def aot(*a: Any, **kw: Any) -> Any:
        return _aot(stage, aot_sig.bind(*a, **kw).arguments, trt, trtp)

    for fn, sig in ((describe, describe_sig), (autotune, autotune_sig), (aot, aot_sig)):
        fn.__signature__ = sig  # type: ignore[attr-defined]
        fn.__name__ = f"{stage.plugin}_{fn.__name__}"
    trtp.register(stage.plugin_id)(describe)
    trtp.autotune(stage.plugin_id)(autotune)
    trtp.aot_impl(stage.plugin_id)(aot)
