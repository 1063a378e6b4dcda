"""Pieces of the ``taylor`` correction (see :mod:`delta_opt.plan`) for the blocked implementation.

- :func:`attend_with_lse`: one block of attention that also returns each row's log-normaliser;
- :func:`long_range_stats`: for anchor rows, attention restricted to the keys outside their window
  and sinks — its log-normaliser, output and mean key;
- :func:`merge_retrieved`: adds each anchor's retrieved keys to the sparse attention of its rows;
- :func:`taylor_mix`: mixes each row's sparse output with its anchor's long-range output.

Grouped-query heads are handled by folding the query heads of a kv head into the row dimension
([B, Hkv, R * L, D] against [B, Hkv, K, D]), so K/V are never repeated.
"""

from __future__ import annotations

import torch

__all__ = ["attend_with_lse", "long_range_stats", "merge_retrieved", "taylor_mix"]

_NEG_INF = float("-inf")


def _fold(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[B, Hq, L, D] -> [B, Hkv, R * L, D] with R = Hq / Hkv (query heads of one kv head together)."""
    B, Hq, L, D = q.shape
    return q.reshape(B, kv_heads, (Hq // kv_heads) * L, D)


def _unfold(x: torch.Tensor, q_heads: int) -> torch.Tensor:
    """The inverse of :func:`_fold` for [B, Hkv, R * L, ...] -> [B, Hq, L, ...]."""
    B, Hkv, RL = x.shape[:3]
    return x.reshape(B, q_heads, RL * Hkv // q_heads, *x.shape[3:])


def _fold_mask(mask: torch.Tensor, q_heads: int, kv_heads: int) -> torch.Tensor:
    """An additive mask broadcastable to [B, Hq, L, K] as one broadcastable to [B, Hkv, R * L, K]."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    Bm, Hm, L, K = mask.shape
    group = q_heads // kv_heads
    if Hm == 1:  # the same mask for every head: repeat its rows once per folded head
        return mask.expand(Bm, group, L, K).reshape(Bm, 1, group * L, K)
    return mask.reshape(Bm, kv_heads, group * L, K)


def attend_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the log-normaliser of every row.

    q [B, Hq, L, D], k [B, Hkv, K, D], v [B, Hkv, K, Dv], mask additive (0 / -inf / bias) and
    broadcastable to [B, Hq, L, K]. Returns (out [B, Hq, L, Dv], lse [B, Hq, L]); a row with no
    visible key gives out 0 and lse -inf.

    On the CPU with D == Dv this is ATen's fused flash kernel (the one SDPA uses), which returns
    the log-normaliser for free; elsewhere it is matmul + logsumexp.
    """
    Hq, Hkv = q.shape[1], k.shape[1]
    qf = _fold(q, Hkv)
    mf = None if mask is None else _fold_mask(mask, Hq, Hkv)
    if q.device.type == "cpu" and q.shape[-1] == v.shape[-1]:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qf, k, v, 0.0, False, attn_mask=mf, scale=scale)
        if mf is not None:  # the kernel reports 0, not -inf, for rows with no visible key
            lse = torch.where((mf > _NEG_INF).any(dim=-1), lse, _NEG_INF)
    else:
        scores = (qf @ k.transpose(-1, -2)) * scale
        if mf is not None:
            scores = scores + mf
        lse = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))
        out = weights @ v
    return _unfold(out, Hq), _unfold(lse, Hq)


def long_range_stats(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    anchors: torch.Tensor,
    *,
    causal: bool,
    window: int,
    sinks: int,
    scale: float,
    dtype: torch.dtype,
    chunk_elements: int,
    retrieve: int = 0,
    stats: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Attention of the anchor rows over their long-range keys only.

    The long-range keys of anchor a are those dense attention may see but the sparse part may
    not: ``|a - j| >= W and j >= S`` (and ``j <= a`` when causal). ``mask`` is the user's mask as
    a 4-D tensor (bool or additive) or None. With ``retrieve=K`` the anchor's K highest-scoring
    long-range keys (ties to the lower index) are picked out and left out of the statistics,
    which then cover the remaining long-range keys.

    Returns (lse_r [B, Hq, A], out_r [B, Hq, A, Dv], mean_key [B, Hq, A, D], picked) in ``dtype``,
    where A = len(anchors) and ``picked`` is [B, Hq, A, K] int64 key indices, -1 where an anchor
    has fewer than K long-range keys (None when ``retrieve`` is 0). An anchor with no remaining
    long-range key has lse -inf and zero output and mean key. ``stats=False`` only picks.
    """
    B, Hq, _, D = q.shape
    Hkv, n_k, Dv = k.shape[1], k.shape[2], v.shape[3]
    n_anchors = anchors.numel()
    lse_r = q.new_full((B, Hq, n_anchors), _NEG_INF, dtype=dtype)
    out_r = q.new_zeros((B, Hq, n_anchors, Dv), dtype=dtype)
    mean_key = q.new_zeros((B, Hq, n_anchors, D), dtype=dtype)
    picked = q.new_full((B, Hq, n_anchors, retrieve), -1, dtype=torch.long) if retrieve > 0 else None
    kv = torch.cat([v, k], dim=-1)  # one product gives both the output and the mean key
    chunk = max(1, chunk_elements // max(1, n_k))
    for c0 in range(0, n_anchors, chunk):
        rows = anchors[c0 : c0 + chunk]
        # Causal anchors see long-range keys only up to a - W: skip the rest outright.
        n_keys = min(n_k, int(rows[-1]) - window + 1) if causal else n_k
        if n_keys <= sinks:
            continue
        j = torch.arange(n_keys, device=q.device)
        a = rows.unsqueeze(1)
        allowed = ((a - j).abs() >= window) & (j >= sinks)
        if causal:
            allowed &= j <= a
        bias = torch.zeros(allowed.shape, dtype=dtype, device=q.device).masked_fill_(~allowed, _NEG_INF)
        if mask is not None:
            user = mask if mask.shape[2] == 1 else mask.index_select(2, rows)
            user = user[..., :n_keys] if user.shape[3] > 1 else user
            bias = bias.masked_fill(~user, _NEG_INF) if user.dtype == torch.bool else bias + user.to(dtype)
        qf = _fold(q.index_select(2, rows).to(dtype), Hkv)
        scores = (qf @ k[:, :, :n_keys].to(dtype).transpose(-1, -2)) * scale + _fold_mask(bias, Hq, Hkv)
        span = slice(c0, c0 + rows.numel())
        if picked is not None:
            count = min(retrieve, n_keys)
            order = scores.sort(dim=-1, descending=True, stable=True).indices[..., :count]
            valid = scores.gather(-1, order) > _NEG_INF  # fewer long-range keys than K: fewer picks
            picked[:, :, span, :count] = _unfold(torch.where(valid, order, -1), Hq)
            scores = scores.scatter(-1, order, _NEG_INF)  # the rest is what the statistics cover
        if not stats:
            continue
        lse = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))
        both = _unfold(weights @ kv[:, :, :n_keys].to(dtype), Hq)
        lse_r[:, :, span] = _unfold(lse, Hq)
        out_r[:, :, span] = both[..., :Dv]
        mean_key[:, :, span] = both[..., Dv:]
    return lse_r, out_r, mean_key, picked


