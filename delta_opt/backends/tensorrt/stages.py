"""The two TensorRT plugins of one DeltaAttention node, and their launch logic over symbolic sizes.

TensorRT's ahead-of-time Python plugins (``tensorrt.plugin.aot_impl``) launch exactly **one**
kernel per plugin, with no workspace and with int32 scalar arguments only. Delta Attention runs
two kernels in order with an fp32 scratch between them (:mod:`delta_opt.ops.triton.kernels`), so
the TensorRT lowering of one node is two plugins in namespace ``delta_opt``:

- ``DeltaAttentionDense`` (q, k, v, bias, scale) -> (out, delta): the dense rows into ``out`` and
  the anchors' corrections into ``delta`` [B, Hq, A, Dv] (fp32; the scratch becomes a tensor
  between the plugins, sized by :func:`delta_rows`);
- ``DeltaAttentionSparse`` (q, k, v, bias, scale, delta, partial) -> out, with ``out`` aliased to
  ``partial`` (the first plugin's ``out``): the sparse rows plus their anchor's correction,
  written in place, each row exactly once as in the eager launcher.

``bias`` is the node's additive mask as the kernels read it (fp32, log2 units, [Bm, Hm, 1, Nk])
and ``scale`` the one-element fp32 ``scale * log2(e)``; :mod:`.graph` builds both with standard
ONNX ops in front of the plugins. Everything here is plain Python over :class:`~.symbolic.Sym`:
with int sizes it returns exactly what :func:`delta_opt.ops.triton.launch.plan_launch` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ...ops.triton.arguments import KernelBuffers, accumulator_dtype
from ...ops.triton.launch import MAX_HEAD_DIM, KernelPlan, block_config, padded_dim
from .attributes import UnsupportedNodeError
from .symbolic import SymInt, cdiv, smax, smin

__all__ = [
    "DENSE",
    "NAMESPACE",
    "SPARSE",
    "STAGES",
    "Stage",
    "StageAttributes",
    "StageDims",
    "SymTensor",
    "delta_rows",
    "grid",
    "kernel_buffers",
    "output_shapes",
    "symbolic_plan",
]

NAMESPACE = "delta_opt"
VERSION = "1"


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: there are two stages
class Stage:
    """One plugin: its I/O (in TensorRT's order) and which kernel pointer reads which tensor."""

    name: str
    plugin: str
    kernel: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    binding: Mapping[str, str]  # kernel pointer parameter -> plugin tensor
    aliases: Mapping[str, str]  # output -> the input it is written into in place

    @property
    def plugin_id(self) -> str:
        return f"{NAMESPACE}::{self.plugin}"

    def type_combination(self) -> str:
        """``tensorrt.plugin.AutoTuneCombination`` types: q, k, v, out and partial share the node's
        element type (FP32, FP16 or BF16 together); bias, scale and delta are FP32."""
        fp32_only = {"bias", "scale", "delta"}
        return ", ".join("FP32" if t in fp32_only else "FP32|FP16|BF16" for t in self.inputs + self.outputs)


_POINTERS = {"Q": "q", "K": "k", "V": "v", "Out": "out", "Delta": "delta", "Bias": "bias", "Scale": "scale"}

DENSE = Stage(
    name="dense",
    plugin="DeltaAttentionDense",
    kernel="delta_dense_kernel",
    inputs=("q", "k", "v", "bias", "scale"),
    outputs=("out", "delta"),
    binding=_POINTERS,
    aliases={},
)
SPARSE = Stage(
    name="sparse",
    plugin="DeltaAttentionSparse",
    kernel="delta_sparse_kernel",
    inputs=("q", "k", "v", "bias", "scale", "delta", "partial"),
    outputs=("out",),
    binding=_POINTERS,
    aliases={"out": "partial"},
)
STAGES = (DENSE, SPARSE)


@dataclass(frozen=True)
class StageAttributes:
    """The attribute values the kernels read (validated by :func:`.attributes.unserved` first)."""

    causal: bool
    window: int
    sinks: int
    stride: int
    tail: int
    scale: float
    has_bias: bool

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "StageAttributes":
        return cls(
            causal=bool(values["causal"]), window=int(values["window"]), sinks=int(values["sinks"]),
            stride=int(values["stride"]), tail=int(values["tail"]), scale=float(values["scale"]),
            has_bias=bool(values["has_bias"]),
        )  # fmt: skip

    @property
    def qk_scale_log2(self) -> float:
        """The value of the ``scale`` input: the kernels exponentiate with exp2."""
        return self.scale * math.log2(math.e)


@dataclass(frozen=True)
class StageDims:
    """Sizes of one call: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], bias [Bm, Hm, 1, Nk].

    Any size may be symbolic except the head dims D and Dv, which fix the compiled tiles.
    """

    batch: SymInt
    q_heads: SymInt
    kv_heads: SymInt
    q_len: SymInt
    kv_len: SymInt
    head_dim: int
    value_dim: int
    mask_batch: SymInt = 1
    mask_heads: SymInt = 1

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[SymInt]]) -> "StageDims":
        """Dims from the plugin's input shapes (``q``, ``k``, ``v``, ``bias``); raises
        :class:`UnsupportedNodeError` for shapes the compiled kernels cannot take."""
        q, k, v, bias = (tuple(shapes[name]) for name in ("q", "k", "v", "bias"))
        for name, shape in (("q", q), ("k", k), ("v", v), ("bias", bias)):
            if len(shape) != 4:
                raise UnsupportedNodeError(f"{name} must have rank 4; got {len(shape)} dims")
        for name, dim in (("head dim D (dim 3 of q)", q[3]), ("value dim Dv (dim 3 of v)", v[3])):
            if not isinstance(dim, int):
                raise UnsupportedNodeError(f"the {name} is dynamic; the kernels are compiled for a fixed head dim")
            if not 1 <= dim <= MAX_HEAD_DIM:
                raise UnsupportedNodeError(f"the {name} is {dim}; the kernels take 1..{MAX_HEAD_DIM}")
        if bias[2] != 1:
            raise UnsupportedNodeError(
                f"the mask varies along the query dim (dim 2 is {bias[2]!r}, not the constant 1): the kernels "
                "take key masks broadcastable to [B, Hq, 1, Nk] (e.g. key padding [B, 1, 1, Nk]) only"
            )
        return cls(
            batch=q[0], q_heads=q[1], kv_heads=k[1], q_len=q[2], kv_len=k[2], head_dim=q[3], value_dim=v[3],
            mask_batch=bias[0], mask_heads=bias[1],
        )  # fmt: skip


