"""The two TensorRT plugins of one DeltaAttention node, and their launch logic over symbolic sizes.

TensorRT's ahead-of-time Python plugins (``tensorrt.plugin.aot_impl``) launch exactly **one**
kernel per plugin, with no workspace and with int32 scalar arguments only. Delta Attention runs
two kernels in order with fp32 scratch between them (:mod:`delta_opt.ops.triton.kernels`), so
the TensorRT lowering of one node is two plugins in namespace ``delta_opt``:

- ``DeltaAttentionDense`` (q, k, v, bias, scale, rules) -> (out, delta, mean_key, offset): the
  dense rows into ``out`` and, per the head's correction rule, the anchors' ``O_d - O_s``
  (paper) or long-range output (taylor) into ``delta`` [B, Hq, A, Dv], and the taylor heads'
  mean keys [B, Hq, A, D] and offsets [B, Hq, A] (all fp32; the scratch becomes tensors between
  the plugins, ``A`` from :func:`delta_rows`). Without a taylor head the last two are one-element
  placeholders the kernels never touch (a plugin's I/O list is fixed at registration);
- ``DeltaAttentionSparse`` (q, k, v, bias, scale, rules, delta, mean_key, offset, partial) -> out,
  with ``out`` aliased to ``partial`` (the first plugin's ``out``): the sparse rows corrected by
  their head's rule, written in place, each row exactly once as in the eager launcher.

``bias`` is the node's additive mask as the kernels read it (fp32, log2 units, [Bm, Hm, 1, Nk]),
``scale`` the one-element fp32 ``scale * log2(e)`` and ``rules`` the int32 rule code of every
query head [Hq] (``Correction.code``). The rules are static per node, and an ahead-of-time plugin
owns no device memory, so they travel as a constant input; :mod:`.graph` builds all three with
standard ONNX ops in front of the plugins. Which rules a node uses is also a plugin attribute
(``correction``): it decides the compiled variant (the taylor sweep is compiled in only when a
head needs it) and the anchor blocks (none when every head is ``none``). Everything here is plain Python over :class:`~.symbolic.Sym`:
with int sizes it returns exactly what :func:`delta_opt.ops.triton.launch.plan_launch` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ...ops.triton.arguments import KernelBuffers, accumulator_dtype
from ...ops.triton.launch import MAX_HEAD_DIM, KernelPlan, block_config, padded_dim
from ...plan import Correction
from .attributes import UnsupportedNodeError, node_corrections
from .symbolic import SymInt, cdiv, smax, smin

__all__ = [
    "DENSE",
    "NAMESPACE",
    "SPARSE",
    "STAGES",
    "Stage",
    "StageAttributes",
    "StageDims",
    "StagePlan",
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
        element type (FP32, FP16 or BF16 together); rules are INT32; the rest FP32."""
        kinds = {"rules": "INT32", **{t: "FP32" for t in ("bias", "scale", "delta", "mean_key", "offset")}}
        return ", ".join(kinds.get(t, "FP32|FP16|BF16") for t in self.inputs + self.outputs)


_POINTERS = {
    "Q": "q", "K": "k", "V": "v", "Out": "out", "Delta": "delta", "Bias": "bias", "Scale": "scale",
    "Rules": "rules", "MeanKey": "mean_key", "Offset": "offset",
}  # fmt: skip
_SCRATCH = ("delta", "mean_key", "offset")  # fp32, written by the dense stage, read by the sparse one

DENSE = Stage(
    name="dense",
    plugin="DeltaAttentionDense",
    kernel="delta_dense_kernel",
    inputs=("q", "k", "v", "bias", "scale", "rules"),
    outputs=("out",) + _SCRATCH,
    binding=_POINTERS,
    aliases={},
)
SPARSE = Stage(
    name="sparse",
    plugin="DeltaAttentionSparse",
    kernel="delta_sparse_kernel",
    inputs=("q", "k", "v", "bias", "scale", "rules") + _SCRATCH + ("partial",),
    outputs=("out",),
    binding=_POINTERS,
    aliases={"out": "partial"},
)
STAGES = (DENSE, SPARSE)


