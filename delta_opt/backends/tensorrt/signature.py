"""The compiled kernel's parameters as TensorRT passes them: types, specialisation, order.

A TensorRT ahead-of-time plugin launches its kernel with the parameters

    (input pointers..., extra int32 arguments..., output pointers..., [Triton's hidden scratch])

— inputs and outputs in the plugin's I/O order, the hidden trailing pointers padded with null
by TensorRT. The Triton kernels declare ``(Q, K, V, Out, Delta, Bias, Scale, Rules, MeanKey,
Offset, ints...)``.
:func:`kernel_layout` decides, from the plan's symbolic arguments (the eager launcher's own
argument builders, :mod:`delta_opt.ops.triton.arguments`):

- which parameters are compile-time (the JIT's rule: the int 1 becomes a constant) and which
  carry Triton's divisible-by-16 hint (only where it holds for every shape of the engine);
- the ``ASTSource`` signature to compile (:meth:`KernelLayout.compile_signature`);
- ``order``: for each TensorRT slot, the index of the compiled parameter that must sit there
  (None: a TensorRT pointer the kernel does not read), which :mod:`.ptx` applies to the PTX.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ...ops.triton.arguments import UNSPECIALIZED, specialize
from .attributes import UnsupportedNodeError
from .stages import Stage, SymTensor
from .symbolic import SymInt, interval, multiple_of

__all__ = ["INT32_MAX", "KernelLayout", "Param", "check_ranges", "kernel_layout"]

INT32_MAX = 2**31 - 1
_GRID_Y_MAX = 65535
_TRITON_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64", "int32": "i32"}


@dataclass(frozen=True)
class Param:
    """One runtime parameter of the compiled kernel."""

    name: str
    kind: str  # "*fp16"..., "i32"
    divisible_by_16: bool
    value: Any  # a SymTensor for pointers, an int or Sym for scalars

    @property
    def is_pointer(self) -> bool:
        return self.kind.startswith("*")


@dataclass(frozen=True)
class KernelLayout:
    """The compiled kernel's runtime parameters and where TensorRT puts each of them."""

    arg_names: tuple[str, ...]  # every parameter of the @triton.jit function, in order
    params: tuple[Param, ...]  # the runtime (non-constexpr) ones: the PTX's parameters, in order
    constants: Mapping[str, Any]  # constexprs, including ints specialised to 1
    order: tuple[int | None, ...]  # per TensorRT slot: index into params (None: unused pointer)
    extras: tuple[str, ...]  # the scalar parameters TensorRT passes, in slot order

    def compile_signature(self) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int, ...], list]]:
        """``(signature, constexprs, attrs)`` for ``triton.compiler.ASTSource``."""
        runtime = {p.name: p for p in self.params}
        signature: dict[str, str] = {}
        attrs: dict[tuple[int, ...], list] = {}
        for index, name in enumerate(self.arg_names):
            if name in self.constants:
                signature[name] = "constexpr"
                continue
            param = runtime[name]
            signature[name] = param.kind
            if param.divisible_by_16:
                attrs[(index,)] = [["tt.divisibility", 16]]
        return signature, dict(self.constants), attrs

    def extra_values(self) -> tuple[SymInt, ...]:
        """The extra int32 arguments (symbolic), in the order TensorRT passes them."""
        runtime = {p.name: p for p in self.params}
        return tuple(runtime[name].value for name in self.extras)

    def slot_kinds(self) -> tuple[str, ...]:
        """Per TensorRT slot: ``"ptr"`` (8 bytes) or ``"i32"`` (4 bytes)."""
        return tuple("ptr" if i is None or self.params[i].is_pointer else "i32" for i in self.order)

    def bind(self, slots: Sequence[Any]) -> dict[str, Any]:
        """Kernel arguments by parameter name, from values in TensorRT's slot order: what the
        kernel whose PTX was reordered by ``order`` reads when launched with ``slots``."""
        if len(slots) != len(self.order):
            raise ValueError(f"{len(self.order)} TensorRT slots expected; got {len(slots)}")
        return {self.params[i].name: value for i, value in zip(self.order, slots) if i is not None}


