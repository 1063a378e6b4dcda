"""The fused forward kernels of Delta Attention, written in Triton.

Two launches compute the whole output, each output row written exactly once:

1. :func:`delta_dense_kernel` runs over the *dense rows*: the anchors ``0, G, ..., Np - G``
   followed by the tail ``[Np, N)`` (or every row when the whole result is dense). It writes
   ``O_d`` of those rows into the output and, for anchor rows, also computes ``O_s`` and writes
   ``Delta = O_d - O_s`` into a small ``[B, Hq, Np / G, Dv]`` buffer.
2. :func:`delta_sparse_kernel` runs over rows ``[0, Np)``, visiting only the key blocks that meet
   the sinks or the sliding window, and adds the anchor's ``Delta`` in its epilogue before the
   one store of each non-anchor row.

Both are FlashAttention-2 style: one program owns ``BLOCK_M`` query rows of one query head and
streams key blocks through an online softmax in fp32 (fp64 for fp64 inputs). Grouped-query heads
read their kv head ``h // group`` in place. Key blocks that every row of the tile sees entirely
skip the element mask; the others (window edges, causal diagonal, sequence end) apply it.

Everything about *how* to launch (grid, block sizes, strides, which rows are dense) is decided
by :mod:`.launch` in plain Python, so that an ahead-of-time build can reuse it.

Numbers: scores are scaled by ``scale * log2(e)`` (read from a one-element tensor so that fp64
inputs keep fp64 precision) and exponentiated with ``exp2``; an additive key bias (the
key-padding mask, ``-inf`` where masked) arrives pre-multiplied by ``log2(e)``. A row with no
visible key has ``l = 0`` and outputs 0. ``UPCAST`` casts dot operands to the accumulator type;
the launcher sets it in the CPU interpreter, whose bf16 dot is wrong.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .arguments import UNSPECIALIZED

__all__ = ["delta_dense_kernel", "delta_sparse_kernel"]


@triton.jit
def _attend_block(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    bias_base,
    start,
    rows,
    n_k,
    head_dim,
    value_dim,
    qk_scale,
    causal_offset,
    window,
    sinks,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    CAUSAL: tl.constexpr,
    SPARSE: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """One online-softmax step over keys ``[start, start + BLOCK_N)`` for the tile's rows.

    ``MASKED`` blocks apply the element predicate (sequence end, causality, and for ``SPARSE``
    ``|i - j| < W or j < S``); unmasked blocks are known to be entirely visible.
    """
    cols = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd  # K^T tile [D, N]
    v_ptrs = v_base + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd  # [N, Dv]
    if MASKED:
        k = tl.load(k_ptrs, mask=(cols[None, :] < n_k) & (offs_d[:, None] < head_dim), other=0.0)
        v = tl.load(v_ptrs, mask=(cols[:, None] < n_k) & (offs_dv[None, :] < value_dim), other=0.0)
    else:
        k = tl.load(k_ptrs, mask=offs_d[:, None] < head_dim, other=0.0)
        v = tl.load(v_ptrs, mask=offs_dv[None, :] < value_dim, other=0.0)
    if UPCAST:
        s = tl.dot(q.to(acc.dtype), k.to(acc.dtype), input_precision=PRECISION)
    else:
        s = tl.dot(q, k, input_precision=PRECISION)
    s = s.to(acc.dtype) * qk_scale
    if HAS_BIAS:
        bias = tl.load(bias_base + cols, mask=cols < n_k, other=float("-inf"))
        s = s + bias[None, :]
    if MASKED:
        visible = cols[None, :] < n_k
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + causal_offset)
        if SPARSE:
            gap = rows[:, None] - cols[None, :]
            visible = visible & (((gap < window) & (gap > -window)) | (cols[None, :] < sinks))
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps
    # exp2(-inf) = 0 where -inf - -inf would give NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if UPCAST:
        pv = tl.dot(p, v.to(acc.dtype), input_precision=PRECISION)
    else:
        pv = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    acc = acc * alpha[:, None] + pv.to(acc.dtype)
    return acc, l_i, m_new


@triton.jit
def _sweep(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    bias_base,
    lo,
    hi,
    full_lo,
    full_hi,
    rows,
    n_k,
    head_dim,
    value_dim,
    qk_scale,
    causal_offset,
    window,
    sinks,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    CAUSAL: tl.constexpr,
    SPARSE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Key blocks ``[lo, hi)``: those in ``[full_lo, full_hi)`` unmasked, the rest masked."""
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    for b in range(lo, full_lo):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, SPARSE, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_lo, full_hi):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, SPARSE, False, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_hi, hi):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, SPARSE, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    return acc, l_i, m_i