@dataclass(frozen=True)
class StageAttributes:
    """The attribute values the kernels read (validated by :func:`.attributes.unserved` first).

    ``corrections`` is the node's ``correction``: one rule for every query head, or one per head.
    """

    causal: bool
    window: int
    sinks: int
    stride: int
    tail: int
    scale: float
    has_bias: bool
    corrections: tuple[Correction, ...] = (Correction.PAPER,)

    def __post_init__(self) -> None:
        if isinstance(self.corrections, (str, Correction)) or not self.corrections:
            raise ValueError(f"corrections must be a non-empty sequence of rules; got {self.corrections!r}")
        object.__setattr__(self, "corrections", tuple(Correction.parse(c) for c in self.corrections))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "StageAttributes":
        """From the plugin's fields; a missing ``correction`` is the paper's rule (nodes older
        than the field)."""
        return cls(
            causal=bool(values["causal"]), window=int(values["window"]), sinks=int(values["sinks"]),
            stride=int(values["stride"]), tail=int(values["tail"]), scale=float(values["scale"]),
            has_bias=bool(values["has_bias"]), corrections=node_corrections(values.get("correction", [0])),
        )  # fmt: skip

    @property
    def has_taylor(self) -> bool:
        """Whether a head uses ``taylor``: compiles the long-range sweep and sizes its buffers."""
        return Correction.TAYLOR in self.corrections

    def head_rules(self, q_heads: SymInt) -> tuple[Correction, ...]:
        """One rule per query head: the node's one rule repeated, or its per-head list checked
        against ``q_heads``. With a symbolic head count a single rule stays one entry (only which
        rules occur matters to the plan); a per-head list needs the count known."""
        rules = self.corrections
        if isinstance(q_heads, int):
            if len(rules) == 1:
                return rules * q_heads
            if len(rules) != q_heads:
                raise UnsupportedNodeError(
                    f"correction names {len(rules)} rules but q has {q_heads} query heads (one, or one per head, expected)"
                )
            return rules
        if len(rules) != 1:
            raise UnsupportedNodeError(
                "correction names one rule per query head, but the query head count (dim 1 of q) is dynamic"
            )
        return rules

    def rule_codes(self, q_heads: int) -> tuple[int, ...]:
        """The ``rules`` input: the int32 code of every query head."""
        return tuple(rule.code for rule in self.head_rules(q_heads))

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


@dataclass(frozen=True)
class StagePlan(KernelPlan):
    """A :class:`KernelPlan` whose sizes may be symbolic.

    Its fields are what :func:`~delta_opt.ops.triton.launch.plan_launch` computes; ``all_dense``
    is an integer 0/1 expression. ``has_taylor`` follows the node's rules only: one compiled
    variant serves every shape of an engine, and a taylor variant launched on an all-dense call
    computes the same result (no anchor block, no sparse row), where the eager launcher would
    compile the plain variant for that one shape.
    """

    @property
    def has_taylor(self) -> bool:
        return Correction.TAYLOR in self.corrections


