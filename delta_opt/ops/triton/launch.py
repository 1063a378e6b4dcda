"""How to launch the Triton kernels, decided in plain Python (no Triton import).

Everything here is a pure function of shapes, dtypes and parameters: which rows are dense, the
grids, block sizes and warps, the padded head dims, and whether the kernels can take the inputs
at all (:func:`unsupported_reason`). The eager launcher (:mod:`.forward`) and an ahead-of-time
build of the same kernels share these functions; :mod:`.arguments` turns a plan into the
kernels' argument lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from ...plan import Correction
from ..checks import AttentionShape, num_corrected_rows

__all__ = [
    "MAX_HEAD_DIM",
    "BlockConfig",
    "KernelPlan",
    "block_config",
    "cdiv",
    "key_mask_bias",
    "padded_dim",
    "plan_launch",
    "strides",
    "unsupported_reason",
]

MAX_HEAD_DIM = 256  # one [BLOCK_M, D] query tile stays in registers; larger dims need a D loop
_INT32_MAX = 2**31 - 1
_GPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# float64 runs only in the interpreter, where it lets the spec tests compare to 1e-12; on a GPU it
# is untested and would be slow, so it goes to `blocked`.
_INTERPRETER_DTYPES = _GPU_DTYPES + (torch.float64,)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def padded_dim(dim: int) -> int:
    """Head dim as a kernel tile width: the next power of two, at least 16 (``tl.dot``'s minimum).

    80 and 96 become 128: the extra lanes are loaded as zeros and never stored.
    """
    return max(16, 1 << max(0, math.ceil(math.log2(max(1, dim)))))


@dataclass(frozen=True)
class BlockConfig:
    """Tile sizes and launch options of both kernels."""

    block_m: int  # query rows per program
    block_n: int  # keys per inner step
    num_warps: int
    num_stages: int


def block_config(
    head_dim: int, value_dim: int, dtype: torch.dtype, *, interpret: bool = False
) -> BlockConfig:
    """Default tiles for a head dim and dtype.

    16-bit inputs up to D = 128: 128 x 64 tiles, 8 warps, 3 stages (FlashAttention-2's usual
    Ampere/Hopper choice; the sparse pass wastes about ``BLOCK_M / W`` of its work on window
    edges, 6% at W = 2048). Compiled for sm_90 at the benchmark shape this keeps the sparse
    kernel free of register spills (4 warps spill at D = 64) and needs 96 KiB of shared memory
    on sm_80/sm_89 (sm_89 allows 99). D = 256 and fp32 (exact fp32 products, no tensor-core
    shortcut) take 64 x 32 tiles and 2 stages. The CPU interpreter, where time goes per
    operation rather than per element, takes 64 x 32 too.
    """
    if interpret:
        return BlockConfig(block_m=64, block_n=32, num_warps=1, num_stages=1)
    width = max(padded_dim(head_dim), padded_dim(value_dim))
    if dtype in (torch.float32, torch.float64) or width > 128:
        return BlockConfig(block_m=64, block_n=32, num_warps=8, num_stages=2)
    return BlockConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)


@dataclass(frozen=True)
class KernelPlan:
    """What one call launches: the row split of DESIGN §1, the correction rule of every query
    head, and both grids.

    The dense kernel's row blocks are the *anchor blocks* (anchor slots ``0 .. n_anchors - 1``,
    ``BLOCK_M`` per block; slot r is row ``r * G``) followed by the *tail blocks* (rows
    ``[Np, Nq)``), so that no block mixes anchors and tail rows. When the whole result is dense
    (``all_dense``) every row is a tail row and no sparse pass runs.

    Per query head (``corrections``, codes in ``Correction.code``) the anchor blocks do:

    - ``paper``: ``O_d`` of the anchor into the output and ``O_d - O_s`` into the anchor buffer;
      the sparse kernel adds it to the block's other rows and leaves the anchor row alone;
    - ``taylor``: the anchor's long-range statistics only (attention over the keys outside its
      window and sinks): ``O_r`` into the anchor buffer, the mean key ``mu`` and
      ``c = lse_r - s q_a . mu`` (log2 units); the sparse kernel mixes every row of the block,
      the anchor included, with ``sigmoid(c + s q_i . mu - lse_s(i))``;
    - ``none``: nothing; the sparse kernel stores ``O_s`` for every row of ``[0, Np)``.
    """

    batch: int
    q_heads: int
    kv_heads: int
    n_q: int
    n_k: int
    head_dim: int
    value_dim: int
    causal: bool
    window: int
    sinks: int
    stride: int
    scale: float
    corrections: tuple[Correction, ...]  # one rule per query head
    all_dense: bool
    n_corrected: int  # Np: rows [0, Np) are sparse + correction
    n_anchors: int  # Np / G
    anchor_blocks: int  # dense-kernel blocks of anchor slots (0 when no head uses its anchors)
    n_dense_rows: int  # rows the dense kernel may compute: anchors + tail, or Nq when all_dense
    causal_offset: int  # query i sees keys j <= i + offset when causal (Nk - Nq)
    blocks: BlockConfig
    block_d: int
    block_dv: int

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads

    @property
    def qk_scale_log2(self) -> float:
        """``scale * log2(e)``: the kernels exponentiate with exp2."""
        return self.scale * math.log2(math.e)

    @property
    def rule_codes(self) -> tuple[int, ...]:
        """The per-head rule codes the kernels read (an int32 tensor of Hq entries)."""
        return tuple(rule.code for rule in self.corrections)

    @property
    def has_taylor(self) -> bool:
        """Whether some head uses ``taylor`` (compiles the long-range sweep into the dense kernel)."""
        return not self.all_dense and Correction.TAYLOR in self.corrections

    @property
    def tail_blocks(self) -> int:
        return cdiv(self.n_q - self.n_corrected, self.blocks.block_m)

    @property
    def dense_grid(self) -> tuple[int, int]:
        return (self.anchor_blocks + self.tail_blocks, self.batch * self.q_heads)

    @property
    def sparse_grid(self) -> tuple[int, int] | None:
        """None when there is no sparse pass (every row dense)."""
        if self.all_dense or self.n_corrected == 0:
            return None
        return (cdiv(self.n_corrected, self.blocks.block_m), self.batch * self.q_heads)

    def dense_rows(self, rule: Correction | str = Correction.PAPER) -> torch.Tensor:
        """The query rows the dense kernel stores for a head of ``rule``, in its order (the kernel
        computes the same map): the anchors (``paper`` only), then the tail.

        Together with :meth:`sparse_rows` of the same rule they are every row exactly once.
        """
        rule = Correction.parse(rule)
        anchors = torch.arange(self.n_anchors) * self.stride
        tail = torch.arange(self.n_corrected, self.n_q)
        return torch.cat([anchors, tail]) if rule is Correction.PAPER else tail

    def sparse_rows(self, rule: Correction | str = Correction.PAPER) -> torch.Tensor:
        """The query rows the sparse kernel stores for a head of ``rule``: ``[0, Np)``, less the
        anchors for ``paper`` (the dense kernel wrote them exactly)."""
        rows = torch.arange(self.n_corrected)
        return rows[rows % self.stride != 0] if Correction.parse(rule) is Correction.PAPER else rows

    @property
    def delta_shape(self) -> tuple[int, int, int, int]:
        """The anchor buffer [B, Hq, Np / G, Dv]: ``O_d - O_s`` (paper heads) or ``O_r`` (taylor heads)."""
        return (self.batch, self.q_heads, self.n_anchors, self.value_dim)

    @property
    def mean_key_shape(self) -> tuple[int, ...]:
        """The taylor heads' mean long-range keys [B, Hq, Np / G, D]; (0,) when no head uses taylor."""
        return (self.batch, self.q_heads, self.n_anchors, self.head_dim) if self.has_taylor else (0,)

    @property
    def offset_shape(self) -> tuple[int, ...]:
        """The taylor heads' ``lse_r - s q_a . mu`` per anchor [B, Hq, Np / G]; (0,) without taylor."""
        return (self.batch, self.q_heads, self.n_anchors) if self.has_taylor else (0,)