@triton.jit
def _sparse_attention(
    q,
    k_base,
    v_base,
    bias_base,
    rows,
    row_min,
    row_max,
    n_k,
    head_dim,
    value_dim,
    qk_scale,
    window,
    sinks,
    stride_kn,
    stride_kd,
    stride_vn,
    stride_vd,
    ACC_TY: tl.constexpr,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """``O_s`` of ``rows`` (all within ``[row_min, row_max]``): the sink blocks, then the window blocks.

    Only the union of ``[0, S)`` and the rows' window ``[row_min - W + 1, row_max (+ W - 1)]`` is
    visited; the window loop starts after the last sink block so no block is seen twice.
    """
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC_TY)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_TY)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC_TY)
    n_sinks = tl.minimum(sinks, n_k)
    sink_hi = tl.cdiv(n_sinks, BLOCK_N)
    if CAUSAL:
        sink_full = tl.minimum(n_sinks, row_min + 1) // BLOCK_N
        win_end = tl.minimum(row_max + 1, n_k)
        win_full_end = tl.minimum(row_min + 1, n_k)
    else:
        sink_full = n_sinks // BLOCK_N
        win_end = tl.minimum(row_max + window, n_k)
        win_full_end = tl.minimum(row_min + window, n_k)
    acc, l_i, m_i = _sweep(
        acc, l_i, m_i, q, k_base, v_base, bias_base, 0, sink_hi, 0, sink_full, rows, n_k, head_dim,
        value_dim, qk_scale, 0, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    win_lo = tl.maximum(tl.maximum(row_min - window + 1, 0) // BLOCK_N, sink_hi)
    win_hi = tl.cdiv(tl.maximum(win_end, 0), BLOCK_N)
    # A block is wholly inside every row's window when it starts at or after row_max - W + 1
    # and ends by row_min (causal) or row_min + W - 1 (bidirectional).
    full_lo = tl.cdiv(tl.maximum(row_max - window + 1, 0), BLOCK_N)
    full_hi = tl.maximum(win_full_end, 0) // BLOCK_N
    acc, l_i, m_i = _sweep(
        acc, l_i, m_i, q, k_base, v_base, bias_base, win_lo, win_hi, full_lo, full_hi, rows, n_k,
        head_dim, value_dim, qk_scale, 0, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None]


@triton.jit(do_not_specialize=UNSPECIALIZED)
def delta_dense_kernel(
    Q,
    K,
    V,
    Out,
    Delta,
    Bias,
    Scale,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    stride_db,
    stride_dh,
    stride_dn,
    stride_dd,
    stride_biasb,
    stride_biash,
    q_heads,
    group,
    n_q,
    n_k,
    n_rows,
    n_anchors,
    n_corrected,
    anchor_stride,
    causal_offset,
    head_dim,
    value_dim,
    window,
    sinks,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Dense rows: ``O_d`` into ``Out``; for anchor rows also ``O_d - O_s`` into ``Delta``.

    Grid: (cdiv(n_rows, BLOCK_M), B * Hq). Dense row r is ``r * G`` for ``r < n_anchors`` and
    ``Np + r - n_anchors`` after (``n_anchors = Np = 0`` makes every row dense, row r = r). Query
    row i sees keys ``j <= i + causal_offset`` when causal (bottom-right for Nq != Nk).
    """
    # The last row blocks see the most keys: start them first so the grid ends evenly.
    block = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // group
    acc_ty = Delta.dtype.element_ty  # fp32, or fp64 for fp64 inputs

    r = block * BLOCK_M + tl.arange(0, BLOCK_M)
    valid = r < n_rows
    rows = tl.where(r < n_anchors, r * anchor_stride, n_corrected + r - n_anchors)
    row_min = tl.min(tl.where(valid, rows, n_q), 0)
    row_max = tl.max(tl.where(valid, rows, 0), 0)

    # 64-bit (batch, head) offsets: at 1M tokens one tensor holds more than 2^31 elements.
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

    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=acc_ty)
    l_i = tl.zeros([BLOCK_M], dtype=acc_ty)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=acc_ty)
    if CAUSAL:
        hi = tl.cdiv(tl.maximum(tl.minimum(row_max + causal_offset + 1, n_k), 0), BLOCK_N)
        full_hi = tl.maximum(tl.minimum(row_min + causal_offset + 1, n_k), 0) // BLOCK_N
    else:
        hi = tl.cdiv(n_k, BLOCK_N)
        full_hi = n_k // BLOCK_N
    acc, l_i, m_i = _sweep(
        acc, l_i, m_i, q, k_base, v_base, bias_base, 0, hi, 0, full_hi, rows, n_k, head_dim,
        value_dim, qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, False, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    out_d = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    tl.store(
        o_base + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
        out_d.to(Out.dtype.element_ty),
        mask=valid[:, None] & (offs_dv[None, :] < value_dim),
    )

    if block * BLOCK_M < n_anchors:
        # Anchors only: their sparse output, over the union of their windows and the sinks.
        is_anchor = r < n_anchors
        anchor_max = tl.max(tl.where(is_anchor, rows, 0), 0)
        out_s = _sparse_attention(
            q, k_base, v_base, bias_base, rows, row_min, anchor_max, n_k, head_dim, value_dim,
            qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            acc_ty, CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
        d_base = Delta + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
        tl.store(
            d_base + r[:, None] * stride_dn + offs_dv[None, :] * stride_dd,
            out_d - out_s,
            mask=is_anchor[:, None] & (offs_dv[None, :] < value_dim),
        )


@triton.jit(do_not_specialize=UNSPECIALIZED)
def delta_sparse_kernel(
    Q,
    K,
    V,
    Out,
    Delta,
    Bias,
    Scale,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_kd,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vd,
    stride_ob,
    stride_oh,
    stride_on,
    stride_od,
    stride_db,
    stride_dh,
    stride_dn,
    stride_dd,
    stride_biasb,
    stride_biash,
    q_heads,
    group,
    n_k,
    n_corrected,
    anchor_stride,
    head_dim,
    value_dim,
    window,
    sinks,
    CAUSAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):
    """Rows ``[0, Np)`` that are not anchors: ``O_s(i) + Delta[i // G]`` into ``Out``.

    Grid: (cdiv(Np, BLOCK_M), B * Hq); runs after :func:`delta_dense_kernel` filled ``Delta``.
    """
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = pid_bh // q_heads
    head = pid_bh % q_heads
    kv_head = head // group
    acc_ty = Delta.dtype.element_ty  # fp32, or fp64 for fp64 inputs

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
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
    out = _sparse_attention(
        q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim,
        qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        acc_ty, CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip

    d_base = Delta + batch.to(tl.int64) * stride_db + head.to(tl.int64) * stride_dh
    delta = tl.load(
        d_base + (rows // anchor_stride)[:, None] * stride_dn + offs_dv[None, :] * stride_dd,
        mask=valid[:, None] & (offs_dv[None, :] < value_dim),
        other=0.0,
    )
    # A row with no visible key needs no special case: under a key mask its anchor (a <= i) sees
    # no key either, so O_s(i) = 0 and Delta = 0 - 0.
    out = out + delta
    o_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    # Anchor rows already hold O_d from the dense kernel: leave them exact.
    store = valid & (rows % anchor_stride != 0)
    tl.store(
        o_base + rows[:, None] * stride_on + offs_dv[None, :] * stride_od,
        out.to(Out.dtype.element_ty),
        mask=store[:, None] & (offs_dv[None, :] < value_dim),
    )