def symbolic_plan(dims: StageDims, attrs: StageAttributes, dtype: torch.dtype) -> StagePlan:
    """:func:`~delta_opt.ops.triton.launch.plan_launch` over symbolic sizes.

    The row split's branches become arithmetic (TensorRT evaluates the result at run time):
    ``Np = [Nq == Nk] * [W < Nq] * max(0, floor((Nq - T) / G) * G)`` (0 when G = 1 and no head
    is ``none``: then every row is its own anchor); the call is all dense exactly when ``Np = 0``.
    Anchor blocks are launched only when some head reads its anchors (not every head ``none``).
    """
    rules = attrs.head_rules(dims.q_heads)
    n_q, n_k, stride = dims.q_len, dims.kv_len, attrs.stride
    if stride == 1 and Correction.NONE not in rules:  # every row is its own anchor
        corrected: SymInt = 0
    else:
        rows = smax(0, (n_q - attrs.tail) // stride * stride)
        # [Nq == Nk]; the outer max(0, .) changes no value but keeps interval bounds tight.
        same_length = 1 - _indicator_positive(smax(n_q - n_k, n_k - n_q))
        corrected = rows * same_length * _indicator_positive(n_q - attrs.window)
    anchors = corrected // stride
    blocks = block_config(dims.head_dim, dims.value_dim, dtype)
    uses_anchors = any(rule is not Correction.NONE for rule in rules)
    return StagePlan(
        batch=dims.batch, q_heads=dims.q_heads, kv_heads=dims.kv_heads, n_q=n_q, n_k=n_k,  # type: ignore[arg-type]
        head_dim=dims.head_dim, value_dim=dims.value_dim, causal=attrs.causal, window=attrs.window,
        sinks=attrs.sinks, stride=stride, scale=attrs.scale, corrections=rules,
        all_dense=1 - smin(1, corrected),  # type: ignore[arg-type]
        n_corrected=corrected, n_anchors=anchors,  # type: ignore[arg-type]
        anchor_blocks=cdiv(anchors, blocks.block_m) if uses_anchors else 0,  # type: ignore[arg-type]
        n_dense_rows=n_q - corrected + anchors,  # type: ignore[arg-type]
        causal_offset=n_k - n_q,  # type: ignore[arg-type]
        blocks=blocks, block_d=padded_dim(dims.head_dim), block_dv=padded_dim(dims.value_dim),
    )  # fmt: skip


def delta_rows(n_q: SymInt, attrs: StageAttributes) -> SymInt:
    """Rows of the anchor buffers: an upper bound of the anchors, ``max(1, floor((Nq - T) / G))``.

    It holds every anchor whenever the call has any (the plan's ``Np / G``), and one unused row
    otherwise (TensorRT then never sees an empty tensor). G = 1 without a ``none`` head has no
    anchors: one row.
    """
    if attrs.stride == 1 and Correction.NONE not in attrs.corrections:
        return 1
    return smax(1, (n_q - attrs.tail) // attrs.stride)


def output_shapes(stage: Stage, dims: StageDims, attrs: StageAttributes) -> dict[str, tuple[SymInt, ...]]:
    """The plugin's output shapes as expressions of its input sizes.

    The taylor buffers are [B, Hq, A, D] and [B, Hq, A] when a head uses taylor, else one element.
    """
    out = (dims.batch, dims.q_heads, dims.q_len, dims.value_dim)
    if stage is not DENSE:
        return {"out": out}
    anchors = (dims.batch, dims.q_heads, delta_rows(dims.q_len, attrs))
    taylor = attrs.has_taylor
    return {
        "out": out,
        "delta": anchors + (dims.value_dim,),
        "mean_key": anchors + (dims.head_dim,) if taylor else (1,),
        "offset": anchors if taylor else (1,),
    }


def kernel_buffers(dims: StageDims, attrs: StageAttributes, dtype: torch.dtype) -> KernelBuffers:
    """The kernels' tensors as TensorRT hands them over (contiguous, symbolic sizes).

    The bias [Bm, Hm, 1, Nk] is read as [B, Hq, Nk] with stride 0 along a broadcast dim; whether a
    dim broadcasts may itself be known only at run time (``Bm`` may be the dynamic batch), so its
    stride is ``[Bm > 1] * Hm * Nk``.
    """
    acc = accumulator_dtype(dtype)
    b, hq, hkv, n_q, n_k = dims.batch, dims.q_heads, dims.kv_heads, dims.q_len, dims.kv_len
    anchors = delta_rows(n_q, attrs)
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
        delta=SymTensor((b, hq, anchors, dims.value_dim), acc),  # type: ignore[arg-type]
        scale=SymTensor((1,), acc),  # type: ignore[arg-type]
        rules=SymTensor((hq,), torch.int32),  # type: ignore[arg-type]
        bias=bias,  # type: ignore[arg-type]
        # Without a taylor head the kernels get the scale's pointer and zero strides for these,
        # as from the eager launcher; the plugin's placeholder tensors are never touched.
        mean_key=SymTensor((b, hq, anchors, dims.head_dim), acc) if attrs.has_taylor else None,  # type: ignore[arg-type]
        offset=SymTensor((b, hq, anchors), acc) if attrs.has_taylor else None,  # type: ignore[arg-type]
    )


def grid(stage: Stage, plan: KernelPlan) -> tuple[SymInt, SymInt, SymInt]:
    """The launch grid of a stage's kernel.

    As the plan's ``dense_grid`` (anchor blocks, then tail blocks) / ``sparse_grid``, except that
    a stage with no rows still gets one program per (batch, head): TensorRT launches the kernel
    for every shape, and a grid dimension of 0 is not a valid launch. The extra program's loads
    and stores are masked off (a tail block past ``Nq`` / ``rows < Np``), so it writes nothing.
    """
    if stage is DENSE:
        blocks = plan.anchor_blocks + cdiv(plan.n_q - plan.n_corrected, plan.blocks.block_m)
    else:
        blocks = cdiv(plan.n_corrected, plan.blocks.block_m)
    return smax(1, blocks), plan.batch * plan.q_heads, 1