def plan_launch(
    shape: AttentionShape,
    dtype: torch.dtype,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int,
    scale: float,
    corrections: Sequence[Correction] | None = None,
    interpret: bool = False,
    blocks: BlockConfig | None = None,
) -> KernelPlan:
    """The launch of one call, for validated sizes, resolved ``tail`` and ``scale``, and one
    rule per query head (``corrections``; None means ``paper`` everywhere)."""
    rules = tuple(Correction.parse(r) for r in corrections) if corrections is not None else (Correction.PAPER,) * shape.q_heads
    if len(rules) != shape.q_heads:
        raise ValueError(f"corrections must name one rule per query head (Hq={shape.q_heads}); got {len(rules)}")
    n_q, n_k = shape.q_len, shape.kv_len
    n_corrected = num_corrected_rows(n_q, stride, tail) if n_q == n_k else 0
    all_dense = (
        n_q != n_k  # decode step or chunk: dense, bottom-right causal
        or n_corrected == 0  # everything is tail
        # every row is its own anchor: paper and taylor are then dense ("none" stays sparse)
        or (stride == 1 and Correction.NONE not in rules)
        or window >= n_q  # the window already covers every pair
    )
    blocks = blocks or block_config(shape.head_dim, shape.value_dim, dtype, interpret=interpret)
    if all_dense:
        n_corrected = n_anchors = anchor_blocks = 0
        n_dense = n_q
    else:
        n_anchors = n_corrected // stride
        n_dense = n_anchors + (n_q - n_corrected)
        # "none" heads never read their anchors: an all-"none" call launches no anchor block.
        uses_anchors = any(rule is not Correction.NONE for rule in rules)
        anchor_blocks = cdiv(n_anchors, blocks.block_m) if uses_anchors else 0
    return KernelPlan(
        batch=shape.batch,
        q_heads=shape.q_heads,
        kv_heads=shape.kv_heads,
        n_q=n_q,
        n_k=n_k,
        head_dim=shape.head_dim,
        value_dim=shape.value_dim,
        causal=causal,
        window=window,
        sinks=sinks,
        stride=stride,
        scale=scale,
        corrections=rules,
        all_dense=all_dense,
        n_corrected=n_corrected,
        n_anchors=n_anchors,
        anchor_blocks=anchor_blocks,
        n_dense_rows=n_dense,
        causal_offset=n_k - n_q,
        blocks=blocks,
        block_d=padded_dim(shape.head_dim),
        block_dv=padded_dim(shape.value_dim),
    )