def _scalar_param(name: str, value: SymInt) -> tuple[str, Any] | Param:
    """A scalar's compiled form: ``("constexpr", v)`` or a :class:`Param`."""
    if isinstance(value, int):
        kind, attr = specialize(value, by_value=name not in UNSPECIALIZED)
        if kind == "constexpr":
            return kind, attr
        if kind != "i32":
            raise UnsupportedNodeError(f"kernel argument {name}={value} does not fit TensorRT's int32 plugin arguments")
        return Param(name, "i32", attr == "D", value)
    # Only known when the engine runs: never specialised on its value; divisible by 16 only if
    # every value it can take is (e.g. N * 64).
    return Param(name, "i32", multiple_of(value) % 16 == 0, value)


def kernel_layout(
    stage: Stage, arg_names: Sequence[str], args: Mapping[str, Any], compile_time: Mapping[str, Any]
) -> KernelLayout:
    """The layout of ``stage``'s kernel for the runtime ``args`` (``dense_kernel_args`` /
    ``sparse_kernel_args`` of a symbolic plan) and the constexprs ``compile_time``.

    Pointers are marked 16-byte aligned: TensorRT requires 256-byte aligned I/O buffers and
    allocates its own tensors at least as aligned.
    """
    constants: dict[str, Any] = {}
    params: list[Param] = []
    for name in arg_names:
        if name in compile_time:
            constants[name] = compile_time[name]
            continue
        value = args[name]
        if isinstance(value, SymTensor):
            dtype = _TRITON_DTYPES[str(value.dtype).removeprefix("torch.")]
            params.append(Param(name, "*" + dtype, True, value))
            continue
        compiled = _scalar_param(name, value)
        if isinstance(compiled, Param):
            params.append(compiled)
        else:
            constants[name] = compiled[1]

    index = {p.name: i for i, p in enumerate(params)}
    pointer_for = {tensor: param for param, tensor in stage.binding.items()}
    unknown = set(stage.binding) - set(index)
    if unknown:
        raise ValueError(f"{stage.kernel} has no pointer parameter(s) {sorted(unknown)}")
    extras = tuple(p.name for p in params if not p.is_pointer)
    order: list[int | None] = [index[pointer_for[t]] if t in pointer_for else None for t in stage.inputs]
    order += [index[name] for name in extras]
    order += [index[pointer_for[t]] for t in stage.outputs]
    placed = sorted(i for i in order if i is not None)
    if placed != list(range(len(params))):
        missing = sorted(set(range(len(params))) - set(placed))
        raise ValueError(f"{stage.kernel}: parameters {[params[i].name for i in missing]} have no TensorRT slot")
    return KernelLayout(tuple(arg_names), tuple(params), constants, tuple(order), extras)


def check_ranges(
    layout: KernelLayout, grid: Sequence[SymInt], ranges: Mapping[str, tuple[int, int]]
) -> list[str]:
    """Why the kernel cannot run for sizes in ``ranges`` (name -> (min, max)); empty if it can.

    Every extra argument must fit int32 (TensorRT's only scalar type for these plugins), the grid's
    x dimension must fit int32 and its y dimension (batch x heads) 65535.
    """
    problems = []
    for name, value in zip(layout.extras, layout.extra_values()):
        lo, hi = interval(value, ranges)
        if lo < -(2**31) or hi > INT32_MAX:
            problems.append(f"kernel argument {name} reaches {hi if hi > INT32_MAX else lo}, outside int32")
    limits = (INT32_MAX, _GRID_Y_MAX, _GRID_Y_MAX)
    for axis, (value, limit) in enumerate(zip(grid, limits)):
        hi = interval(value, ranges)[1]
        if hi > limit:
            problems.append(f"grid dimension {'xyz'[axis]} reaches {hi}, over CUDA's limit of {limit}")
    return problems
