"""Memory-lean PyTorch implementation of Delta Attention (CPU default, GPU fallback).

The work is split the way its cost is (DESIGN §1, "Cost"):

- the sparse rows ``[0, Np)`` are computed in query blocks; a block of ``bq`` queries reads only
  the sink keys ``[0, S)`` and the window keys ``[i0 - W + 1, i1 + W - 1)`` around it, so time and
  memory grow as ``N * (W + S)``;
- the dense rows (every G-th anchor row, and the tail ``[Np, N)``) are computed in chunks of rows
  against all keys they may see, so time grows as ``N^2 / G`` and memory stays bounded;
- the anchor's difference ``O_d(a) - O_s(a)`` is then added to the G rows it corrects.

Each block is one call of ``torch.nn.functional.scaled_dot_product_attention`` with a small
boolean (or additive) block mask: the fused CPU kernel is about twice as fast as matmul +
softmax + matmul here, takes grouped-query heads without repeating K/V (``enable_gqa``), and
returns zeros for rows whose keys are all masked, as the spec asks. No tensor of size N x N is
built unless the caller passes an N x N ``attn_mask``.

fp16/bf16 inputs are computed in float32 block by block and cast back at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..plan import Correction, parse_corrections
from .checks import AttentionShape, check_inputs, num_corrected_rows, resolve_scale, resolve_tail
from .long_range import attend_with_lse, long_range_stats, merge_retrieved, taylor_mix

__all__ = ["delta_attention_blocked", "default_block_size"]

# Upper bound on the [rows, keys] elements a dense-row chunk covers, per (batch, head). It bounds
# the block masks and SDPA's scratch, and limits the causal waste of a chunk whose first rows see
# fewer keys than its last.
_DENSE_CHUNK_ELEMENTS = 1 << 20


def default_block_size(window: int) -> int:
    """Query-block size for the sparse pass.

    A block of ``bq`` queries reads ``bq + W - 1 + S`` keys where each query needs ``W + S``, so
    smaller blocks waste less work but make more, smaller kernel calls. 128 measured best on a
    2-core CPU for W = 512 (benchmarks/op_cpu.py); small windows get blocks of about W.
    """
    return max(16, min(128, window))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _as_4d(mask: torch.Tensor) -> torch.Tensor:
    """View a mask broadcastable to [B, H, Nq, Nk] as a 4-D tensor, keeping its size-1 dims."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask


def _mask_rows(mask: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
    """Rows of a 4-D mask, unless its query dim is broadcast (size 1)."""
    if mask.shape[2] == 1:
        return mask
    if isinstance(rows, slice):
        return mask[:, :, rows]
    return mask.index_select(2, rows)


def _mask_cols(mask: torch.Tensor, cols: torch.Tensor | slice) -> torch.Tensor:
    if mask.shape[3] == 1:
        return mask
    if isinstance(cols, slice):
        return mask[..., cols]
    return mask.index_select(3, cols)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool "may attend" mask as an additive one (0 / -inf): SDPA's CPU kernel runs ~5% faster on it."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _sdpa_mask(structural: torch.Tensor | None, user: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Combine the additive structural mask of a block ([rows, keys]) with the user's mask slice.

    SDPA returns 0 for a row whose keys are all -inf, as the spec asks of rows with no key.
    """
    if user is None:
        return structural
    if user.dtype == torch.bool:
        if structural is None:
            return user
        return structural.masked_fill(~user, float("-inf"))
    user = user.to(dtype)
    return user if structural is None else user + structural


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float, gqa: bool
) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _dense_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    rows: torch.Tensor,
    *,
    causal: bool,
    offset: int,
    scale: float,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Dense attention for the query rows ``rows`` (ascending), in chunks of rows.

    Row r sees keys ``j <= r + offset`` when causal (bottom-right alignment for Nq != Nk).
    Returns [B, Hq, len(rows), Dv] in ``dtype``.
    """
    B, Hq, _, _ = q.shape
    n_k = k.shape[2]
    gqa = Hq != k.shape[1]
    out = q.new_empty(B, Hq, rows.numel(), v.shape[3], dtype=dtype)
    chunk = max(1, _DENSE_CHUNK_ELEMENTS // max(1, n_k))
    for c0 in range(0, rows.numel(), chunk):
        c1 = min(c0 + chunk, rows.numel())
        r = rows[c0:c1]
        # Causal rows need no key beyond the last row's limit: skip them outright.
        n_keys = min(n_k, int(r[-1]) + offset + 1) if causal else n_k
        if n_keys <= 0:
            out[:, :, c0:c1] = 0
            continue
        structural = None
        if causal:
            structural = _additive(torch.arange(n_keys, device=q.device) <= (r + offset).unsqueeze(1), dtype)
        user = None if mask is None else _mask_cols(_mask_rows(mask, r), slice(0, n_keys))
        out[:, :, c0:c1] = _attend(
            q.index_select(2, r).to(dtype),
            k[:, :, :n_keys].to(dtype),
            v[:, :, :n_keys].to(dtype),
            _sdpa_mask(structural, user, dtype),
            scale,
            gqa,
        )
    return out


def _sparse_rows(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor,
    *,
    n_rows: int,
    causal: bool,
    window: int,
    sinks: int,
    scale: float,
    block: int,
    lse: torch.Tensor | None = None,
) -> None:
    """Sliding-window + sink attention for rows ``[0, n_rows)``, written into ``out[:, :, :n_rows]``
    (and their log-normalisers into ``lse[:, :, :n_rows]`` when given).

    A query block ``[i0, i1)`` reads the window range ``[lo, hi)`` with ``lo = i0 - W + 1`` and
    ``hi = i1`` (causal) or ``i1 + W - 1``, plus the sinks ``[0, S)`` outside it; the block mask
    then keeps exactly ``|i - j| < W or j < S`` (and ``j <= i`` when causal).
    """
    n = k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    dtype = out.dtype
    # Once the window has left the sinks behind, most blocks share one mask: cache it.
    masks: dict[tuple[int, int, int], torch.Tensor] = {}
    for i0 in range(0, n_rows, block):
        i1 = min(i0 + block, n_rows)
        lo = max(0, i0 - window + 1)
        hi = i1 if causal else min(n, i1 + window - 1)
        # Keys: the sinks left of the window, the window [lo, hi), and (bidirectional, early
        # rows) the sinks right of it. Sinks inside [lo, hi) are already in the window.
        right = hi if causal else min(sinks, n)  # causal rows never see keys right of the window
        segments = [(a, b) for a, b in ((0, min(sinks, lo)), (lo, hi), (hi, right)) if b > a]
        if len(segments) == 1:
            cols: torch.Tensor | slice = slice(lo, hi)
            kb, vb = k[:, :, lo:hi], v[:, :, lo:hi]
        else:
            cols = torch.cat([torch.arange(a, b, device=q.device) for a, b in segments])
            kb = torch.cat([k[:, :, a:b] for a, b in segments], dim=2)
            vb = torch.cat([v[:, :, a:b] for a, b in segments], dim=2)
        # Past the sinks (lo >= S) the mask depends only on the block's offsets.
        key = (i1 - i0, i0 - lo, hi - lo)
        structural = masks.get(key) if lo >= sinks else None
        if structural is None:
            i = torch.arange(i0, i1, device=q.device).unsqueeze(1)
            j = torch.arange(lo, hi, device=q.device) if isinstance(cols, slice) else cols
            allowed = ((i - j).abs() < window) | (j < sinks)
            if causal:
                allowed &= j <= i
            structural = _additive(allowed, dtype)
            if lo >= sinks:
                masks[key] = structural
        user = None
        if mask is not None:
            user = _mask_cols(_mask_rows(mask, slice(i0, i1)), cols)
        block_mask = _sdpa_mask(structural, user, dtype)
        qb, kb, vb = q[:, :, i0:i1].to(dtype), kb.to(dtype), vb.to(dtype)
        if lse is None:
            out[:, :, i0:i1] = _attend(qb, kb, vb, block_mask, scale, gqa)
        else:
            if block_mask.dtype == torch.bool:
                block_mask = _additive(block_mask, dtype)
            out[:, :, i0:i1], lse[:, :, i0:i1] = attend_with_lse(qb, kb, vb, block_mask, scale)


def _rows_with_keys(mask: torch.Tensor, n_rows: int, causal: bool) -> torch.Tensor:
    """Whether query rows ``[0, n_rows)`` see any key under ``mask`` (4-D) and causality.

    Returns a bool tensor broadcastable to [B, H, n_rows, 1]. Only a user mask can empty a row:
    without one, row i always sees key i.
    """
    visible = mask if mask.dtype == torch.bool else mask > float("-inf")
    if visible.shape[3] == 1:
        # The same verdict for every key; causal rows always have key i itself to look at.
        return visible[:, :, :n_rows]
    if not causal:
        return visible[:, :, :n_rows].any(dim=3, keepdim=True)
    if visible.shape[2] == 1:
        # One key mask for all rows: row i sees something iff some key j <= i is visible.
        seen = visible[:, :, 0].cumsum(dim=-1)[..., :n_rows] > 0
        return seen.unsqueeze(-1)
    n_k = visible.shape[3]
    chunk = max(1, _DENSE_CHUNK_ELEMENTS // n_k)
    parts = []
    for r0 in range(0, n_rows, chunk):
        r1 = min(r0 + chunk, n_rows)
        lower = torch.arange(n_k, device=mask.device) <= torch.arange(r0, r1, device=mask.device).unsqueeze(1)
        parts.append((visible[:, :, r0:r1] & lower).any(dim=3, keepdim=True))
    return torch.cat(parts, dim=2)


def delta_attention_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None = None,
    scale: float | None = None,
    correction: str = "paper",
    retrieve: int = 0,
    block_size: int | None = None,
) -> torch.Tensor:
    """Delta Attention in O(N (W + S) + N^2 / G) time and O(N) extra memory beyond the output.

    Args:
        q: [B, Hq, Nq, D]; k: [B, Hkv, Nk, D]; v: [B, Hkv, Nk, Dv]; ``Hq % Hkv == 0``.
        attn_mask: bool (True = may attend) or additive float, broadcastable to [B, Hq, Nq, Nk].
        causal, window, sinks, stride, tail, scale, correction, retrieve: as in
            :func:`delta_attention_reference`.
        block_size: queries per block of the sparse pass (default :func:`default_block_size`).

    Returns:
        [B, Hq, Nq, Dv] in the dtype of q, equal to the reference up to rounding.
    """
    shape: AttentionShape = check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )
    if block_size is not None and (isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1):
        raise ValueError(f"block_size must be an integer >= 1 or None; got {block_size!r}")
    rules = parse_corrections(correction, shape.q_heads)
    scale = resolve_scale(scale, shape.head_dim)
    tail = resolve_tail(tail, stride)
    dtype = _compute_dtype(q.dtype)
    mask = None if attn_mask is None else _as_4d(attn_mask)
    n = shape.q_len
    if n == 0 or shape.kv_len == 0:
        return q.new_zeros(shape.batch, shape.q_heads, n, shape.value_dim)

    n_corrected = num_corrected_rows(n, stride, tail)
    all_dense = (
        shape.q_len != shape.kv_len  # decode step or chunk: dense, bottom-right causal
        or n_corrected == 0  # everything is tail
        or window >= n  # the window already covers every pair
        # every row is its own anchor: paper and taylor then equal dense ("none" stays sparse)
        or (stride == 1 and Correction.NONE not in rules)
    )
    if all_dense:
        rows = torch.arange(n, device=q.device)
        offset = shape.kv_len - shape.q_len
        return _dense_rows(q, k, v, mask, rows, causal=causal, offset=offset, scale=scale, dtype=dtype).to(q.dtype)

    params = dict(
        n_corrected=n_corrected, causal=causal, window=window, sinks=sinks, stride=stride, scale=scale,
        dtype=dtype, block=block_size or default_block_size(window), retrieve=retrieve,
    )
    if len(set(rules)) == 1:
        out = _delta_one_rule(q, k, v, mask, rules[0], **params)
    else:
        # A per-head plan: run each rule on the query heads of one kv head that use it, so that
        # no head pays for a rule it does not use and K/V are still read, not repeated.
        out = q.new_empty(shape.batch, shape.q_heads, n, shape.value_dim, dtype=dtype)
        for kv_head in range(shape.kv_heads):
            heads = range(kv_head * shape.group, (kv_head + 1) * shape.group)
            for rule in dict.fromkeys(rules[h] for h in heads):
                idx = torch.tensor([h for h in heads if rules[h] is rule], device=q.device)
                head_mask = mask if mask is None or mask.shape[1] == 1 else mask.index_select(1, idx)
                kv = slice(kv_head, kv_head + 1)
                out[:, idx] = _delta_one_rule(q.index_select(1, idx), k[:, kv], v[:, kv], head_mask, rule, **params)

    if mask is not None:
        # A row with no visible key outputs zeros, correction included (DESIGN §1).
        has_key = _rows_with_keys(mask, n_corrected, causal)
        out[:, :, :n_corrected] = torch.where(has_key, out[:, :, :n_corrected], 0.0)
    return out.to(q.dtype)


def _delta_one_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    rule: Correction,
    *,
    n_corrected: int,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    scale: float,
    dtype: torch.dtype,
    block: int,
    retrieve: int,
) -> torch.Tensor:
    """Delta Attention of every head of q under one correction rule; [B, Hq, N, Dv] in ``dtype``."""
    B, Hq, n, _ = q.shape
    out = q.new_empty(B, Hq, n, v.shape[3], dtype=dtype)
    n_anchors = n_corrected // stride
    anchors = torch.arange(0, n_corrected, stride, device=q.device)
    tail_rows = torch.arange(n_corrected, n, device=q.device)
    dense_kwargs = dict(causal=causal, offset=0, scale=scale, dtype=dtype)
    sparse_kwargs = dict(n_rows=n_corrected, causal=causal, window=window, sinks=sinks, scale=scale, block=block)

    long_range = dict(
        causal=causal, window=window, sinks=sinks, scale=scale, dtype=dtype, chunk_elements=_DENSE_CHUNK_ELEMENTS,
        retrieve=retrieve,
    )

    def sparse_part(lse: torch.Tensor | None, picked: torch.Tensor | None) -> None:
        """Rows [0, Np) attend to their window and sinks, plus their anchor's picked keys."""
        _sparse_rows(q, k, v, mask, out, **sparse_kwargs, lse=lse)
        if picked is not None:
            merge_retrieved(
                out[:, :, :n_corrected], lse, q, k, v, mask, picked, stride=stride, window=window, sinks=sinks,
                scale=scale,
            )

    # With retrieval, the sparse part needs its log-normalisers to merge the picked keys in.
    lse_s = q.new_empty(B, Hq, n_corrected, dtype=dtype) if retrieve or rule is Correction.TAYLOR else None
    if rule is Correction.TAYLOR:
        out[:, :, n_corrected:] = _dense_rows(q, k, v, mask, tail_rows, **dense_kwargs)
        lse_r, out_r, mean_key, picked = long_range_stats(q, k, v, mask, anchors, **long_range)
        sparse_part(lse_s, picked)
        taylor_mix(out[:, :, :n_corrected], lse_s, q[:, :, :n_corrected], lse_r, out_r, mean_key, stride=stride, scale=scale)
        return out

    picked = long_range_stats(q, k, v, mask, anchors, **long_range, stats=False)[3] if retrieve else None
    if rule is Correction.NONE:
        out[:, :, n_corrected:] = _dense_rows(q, k, v, mask, tail_rows, **dense_kwargs)
        sparse_part(lse_s, picked)
        return out

    # Paper: dense rows are the anchors 0, G, ..., Np - G and the tail [Np, N), in one pass.
    dense = _dense_rows(q, k, v, mask, torch.cat([anchors, tail_rows]), **dense_kwargs)
    out[:, :, n_corrected:] = dense[:, :, n_anchors:]
    sparse_part(lse_s, picked)
    # O(i) = O_s(i) + O_d(a) - O_s(a): one delta per anchor, broadcast over its G rows.
    corrected = out[:, :, :n_corrected].unflatten(2, (n_anchors, stride))
    delta = dense[:, :, :n_anchors] - corrected[:, :, :, 0]
    corrected += delta.unsqueeze(3)
    return out