def _gather_keys(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, Hkv, N, E] at index [B, Hq, A, K] (per query head) -> [B, Hq, A, K, E], without repeating x."""
    B, Hkv, _, E = x.shape
    Hq, A, K = index.shape[1:]
    folded = index.reshape(B, Hkv, -1, 1).expand(-1, -1, -1, E)
    return x.gather(2, folded).reshape(B, Hq, A, K, E)


def merge_retrieved(
    out: torch.Tensor,
    lse: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    picked: torch.Tensor,
    *,
    stride: int,
    window: int,
    sinks: int,
    scale: float,
    chunk_anchors: int = 64,
) -> None:
    """Widen the sparse attention of rows [0, Np) by their anchor's picked keys, in place.

    out [B, Hq, Np, Dv] and lse [B, Hq, Np] hold the window + sink attention and its
    log-normaliser; picked [B, Hq, A, K] the keys (-1: none) of each anchor (A = Np / G). Row i
    attends to the picked keys of its anchor that are dense for it and not already in its window
    or sinks; the two parts are merged by their log-normalisers. ``mask`` is the user's 4-D mask
    or None. Causality needs no check: a causal anchor picks only keys j <= a - W < i.
    """
    B, Hq, n_rows, Dv = out.shape
    n_anchors = picked.shape[2]
    dtype = out.dtype
    for a0 in range(0, n_anchors, chunk_anchors):
        a1 = min(a0 + chunk_anchors, n_anchors)
        index = picked[:, :, a0:a1]  # [B, Hq, A', K]
        safe = index.clamp_min(0)
        keys = _gather_keys(k, safe).to(dtype)  # [B, Hq, A', K, D]
        values = _gather_keys(v, safe).to(dtype)
        rows = torch.arange(a0 * stride, a1 * stride, device=q.device).view(a1 - a0, stride, 1)
        q_rows = q[:, :, a0 * stride : a1 * stride].to(dtype).unflatten(2, (a1 - a0, stride))
        scores = scale * torch.einsum("bhagd,bhakd->bhagk", q_rows, keys)  # [B, Hq, A', G, K]
        j = index.unsqueeze(3)  # [B, Hq, A', 1, K]
        keep = (j >= 0) & ((rows - j).abs() >= window) & (j >= sinks)
        if mask is not None:
            user = _mask_at(mask, rows, j, B, Hq)
            if user.dtype == torch.bool:
                keep &= user
            else:
                scores = scores + user.to(dtype)
        scores = scores.masked_fill(~keep, _NEG_INF)
        lse_b = torch.logsumexp(scores, dim=-1)  # [B, Hq, A', G]
        weights = torch.exp(scores - torch.where(torch.isfinite(lse_b), lse_b, 0.0).unsqueeze(-1))
        out_b = torch.einsum("bhagk,bhake->bhage", weights, values)
        span = slice(a0 * stride, a1 * stride)
        lse_a = lse[:, :, span].unflatten(2, (a1 - a0, stride))
        total = torch.logaddexp(lse_a, lse_b)
        share_a = torch.where(torch.isfinite(total), torch.exp(lse_a - total), 0.0).unsqueeze(-1)
        share_b = torch.where(torch.isfinite(total), torch.exp(lse_b - total), 0.0).unsqueeze(-1)
        merged = share_a * out[:, :, span].unflatten(2, (a1 - a0, stride)) + share_b * out_b
        out[:, :, span] = merged.flatten(2, 3)
        lse[:, :, span] = total.flatten(2, 3)


def _mask_at(mask: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """The 4-D user mask at query rows [A', G, 1] and key columns [B, Hq, A', 1, K] -> [B, Hq, A', G, K]."""
    Bm, Hm, Qm, Km = mask.shape
    b = torch.arange(batch, device=mask.device).view(-1, 1, 1, 1, 1) if Bm > 1 else 0
    h = torch.arange(heads, device=mask.device).view(1, -1, 1, 1, 1) if Hm > 1 else 0
    i = rows if Qm > 1 else 0
    j = cols.clamp_min(0) if Km > 1 else 0
    return mask[b, h, i, j].expand(batch, heads, *rows.shape[:2], cols.shape[-1])


def taylor_mix(
    out: torch.Tensor,
    lse_s: torch.Tensor,
    q: torch.Tensor,
    lse_r: torch.Tensor,
    out_r: torch.Tensor,
    mean_key: torch.Tensor,
    *,
    stride: int,
    scale: float,
) -> None:
    """Apply the ``taylor`` rule in place to the corrected rows.

    out [B, Hq, Np, Dv] holds the sparse outputs O_s of rows [0, Np) and lse_s [B, Hq, Np] their
    log-normalisers; q [B, Hq, Np, D]; lse_r, out_r, mean_key are the anchors' long-range stats
    (:func:`long_range_stats`, A = Np / G anchors). Row i of anchor a becomes
    ``(1 - w) O_s(i) + w O_r(a)`` with ``w = sigmoid(lse_r(a) + s (q_i - q_a) . mu(a) - lse_s(i))``.
    """
    B, Hq, n_rows, Dv = out.shape
    n_anchors = n_rows // stride
    q_rows = q.reshape(B, Hq, n_anchors, stride, -1).to(out.dtype)
    # l_hat(i) = [l_r(a) - s q_a . mu(a)] + s q_i . mu(a): the bracket is one number per anchor.
    offset = lse_r - scale * (q_rows[:, :, :, 0] * mean_key).sum(-1)
    l_hat = offset.unsqueeze(-1) + scale * torch.einsum("bhagd,bhad->bhag", q_rows, mean_key)
    weight = torch.sigmoid(l_hat - lse_s.reshape(B, Hq, n_anchors, stride))
    # No long-range key: nothing to mix in (this also clears the NaN of -inf - -inf).
    weight = torch.where(torch.isfinite(lse_r).unsqueeze(-1), weight, 0.0).unsqueeze(-1)
    rows = out.view(B, Hq, n_anchors, stride, Dv)
    rows.mul_(1 - weight).add_(weight * out_r.unsqueeze(3))
