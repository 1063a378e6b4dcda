"""Tile-level pieces of the kernels (:mod:`.kernels`): one key block of online softmax, sweeps over
ranges of key blocks, and the sparse and long-range attention of one tile of query rows.

A tile is ``BLOCK_M`` query rows of one query head (rows need not be consecutive: the dense
kernel's anchor tiles hold rows ``0, G, 2G, ..``). Scores are in log2 units (``qk_scale`` is
``scale * log2(e)``) and accumulate in the dtype of ``qk_scale`` (fp32, or fp64 for fp64 inputs).
Which keys a row sees is one of three *modes*:

- ``DENSE``:  every key the row may see (the sequence end and, when causal, ``j <= i + offset``);
- ``SPARSE``: the dense keys in the window ``|i - j| < W`` or among the sinks ``j < S``;
- ``FAR``:    the dense keys outside both (the ``taylor`` rule's long-range keys ``R_a``).

A *masked* block applies the element predicate of its mode; an unmasked block is known (from
the tile's row range) to be entirely visible to every row, and skips it. A key bias (the key
mask, ``-inf`` where masked) is added to every block.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["DENSE", "FAR", "SPARSE", "attend_sweep", "far_attention", "sparse_attention"]

DENSE = tl.constexpr(0)
SPARSE = tl.constexpr(1)
FAR = tl.constexpr(2)


@triton.jit
def _block_scores(
    q,
    k_base,
    bias_base,
    start,
    rows,
    n_k,
    head_dim,
    qk_scale,
    causal_offset,
    window,
    sinks,
    stride_kn,
    stride_kd,
    CAUSAL: tl.constexpr,
    MODE: tl.constexpr,
    MASKED: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Scores [BLOCK_M, BLOCK_N] of keys ``[start, start + BLOCK_N)`` (``-inf`` where not visible)
    and the K^T tile [BLOCK_D, BLOCK_N] they came from."""
    cols = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_ptrs = k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd  # K^T tile [D, N]
    if MASKED:
        k = tl.load(k_ptrs, mask=(cols[None, :] < n_k) & (offs_d[:, None] < head_dim), other=0.0)
    else:
        k = tl.load(k_ptrs, mask=offs_d[:, None] < head_dim, other=0.0)
    if UPCAST:
        s = tl.dot(q.to(qk_scale.dtype), k.to(qk_scale.dtype), input_precision=PRECISION)
    else:
        s = tl.dot(q, k, input_precision=PRECISION)
    s = s.to(qk_scale.dtype) * qk_scale
    if HAS_BIAS:
        bias = tl.load(bias_base + cols, mask=cols < n_k, other=float("-inf"))
        s = s + bias[None, :]
    if MASKED:
        visible = cols[None, :] < n_k
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None] + causal_offset)
        if MODE == SPARSE:
            gap = rows[:, None] - cols[None, :]
            visible = visible & (((gap < window) & (gap > -window)) | (cols[None, :] < sinks))
        if MODE == FAR:
            gap = rows[:, None] - cols[None, :]
            visible = visible & ((gap >= window) | (gap <= -window)) & (cols[None, :] >= sinks)
        s = tl.where(visible, s, float("-inf"))
    return s, k