class SymTensor:
    """A contiguous tensor whose sizes may be symbolic: what the kernels' argument builders read
    (``shape``, ``stride()``, ``dtype``) from a TensorRT buffer."""

    def __init__(self, shape: Sequence[SymInt], dtype: torch.dtype, strides: Sequence[SymInt] | None = None) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        if strides is None:
            strides, step = [], 1
            for size in reversed(self.shape):
                strides.insert(0, step)
                step = step * size
        self._strides = tuple(strides)

    def stride(self) -> tuple[SymInt, ...]:
        return self._strides

    def __repr__(self) -> str:
        return f"SymTensor(shape={self.shape}, dtype={self.dtype})"


def _indicator_positive(x: SymInt) -> SymInt:
    """1 if ``x > 0`` else 0, for integer x."""
    return smin(1, smax(0, x))


def symbolic_plan(dims: StageDims, attrs: StageAttributes, dtype: torch.dtype) -> KernelPlan:
    """:func:`~delta_opt.ops.triton.launch.plan_launch` over symbolic sizes.

    The row split's branches become arithmetic (TensorRT evaluates the result at run time):
    ``Np = [Nq == Nk] * [W < Nq] * max(0, floor((Nq - T) / G) * G)`` (0 when G = 1); the call is
    all dense exactly when ``Np = 0``.
    """
    n_q, n_k, stride = dims.q_len, dims.kv_len, attrs.stride
    if stride == 1:  # every row is its own anchor
        corrected: SymInt = 0
    else:
        rows = smax(0, (n_q - attrs.tail) // stride * stride)
        # [Nq == Nk]; the outer max(0, .) changes no value but keeps interval bounds tight.
        same_length = 1 - _indicator_positive(smax(n_q - n_k, n_k - n_q))
        corrected = rows * same_length * _indicator_positive(n_q - attrs.window)
    anchors = corrected // stride
    blocks = block_config(dims.head_dim, dims.value_dim, dtype)
    return KernelPlan(
        batch=dims.batch, q_heads=dims.q_heads, kv_heads=dims.kv_heads, n_q=n_q, n_k=n_k,  # type: ignore[arg-type]
        head_dim=dims.head_dim, value_dim=dims.value_dim, causal=attrs.causal, window=attrs.window,
        sinks=attrs.sinks, stride=stride, scale=attrs.scale,
        all_dense=1 - smin(1, corrected),  # type: ignore[arg-type]
        n_corrected=corrected, n_anchors=anchors, n_dense_rows=n_q - corrected + anchors,  # type: ignore[arg-type]
        causal_offset=n_k - n_q,  # type: ignore[arg-type]
        blocks=blocks, block_d=padded_dim(dims.head_dim), block_dv=padded_dim(dims.value_dim),
    )  # fmt: skip


def delta_rows(n_q: SymInt, attrs: StageAttributes) -> SymInt:
    """Rows of the ``delta`` tensor: an upper bound of the anchors, ``max(1, floor((Nq - T) / G))``.

    It holds every anchor whenever the call has any (the plan's ``Np / G``), and one unused row
    otherwise (TensorRT then never sees an empty tensor). G = 1 has no anchors: one row.
    """
    if attrs.stride == 1:
        return 1
    return smax(1, (n_q - attrs.tail) // attrs.stride)


def output_shapes(stage: Stage, dims: StageDims, attrs: StageAttributes) -> dict[str, tuple[SymInt, ...]]:
    """The plugin's output shapes as expressions of its input sizes."""
    out = (dims.batch, dims.q_heads, dims.q_len, dims.value_dim)
    if stage is DENSE:
        return {"out": out, "delta": (dims.batch, dims.q_heads, delta_rows(dims.q_len, attrs), dims.value_dim)}
    return {"out": out}


def kernel_buffers(dims: StageDims, attrs: StageAttributes, dtype: torch.dtype) -> KernelBuffers:
    """The kernels' tensors as TensorRT hands them over (contiguous, symbolic sizes).

    The bias [Bm, Hm, 1, Nk] is read as [B, Hq, Nk] with stride 0 along a broadcast dim; whether a
    dim broadcasts may itself be known only at run time (``Bm`` may be the dynamic batch), so its
    stride is ``[Bm > 1] * Hm * Nk``.
    """
    acc = accumulator_dtype(dtype)
    b, hq, hkv, n_q, n_k = dims.batch, dims.q_heads, dims.kv_heads, dims.q_len, dims.kv_len
    bias = None
    if attrs.has_bias:
        step_b = _indicator_positive(dims.mask_batch - 1) * dims.mask_heads * n_k
        step_h = _indicator_positive(dims.mask_heads - 1) * n_k
        bias = SymTensor((b, hq, n_k), acc, strides=(step_b, step_h, 1))
    return KernelBuffers(
        q=SymTensor((b, hq, n_q, dims.head_dim), dtype),  # type: ignore[arg-type]
        k=SymTensor((b, hkv, n_k, dims.head_dim), dtype),  # type: ignore[arg-type]
        v=SymTensor((b, hkv, n_k, dims.value_dim), dtype),  # type: ignore[arg-type]
        out=SymTensor((b, hq, n_q, dims.value_dim), dtype),  # type: ignore[arg-type]
        delta=SymTensor((b, hq, delta_rows(n_q, attrs), dims.value_dim), acc),  # type: ignore[arg-type]
        scale=SymTensor((1,), acc),  # type: ignore[arg-type]
        bias=bias,  # type: ignore[arg-type]
    )


def grid(stage: Stage, plan: KernelPlan) -> tuple[SymInt, SymInt, SymInt]:
    """The launch grid of a stage's kernel.

    As the plan's ``dense_grid`` / ``sparse_grid``, except that a stage with no rows still gets
    one program per (batch, head): TensorRT launches the kernel for every shape, and a grid
    dimension of 0 is not a valid launch. The extra program's loads and stores are masked off
    (``rows < n_rows`` / ``rows < Np``), so it writes nothing.
    """
    rows = plan.n_dense_rows if stage is DENSE else plan.n_corrected
    return smax(1, cdiv(rows, plan.blocks.block_m)), plan.batch * plan.q_heads, 1
