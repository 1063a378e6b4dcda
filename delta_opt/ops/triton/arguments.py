"""The kernels' arguments, by parameter name, from a launch plan (plain Python, no Triton import).

:func:`dense_kernel_args` / :func:`sparse_kernel_args` give the runtime arguments of one call and
:func:`constexprs` the compile-time ones; :func:`specialize` and :func:`compile_signature` say
how Triton's JIT specialises them, so that an ahead-of-time build compiles the same variants the
eager launcher would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .launch import KernelPlan, strides

__all__ = [
    "UNSPECIALIZED",
    "KernelBuffers",
    "accumulator_dtype",
    "compile_signature",
    "constexprs",
    "dense_kernel_args",
    "sparse_kernel_args",
    "specialize",
]


# Integer arguments that change with the sequence length: the kernels are compiled without
# specialising on their values (divisible by 16, equal to 1), so that a model meeting many
# lengths compiles each kernel once rather than once per combination.
UNSPECIALIZED = ("n_q", "n_k", "n_anchors", "anchor_blocks", "n_corrected", "causal_offset")


@dataclass(frozen=True)
class KernelBuffers:
    """The tensors one call passes to the kernels (any device, ``meta`` included).

    q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], out [B, Hq, Nq, Dv] (dtype of q);
    rules [Hq] int32 (``Correction.code`` of each query head); in the accumulator dtype: delta
    [B, Hq, Np / G, Dv] (``O_d - O_s`` for paper heads, ``O_r`` for taylor heads), scale [1]
    (``scale * log2(e)``), bias [B, Hq, Nk] (or None), and for plans with a taylor head
    mean_key [B, Hq, Np / G, D] and offset [B, Hq, Np / G] (None otherwise).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    delta: torch.Tensor
    scale: torch.Tensor
    rules: torch.Tensor
    bias: torch.Tensor | None = None
    mean_key: torch.Tensor | None = None
    offset: torch.Tensor | None = None


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for 16- and 32-bit inputs, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tensor_args(b: KernelBuffers) -> dict[str, Any]:
    # Absent optional buffers are never read (HAS_BIAS / TAYLOR are off): pass a valid pointer.
    bias = b.scale if b.bias is None else b.bias
    mean_key = b.scale if b.mean_key is None else b.mean_key
    offset = b.scale if b.offset is None else b.offset
    args: dict[str, Any] = dict(
        Q=b.q, K=b.k, V=b.v, Out=b.out, Delta=b.delta, Bias=bias, Scale=b.scale, Rules=b.rules,
        MeanKey=mean_key, Offset=offset,
    )  # fmt: skip
    for prefix, t in (("q", b.q), ("k", b.k), ("v", b.v), ("o", b.out), ("d", b.delta)):
        # An empty delta buffer (no anchors) still has strides; it is never dereferenced.
        for dim, st in zip("bhnd", strides(t)):
            args[f"stride_{prefix}{dim}"] = st
    args["stride_biasb"], args["stride_biash"] = (0, 0) if b.bias is None else b.bias.stride()[:2]
    for dim, st in zip("bhnd", (0, 0, 0, 0) if b.mean_key is None else strides(b.mean_key)):
        args[f"stride_m{dim}"] = st
    for dim, st in zip("bhn", (0, 0, 0) if b.offset is None else strides(b.offset)):
        args[f"stride_c{dim}"] = st
    return args


def dense_kernel_args(plan: KernelPlan, buffers: KernelBuffers) -> dict[str, Any]:
    """Runtime arguments of ``delta_dense_kernel`` by parameter name (constexprs apart)."""
    return dict(
        _tensor_args(buffers),
        q_heads=plan.q_heads, group=plan.group, n_q=plan.n_q, n_k=plan.n_k, n_anchors=plan.n_anchors,
        anchor_blocks=plan.anchor_blocks, n_corrected=plan.n_corrected, anchor_stride=plan.stride,
        causal_offset=plan.causal_offset, head_dim=plan.head_dim, value_dim=plan.value_dim,
        window=plan.window, sinks=plan.sinks,
    )  # fmt: skip


def sparse_kernel_args(plan: KernelPlan, buffers: KernelBuffers) -> dict[str, Any]:
    """Runtime arguments of ``delta_sparse_kernel`` by parameter name (constexprs apart)."""
    return dict(
        _tensor_args(buffers),
        q_heads=plan.q_heads, group=plan.group, n_k=plan.n_k, n_corrected=plan.n_corrected,
        anchor_stride=plan.stride, head_dim=plan.head_dim, value_dim=plan.value_dim,
        window=plan.window, sinks=plan.sinks,
    )  # fmt: skip


def constexprs(plan: KernelPlan, dtype: torch.dtype, *, has_bias: bool, interpret: bool) -> dict[str, Any]:
    """Compile-time parameters shared by both kernels (one compiled variant per distinct set)."""
    return dict(
        CAUSAL=plan.causal,
        HAS_BIAS=has_bias,
        # The long-range sweep and the mixing epilogue are compiled in only when a head needs them.
        TAYLOR=plan.has_taylor,
        # The interpreter's bf16 dot is wrong (and its fp16 dot slow): cast operands up there.
        UPCAST=interpret,
        # fp32 inputs get exact fp32 products, not TF32, to meet fp32 tolerances; the option is
        # ignored for 16-bit inputs.
        PRECISION="ieee" if dtype in (torch.float32, torch.float64) else "tf32",
        BLOCK_M=plan.blocks.block_m,
        BLOCK_N=plan.blocks.block_n,
        BLOCK_D=plan.block_d,
        BLOCK_DV=plan.block_dv,
    )


_TRITON_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64", torch.int32: "i32"}


def specialize(value: Any, *, by_value: bool = True) -> tuple[str, Any]:
    """How Triton's JIT specialises one runtime argument: its type and attribute.

    ``("*bf16", "D")`` for a 16-byte aligned tensor, ``("i32", "D")`` for an int divisible by 16,
    ``("constexpr", 1)`` for the int 1, ``("i64", ...)`` beyond 32 bits, ``("fp32", None)`` for a
    float. ``by_value=False`` (a ``do_not_specialize`` parameter) keeps only the type of an int.
    An ahead-of-time build must compile the same specialisations the JIT would pick.
    """
    if isinstance(value, torch.Tensor):
        aligned = value.device.type == "meta" or value.data_ptr() % 16 == 0
        return "*" + _TRITON_DTYPES[value.dtype], "D" if aligned else ""
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        kind = "i32" if -(2**31) <= value < 2**31 else ("u64" if value >= 2**63 else "i64")
        if not by_value:
            return kind, None
        if value == 1:
            return "constexpr", 1
        return kind, "D" if value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"cannot specialise a kernel argument of type {type(value).__name__}")


def compile_signature(
    arg_names: list[str], args: Mapping[str, Any], compile_time: Mapping[str, Any]
) -> tuple[dict[str, str], dict[str, Any], dict[tuple[int, ...], list]]:
    """``(signature, constexprs, attrs)`` for ``triton.compiler.ASTSource``, as the JIT would build them.

    ``arg_names`` is the kernel's parameter order, ``args`` the runtime values (tensors may be on
    the ``meta`` device), ``compile_time`` the constexprs.
    """
    signature: dict[str, str] = {}
    consts: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for index, name in enumerate(arg_names):
        if name in compile_time:
            signature[name], consts[name] = "constexpr", compile_time[name]
            continue
        kind, attr = specialize(args[name], by_value=name not in UNSPECIALIZED)
        signature[name] = kind
        if kind == "constexpr":
            consts[name] = attr
        elif attr == "D":
            attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, consts, attrs
