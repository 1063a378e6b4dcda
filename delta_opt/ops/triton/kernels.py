"""The fused forward kernels of Delta Attention, written in Triton.

Two launches compute the whole output, each output row written exactly once:

1. :func:`delta_dense_kernel` runs over the *dense row blocks*: blocks of anchor slots (anchor
   rows ``0, G, ..., Np - G``) followed by blocks of the tail ``[Np, N)`` (or every row when the
   whole result is dense). Tail rows get ``O_d``. Anchor blocks depend on the query head's
   correction rule (read from ``Rules``, one int32 per query head, ``Correction.code``):
   ``paper`` writes ``O_d`` of the anchor and ``Delta = O_d - O_s`` into a small
   ``[B, Hq, Np / G, Dv]`` buffer; ``taylor`` attends over the anchor's long-range keys only and
   writes their output ``O_r`` into the same buffer, the mean key ``mu`` into ``MeanKey`` and
   ``c = lse_r - s q_a . mu`` into ``Offset``; ``none`` does nothing.
2. :func:`delta_sparse_kernel` runs over rows ``[0, Np)``, visiting only the key blocks that meet
   the sinks or the sliding window, and applies the rule in its epilogue before the one store of
   each row: ``paper`` adds the anchor's ``Delta`` (and leaves the anchor rows, which hold
   ``O_d``), ``none`` stores ``O_s``, ``taylor`` stores ``(1 - w) O_s + w O_r(a)`` with
   ``w = sigmoid(c_a + s q_i . mu_a - lse_s(i))`` from the ``q_i`` and the online-softmax
   normaliser ``lse_s`` it already holds. No pass over memory is added for any rule.

Both are FlashAttention-2 style: one program owns ``BLOCK_M`` query rows of one query head and
streams key blocks through an online softmax in fp32 (fp64 for fp64 inputs). Grouped-query heads
read their kv head ``h // group`` in place. Key blocks that every row of the tile sees entirely
skip the element mask; the others (window edges, causal diagonal, sequence end) apply it.
The tile-level pieces live in :mod:`.sweeps`.

Everything about *how* to launch (grid, block sizes, strides, which rows are dense) is decided
by :mod:`.launch` in plain Python, so that an ahead-of-time build can reuse it.

Numbers: scores are scaled by ``scale * log2(e)`` (read from a one-element tensor so that fp64
inputs keep fp64 precision) and exponentiated with ``exp2``; log-normalisers (``lse``, ``c``) are
in log2 units too. An additive key bias (the key-padding mask, ``-inf`` where masked) arrives
pre-multiplied by ``log2(e)``. A row with no visible key has ``l = 0`` and outputs 0.
``UPCAST`` casts dot operands to the accumulator type; the launcher sets it in the CPU
interpreter, whose bf16 dot is wrong.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ...plan import Correction
from .arguments import UNSPECIALIZED
from .sweeps import DENSE, attend_sweep, far_attention, sparse_attention

__all__ = ["RULE_NONE", "RULE_PAPER", "RULE_TAYLOR", "delta_dense_kernel", "delta_sparse_kernel"]

RULE_PAPER = tl.constexpr(Correction.PAPER.code)
RULE_NONE = tl.constexpr(Correction.NONE.code)
RULE_TAYLOR = tl.constexpr(Correction.TAYLOR.code)


@triton.jit(do_not_specialize=UNSPECIALIZED)
def delta_dense_kernel(
    Q, K, V, Out, Delta, Bias, Scale, Rules, MeanKey, Offset,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_db, stride_dh, stride_dn, stride_dd,
    stride_biasb, stride_biash,
    stride_mb, stride_mh, stride_mn, stride_md,
    stride_cb, stride_ch, stride_cn,
    q_heads, group, n_q, n_k, n_anchors, anchor_blocks, n_corrected, anchor_stride, causal_offset,
    head_dim, value_dim, window, sinks,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, TAYLOR: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Dense row blocks: ``O_d`` of tail rows; per the head's rule, the anchors' ``O_d`` and
    ``O_d - O_s`` (paper) or long-range statistics (taylor).

    Grid: (anchor_blocks + cdiv(Nq - Np, BLOCK_M), B * Hq). Block b < anchor_blocks holds anchor
    slots ``[b * BLOCK_M, (b + 1) * BLOCK_M)`` (slot r is row ``r * G``, valid for r < n_anchors);
    the later blocks hold tail rows from Np on (``Np = 0`` makes every row a tail row). Query
    row i sees keys ``j <= i + causal_offset`` when causal (bottom-right for Nq != Nk).
    """
    # The last row blocks see the most keys: start them first so the grid ends evenly.
    block = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // group
    acc_ty = Delta.dtype.element_ty  # fp32, or fp64 for fp64 inputs
    rule = tl.load(Rules + head)

    is_anchor = block < anchor_blocks
    offs_m = tl.arange(0, BLOCK_M)
    slot = block * BLOCK_M + offs_m  # anchor slots (anchor blocks)
    tail_row = n_corrected + (block - anchor_blocks) * BLOCK_M + offs_m  # tail rows (tail blocks)
    rows = tl.where(is_anchor, slot * anchor_stride, tail_row)
    valid = tl.where(is_anchor, slot < n_anchors, tail_row < n_q)
    row_min = tl.min(tl.where(valid, rows, n_q), 0)
    row_max = tl.max(tl.where(valid, rows, 0), 0)

    # 64-bit (batch, head) offsets: at 1M tokens one tensor holds more than 2^31 elements.
    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    bias_base = Bias + batch.to(tl.int64) * stride_biasb + head.to(tl.int64) * stride_biash
    d_base = Delta + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_base + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=valid[:, None] & (offs_d[None, :] < head_dim),
        other=0.0,
    )
    qk_scale = tl.load(Scale)

    if (block >= anchor_blocks) | (rule == RULE_PAPER):
        acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=acc_ty)
        l_i = tl.zeros([BLOCK_M], dtype=acc_ty)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=acc_ty)
        if CAUSAL:
            hi = tl.cdiv(tl.maximum(tl.minimum(row_max + causal_offset + 1, n_k), 0), BLOCK_N)
            full_hi = tl.maximum(tl.minimum(row_min + causal_offset + 1, n_k), 0) // BLOCK_N
        else:
            hi = tl.cdiv(n_k, BLOCK_N)
            full_hi = n_k // BLOCK_N
        acc, l_i, m_i = attend_sweep(
            acc, l_i, m_i, q, k_base, v_base, bias_base, 0, hi, 0, full_hi, rows, n_k, head_dim,
            value_dim, qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, DENSE, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
        out_d = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
        tl.store(
            o_base + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
            out_d.to(Out.dtype.element_ty),
            mask=valid[:, None] & (offs_dv[None, :] < value_dim),
        )
        if is_anchor:
            # Paper anchors: their sparse output, over the union of their windows and the sinks.
            out_s, _ = sparse_attention(
                q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim,
                qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
                acc_ty, CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
            )  # fmt: skip
            tl.store(
                d_base + slot[:, None] * stride_dn + offs_dv[None, :] * stride_dd,
                out_d - out_s,
                mask=valid[:, None] & (offs_dv[None, :] < value_dim),
            )

    if TAYLOR:
        if is_anchor & (rule == RULE_TAYLOR):
            # Taylor anchors: attention over their long-range keys only (the window and sinks
            # are the sparse kernel's); the anchor row itself is mixed there like any other.
            out_r, mean_key, lse_r = far_attention(
                q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim,
                qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
                acc_ty, CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
            )  # fmt: skip
            # l_hat(i) = lse_r(a) + s (q_i - q_a) . mu(a) = c + s q_i . mu(a): one number per anchor.
            offset = lse_r - qk_scale * tl.sum(q.to(acc_ty) * mean_key, 1)
            tl.store(
                d_base + slot[:, None] * stride_dn + offs_dv[None, :] * stride_dd,
                out_r,
                mask=valid[:, None] & (offs_dv[None, :] < value_dim),
            )
            m_base = MeanKey + batch.to(tl.int64) * stride_mb + head.to(tl.int64) * stride_mh
            tl.store(
                m_base + slot[:, None] * stride_mn + offs_d[None, :] * stride_md,
                mean_key,
                mask=valid[:, None] & (offs_d[None, :] < head_dim),
            )
            c_base = Offset + batch.to(tl.int64) * stride_cb + head.to(tl.int64) * stride_ch
            tl.store(c_base + slot * stride_cn, offset, mask=valid)


@triton.jit(do_not_specialize=UNSPECIALIZED)
def delta_sparse_kernel(
    Q, K, V, Out, Delta, Bias, Scale, Rules, MeanKey, Offset,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_db, stride_dh, stride_dn, stride_dd,
    stride_biasb, stride_biash,
    stride_mb, stride_mh, stride_mn, stride_md,
    stride_cb, stride_ch, stride_cn,
    q_heads, group, n_k, n_corrected, anchor_stride, head_dim, value_dim, window, sinks,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, TAYLOR: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Rows ``[0, Np)``: ``O_s(i)`` corrected by the head's rule into ``Out`` (paper: not the anchors).

    Grid: (cdiv(Np, BLOCK_M), B * Hq); runs after :func:`delta_dense_kernel` filled the anchor
    buffers.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // group
    acc_ty = Delta.dtype.element_ty  # fp32, or fp64 for fp64 inputs

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    # The head's rule, one copy per row: it only enters per-row masks (and the interpreter
    # mistypes "bool vector & bool scalar").
    rule = tl.load(Rules + head) + tl.zeros_like(rows)
    valid = rows < n_corrected
    row_min = pid_m * BLOCK_M
    row_max = tl.minimum(row_min + BLOCK_M, n_corrected) - 1

    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    bias_base = Bias + batch.to(tl.int64) * stride_biasb + head.to(tl.int64) * stride_biash
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        q_base + rows[:, None] * stride_qn + offs_d[None, :] * stride_qd,
        mask=valid[:, None] & (offs_d[None, :] < head_dim),
        other=0.0,
    )
    qk_scale = tl.load(Scale)
    slot = rows // anchor_stride
    if TAYLOR:
        # l_hat(i) = c(a) + s q_i . mu(a), computed before the sweep so that the [BLOCK_M, D]
        # mean keys are dead by the time the sweep's accumulator is live (no register spill).
        is_taylor = rule == RULE_TAYLOR
        m_base = MeanKey + batch.to(tl.int64) * stride_mb + head.to(tl.int64) * stride_mh
        mean_key = tl.load(
            m_base + slot[:, None] * stride_mn + offs_d[None, :] * stride_md,
            mask=(valid & is_taylor)[:, None] & (offs_d[None, :] < head_dim),
            other=0.0,
        )
        c_base = Offset + batch.to(tl.int64) * stride_cb + head.to(tl.int64) * stride_ch
        offset = tl.load(c_base + slot * stride_cn, mask=valid & is_taylor, other=float("-inf"))
        l_hat = offset + qk_scale * tl.sum(q.to(acc_ty) * mean_key, 1)
    out, lse_s = sparse_attention(
        q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim,
        qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        acc_ty, CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip

    # The anchor's Delta (paper) or O_r (taylor); "none" reads nothing and adds 0.
    d_base = Delta + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
    delta = tl.load(
        d_base + slot[:, None] * stride_dn + offs_dv[None, :] * stride_dd,
        mask=(valid & (rule != RULE_NONE))[:, None] & (offs_dv[None, :] < value_dim),
        other=0.0,
    )
    if TAYLOR:
        # No long-range key (offset -inf), or not a taylor head: nothing to mix in (w = 0). Such
        # rows take l_hat = 0 first, so that no -inf - -inf is ever computed.
        mixes = offset != float("-inf")
        w = 1.0 / (1.0 + tl.exp2(lse_s - tl.where(mixes, l_hat, 0.0)))  # sigmoid(l_hat - lse_s), log2 units
        w = tl.where(mixes, w, 0.0)
        # taylor: (1 - w) O_s + w O_r;  paper: O_s + Delta (w = 0, weight 1);  none: O_s.
        out = out * (1.0 - w)[:, None] + delta * tl.where(is_taylor, w, 1.0)[:, None]
    else:
        out = out + delta
    # A row with no visible key needs no special case: under a key mask its anchor (a <= i) sees
    # no key either, so O_s(i) = 0, Delta = 0 - 0 and O_r = 0.
    o_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    # Paper anchor rows already hold O_d from the dense kernel: leave them exact.
    store = valid & ((rows % anchor_stride != 0) | (rule != RULE_PAPER))
    tl.store(
        o_base + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
        out.to(Out.dtype.element_ty),
        mask=store[:, None] & (offs_dv[None, :] < value_dim),
    )