def strides(t: torch.Tensor) -> tuple[int, ...]:
    """Element strides, with 0 for size-1 dims (so a broadcast view and its base agree)."""
    return tuple(0 if size == 1 else st for size, st in zip(t.shape, t.stride()))


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def unsupported_reason(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    *,
    interpret: bool,
) -> str | None:
    """Why the kernels cannot take these (validated) inputs, or None when they can.

    The kernels take key masks only (the query dim of ``attn_mask`` broadcast), head dims up
    to 256, fp16/bf16/fp32 (and fp64 in the interpreter), and per-head slices addressable with
    32-bit offsets.
    """
    allowed = _INTERPRETER_DTYPES if interpret else _GPU_DTYPES
    if q.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        return f"dtype {q.dtype} is not one the kernels compute in ({names})"
    if attn_mask is not None:
        mask = _as_4d(attn_mask)
        if mask.shape[2] != 1:
            return (
                f"attn_mask of shape {tuple(attn_mask.shape)} varies along the query dim; the kernels "
                "take key masks broadcastable to [B, Hq, 1, Nk] (e.g. key padding [B, 1, 1, Nk])"
            )
    for name, dim in (("head dim D", q.shape[3]), ("value dim Dv", v.shape[3])):
        if dim > MAX_HEAD_DIM:
            return f"{name}={dim} exceeds the kernels' maximum of {MAX_HEAD_DIM}"
    for name, t in (("q", q), ("k", k), ("v", v)):
        # Row offsets inside one (batch, head) slice are 32-bit in the kernels.
        span = sum((size - 1) * abs(st) for size, st in zip(t.shape[2:], t.stride()[2:]))
        if span > _INT32_MAX:
            return f"{name} has a per-head slice spanning {span} elements, beyond 32-bit offsets"
    return None


def key_mask_bias(attn_mask: torch.Tensor, shape: AttentionShape, dtype: torch.dtype) -> torch.Tensor:
    """A key mask as the kernels read it: an additive bias in log2 units, viewed as [B, Hq, Nk].

    Args:
        attn_mask: bool (True = may attend) or additive float, broadcastable to [B, Hq, 1, Nk].
        shape: the validated sizes.
        dtype: the accumulator dtype (float32, or float64 for float64 inputs).

    Returns:
        ``-inf`` where masked, ``mask * log2(e)`` otherwise; broadcast dims keep stride 0, so it
        holds O(B * Nk) values for a key-padding mask.
    """
    mask = _as_4d(attn_mask)[:, :, 0]  # [B|1, Hq|1, Nk|1]
    if mask.dtype == torch.bool:
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    else:
        bias = mask.to(dtype) * math.log2(math.e)
    bias = bias.expand(shape.batch, shape.q_heads, shape.kv_len)
    if bias.stride(2) != 1:  # one value for all keys: materialise the row the kernels index
        bias = bias.contiguous()
    return bias