@triton.jit
def _online_softmax_step(s, l_i, m_i):
    """One block of the online softmax: (p, alpha, l, m) with ``p = exp2(s - m)`` and the old
    sums to be rescaled by ``alpha``."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no visible key yet keeps m = -inf; subtracting 0 instead keeps
    # exp2(-inf) = 0 where -inf - -inf would give NaN.
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_use)
    p = tl.exp2(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    return p, alpha, l_i, m_new


@triton.jit
def _load_values(v_base, start, n_k, value_dim, stride_vn, stride_vd, MASKED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr):
    cols = start + tl.arange(0, BLOCK_N)
    offs_dv = tl.arange(0, BLOCK_DV)
    v_ptrs = v_base + cols[:, None] * stride_vn + offs_dv[None, :] * stride_vd  # [N, Dv]
    if MASKED:
        return tl.load(v_ptrs, mask=(cols[:, None] < n_k) & (offs_dv[None, :] < value_dim), other=0.0)
    return tl.load(v_ptrs, mask=offs_dv[None, :] < value_dim, other=0.0)


@triton.jit
def _weighted(p, x, acc_dtype: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """p [M, N] @ x [N, E] in the accumulator dtype."""
    if UPCAST:
        return tl.dot(p, x.to(acc_dtype), input_precision=PRECISION)
    return tl.dot(p.to(x.dtype), x, input_precision=PRECISION).to(acc_dtype)


@triton.jit
def _attend_block(
    acc, l_i, m_i, q, k_base, v_base, bias_base, start, rows, n_k, head_dim, value_dim, qk_scale, causal_offset,
    window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
    CAUSAL: tl.constexpr, MODE: tl.constexpr, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over keys ``[start, start + BLOCK_N)`` for the tile's rows."""
    s, k = _block_scores(
        q, k_base, bias_base, start, rows, n_k, head_dim, qk_scale, causal_offset, window, sinks, stride_kn,
        stride_kd, CAUSAL, MODE, MASKED, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    v = _load_values(v_base, start, n_k, value_dim, stride_vn, stride_vd, MASKED, BLOCK_N, BLOCK_DV)
    p, alpha, l_i, m_new = _online_softmax_step(s, l_i, m_i)
    acc = acc * alpha[:, None] + _weighted(p, v, acc.dtype, UPCAST, PRECISION)
    return acc, l_i, m_new


@triton.jit
def _far_block(
    acc, mu, l_i, m_i, q, k_base, v_base, bias_base, start, rows, n_k, head_dim, value_dim, qk_scale, window,
    sinks, stride_kn, stride_kd, stride_vn, stride_vd,
    CAUSAL: tl.constexpr, MASKED: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """:func:`_attend_block` over the long-range keys, also accumulating the weighted keys (``mu``)."""
    s, k = _block_scores(
        q, k_base, bias_base, start, rows, n_k, head_dim, qk_scale, 0, window, sinks, stride_kn, stride_kd,
        CAUSAL, FAR, MASKED, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D,
    )  # fmt: skip
    v = _load_values(v_base, start, n_k, value_dim, stride_vn, stride_vd, MASKED, BLOCK_N, BLOCK_DV)
    p, alpha, l_i, m_new = _online_softmax_step(s, l_i, m_i)
    acc = acc * alpha[:, None] + _weighted(p, v, acc.dtype, UPCAST, PRECISION)
    mu = mu * alpha[:, None] + _weighted(p, tl.trans(k), mu.dtype, UPCAST, PRECISION)
    return acc, mu, l_i, m_new


@triton.jit
def attend_sweep(
    acc, l_i, m_i, q, k_base, v_base, bias_base, lo, hi, full_lo, full_hi, rows, n_k, head_dim, value_dim,
    qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
    CAUSAL: tl.constexpr, MODE: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Key blocks ``[lo, hi)`` in ``MODE`` (DENSE or SPARSE): those in ``[full_lo, full_hi)``
    unmasked, the rest masked."""
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    for b in range(lo, full_lo):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, MODE, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_lo, full_hi):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, MODE, False, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_hi, hi):
        acc, l_i, m_i = _attend_block(
            acc, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, causal_offset, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, MODE, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    return acc, l_i, m_i


@triton.jit
def _far_sweep(
    acc, mu, l_i, m_i, q, k_base, v_base, bias_base, lo, hi, full_lo, full_hi, rows, n_k, head_dim, value_dim,
    qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
    CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """:func:`attend_sweep` over long-range keys, with the weighted keys."""
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    for b in range(lo, full_lo):
        acc, mu, l_i, m_i = _far_block(
            acc, mu, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_lo, full_hi):
        acc, mu, l_i, m_i = _far_block(
            acc, mu, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, False, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    for b in range(full_hi, hi):
        acc, mu, l_i, m_i = _far_block(
            acc, mu, l_i, m_i, q, k_base, v_base, bias_base, b * BLOCK_N, rows, n_k, head_dim, value_dim,
            qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, True, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    return acc, mu, l_i, m_i


@triton.jit
def _log2_normaliser(l_i, m_i):
    """``log2`` of the softmax normaliser, from the online state; ``-inf`` for a row with no key."""
    return tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))


@triton.jit
def sparse_attention(
    q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim, qk_scale, window, sinks,
    stride_kn, stride_kd, stride_vn, stride_vd,
    ACC_TY: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """``(O_s, lse_s)`` of ``rows`` (all within ``[row_min, row_max]``): the sink blocks, then the
    window blocks; ``lse_s`` is the log2 normaliser (``-inf`` for a row with no visible key).

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
    acc, l_i, m_i = attend_sweep(
        acc, l_i, m_i, q, k_base, v_base, bias_base, 0, sink_hi, 0, sink_full, rows, n_k, head_dim,
        value_dim, qk_scale, 0, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, SPARSE, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    win_lo = tl.maximum(tl.maximum(row_min - window + 1, 0) // BLOCK_N, sink_hi)
    win_hi = tl.cdiv(tl.maximum(win_end, 0), BLOCK_N)
    # A block is wholly inside every row's window when it starts at or after row_max - W + 1
    # and ends by row_min (causal) or row_min + W - 1 (bidirectional).
    full_lo = tl.cdiv(tl.maximum(row_max - window + 1, 0), BLOCK_N)
    full_hi = tl.maximum(win_full_end, 0) // BLOCK_N
    acc, l_i, m_i = attend_sweep(
        acc, l_i, m_i, q, k_base, v_base, bias_base, win_lo, win_hi, full_lo, full_hi, rows, n_k,
        head_dim, value_dim, qk_scale, 0, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, SPARSE, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    return acc / tl.where(l_i > 0, l_i, 1.0)[:, None], _log2_normaliser(l_i, m_i)


@triton.jit
def far_attention(
    q, k_base, v_base, bias_base, rows, row_min, row_max, n_k, head_dim, value_dim, qk_scale, window, sinks,
    stride_kn, stride_kd, stride_vn, stride_vd,
    ACC_TY: tl.constexpr, CAUSAL: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    """Attention of ``rows`` over their long-range keys only: ``(O_r, mu, lse_r)``, the output,
    the mean key (both normalised; 0 for a row with no long-range key) and the log2 normaliser.

    Long-range keys of row a: ``S <= j <= a - W``, and when bidirectional also ``j >= max(a + W, S)``.
    The left range is visited up to ``row_max - W``; the right one (bidirectional) from
    ``row_min + W``, starting after the left one so that no block is seen twice.
    """
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC_TY)
    mu = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_TY)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_TY)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=ACC_TY)
    left_lo = tl.minimum(sinks, n_k) // BLOCK_N
    left_hi = tl.cdiv(tl.minimum(tl.maximum(row_max - window + 1, 0), n_k), BLOCK_N)
    # Wholly long-range for every row: at or after S and at most row_min - W.
    full_lo = tl.cdiv(sinks, BLOCK_N)
    full_hi = tl.minimum(tl.maximum(row_min - window + 1, 0), n_k) // BLOCK_N
    acc, mu, l_i, m_i = _far_sweep(
        acc, mu, l_i, m_i, q, k_base, v_base, bias_base, left_lo, left_hi, full_lo, full_hi, rows, n_k,
        head_dim, value_dim, qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
        CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
    )  # fmt: skip
    if not CAUSAL:
        right_lo = tl.maximum(left_hi, tl.minimum(tl.maximum(row_min + window, sinks), n_k) // BLOCK_N)
        right_hi = tl.cdiv(n_k, BLOCK_N)
        full_lo = tl.cdiv(tl.maximum(row_max + window, sinks), BLOCK_N)
        full_hi = n_k // BLOCK_N
        acc, mu, l_i, m_i = _far_sweep(
            acc, mu, l_i, m_i, q, k_base, v_base, bias_base, right_lo, right_hi, full_lo, full_hi, rows, n_k,
            head_dim, value_dim, qk_scale, window, sinks, stride_kn, stride_kd, stride_vn, stride_vd,
            CAUSAL, HAS_BIAS, UPCAST, PRECISION, BLOCK_N, BLOCK_D, BLOCK_DV,
        )  # fmt: skip
    norm = tl.where(l_i > 0, l_i, 1.0)[:, None]
    return acc / norm, mu / norm, _log2_normaliser(l_i, m_i)
