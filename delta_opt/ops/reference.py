"""The specification of Delta Attention (DESIGN §1), written as plainly as possible.

This is the oracle every other implementation is tested against. It materialises the full
[B, Hq, Nq, Nk] score matrix, repeats K/V per query head and computes in the inputs' dtype
(float64 included), so it is slow and memory-hungry on purpose: every line maps to a line of
the spec.

Semantics, for query row i and key j (Nq == Nk == N):

- dense(i, j)  = (j <= i if causal else True) and attn_mask(i, j)
- sparse(i, j) = dense(i, j) and (|i - j| < W or j < S)
- O_d, O_s: softmax attention restricted to dense / sparse keys; a row with no key gives 0
- Np = max(0, floor((N - T) / G) * G)
- i <  Np: O(i) = O_s(i) + O_d(a) - O_s(a), a = G * floor(i / G)   (correction "paper")
- i >= Np: O(i) = O_d(i)
- a row with no dense key outputs zeros, correction included.

Other correction rules (``correction=``, one per query head or one for all; :mod:`delta_opt.plan`):
"none" keeps O_s(i) for i < Np; "taylor" mixes O_s(i) with the anchor's long-range output
O_r(a), weighted by sigmoid(l_r(a) + s (q_i - q_a) . mu(a) - l_s(i)).

``retrieve=K`` (K >= 1) widens the sparse set of the corrected rows: each anchor a picks the K
long-range keys (dense for a, outside its window and sinks) with the highest scores
s q_a.k_j + bias(a, j) — ties to the lower index — and every row i of its block also attends to
those of them that are dense for i: sparse'(i, j) = sparse(i, j) or (j in top_K(a) and
dense(i, j)). Every rule then reads sparse' where it reads sparse.

A float ``attn_mask`` is added to the scores; its ``-inf`` entries are keys that may not be
attended. When Nq != Nk (decode steps, chunked prefill) the result is dense attention with the
causal diagonal aligned bottom-right: query i sees keys ``j <= i + Nk - Nq``.
"""

from __future__ import annotations

import torch

from ..plan import Correction, parse_corrections
from .checks import check_inputs, num_corrected_rows, resolve_scale, resolve_tail

__all__ = ["delta_attention_reference", "masked_attention"]


def masked_attention(scores: torch.Tensor, allowed: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax over the allowed keys of each row, times v; rows with no allowed key give 0.

    scores [..., Nq, Nk], allowed bool broadcastable to scores, v [..., Nk, Dv] -> [..., Nq, Dv].
    """
    masked = scores.masked_fill(~allowed, float("-inf"))
    row_max = masked.amax(dim=-1, keepdim=True)
    # An empty row has max -inf; subtracting 0 instead keeps exp(-inf) = 0 rather than NaN.
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(masked - row_max)
    total = weights.sum(dim=-1, keepdim=True)
    weights = weights / torch.where(total > 0, total, torch.ones_like(total))
    return weights @ v


def _retrieved(
    scores: torch.Tensor,
    dense: torch.Tensor,
    sparse: torch.Tensor,
    rows: torch.Tensor,
    anchors: torch.Tensor,
    count: int,
) -> torch.Tensor:
    """The keys rows [0, Np) gain from their anchor's top-``count`` long-range keys, [B, H, N, N] bool."""
    far = (dense & ~sparse)[:, :, anchors]  # long-range keys of each row's anchor
    candidates = scores[:, :, anchors].masked_fill(~far, float("-inf"))
    order = candidates.sort(dim=-1, descending=True, stable=True).indices[..., :count]
    picked = torch.zeros_like(far).scatter(-1, order, True) & far  # fewer candidates than K: fewer picks
    extra = torch.zeros_like(dense)
    extra[:, :, rows] = picked & dense[:, :, rows]
    return extra


def delta_attention_reference(
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
) -> torch.Tensor:
    """Delta Attention exactly as specified, computed in the dtype of ``q``.

    Args:
        q: [B, Hq, Nq, D]; k: [B, Hkv, Nk, D]; v: [B, Hkv, Nk, Dv]; ``Hq % Hkv == 0``.
        attn_mask: bool (True = may attend) or additive float, broadcastable to [B, Hq, Nq, Nk].
        causal, window, sinks, stride, tail, scale: see DESIGN §1; ``tail=None`` is
            ``max(128, stride)``, ``scale=None`` is ``1/sqrt(D)``.
        correction: "paper", "none" or "taylor", or a comma-separated list, one per query head.
        retrieve: K >= 0 long-range keys each anchor picks for the rows of its block.

    Returns:
        [B, Hq, Nq, Dv] in the dtype of q.
    """
    shape = check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )
    rules = parse_corrections(correction, shape.q_heads)
    scale = resolve_scale(scale, shape.head_dim)
    tail = resolve_tail(tail, stride)
    n_q, n_k = shape.q_len, shape.kv_len

    k = k.repeat_interleave(shape.group, dim=1)  # the spec's "query head h reads kv head h // group"
    v = v.repeat_interleave(shape.group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale  # [B, Hq, Nq, Nk]

    i = torch.arange(n_q, device=q.device).view(-1, 1)
    j = torch.arange(n_k, device=q.device).view(1, -1)
    dense = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device)
    if causal:
        dense = j <= i + (n_k - n_q)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            dense = dense & attn_mask
        else:
            scores = scores + attn_mask.to(scores.dtype)
            dense = dense & (attn_mask > float("-inf"))
    dense = dense.expand_as(scores)

    out_dense = masked_attention(scores, dense, v)
    if n_q != n_k:
        return out_dense

    n = n_q
    sparse = dense & (((i - j).abs() < window) | (j < sinks))
    out_sparse = masked_attention(scores, sparse, v)

    n_corrected = num_corrected_rows(n, stride, tail)
    rows = torch.arange(n_corrected, device=q.device)
    anchors = (rows // stride) * stride
    if retrieve > 0 and n_corrected > 0:
        sparse = sparse | _retrieved(scores, dense, sparse, rows, anchors, retrieve)
        out_sparse = masked_attention(scores, sparse, v)
    corrected = {
        Correction.PAPER: out_sparse[:, :, rows] + out_dense[:, :, anchors] - out_sparse[:, :, anchors],
        Correction.NONE: out_sparse[:, :, rows],
    }
    if Correction.TAYLOR in rules:
        far = dense & ~sparse  # the long-range keys: dense may see them, sparse may not
        out_far = masked_attention(scores, far, v)
        mean_key = masked_attention(scores, far, k)
        lse_far = scores.masked_fill(~far, float("-inf")).logsumexp(dim=-1)
        lse_sparse = scores.masked_fill(~sparse, float("-inf")).logsumexp(dim=-1)
        # First-order estimate of row i's long-range log-normaliser, from its anchor.
        step = ((q[:, :, rows] - q[:, :, anchors]) * mean_key[:, :, anchors]).sum(-1)
        estimate = lse_far[:, :, anchors] + scale * step
        weight = torch.sigmoid(estimate - lse_sparse[:, :, rows])
        weight = torch.where(torch.isinf(lse_far[:, :, anchors]), 0.0, weight).unsqueeze(-1)
        corrected[Correction.TAYLOR] = (1 - weight) * out_sparse[:, :, rows] + weight * out_far[:, :, anchors]

    out = out_dense.clone()
    for h, rule in enumerate(rules):
        out[:, h, rows] = corrected[rule][:, h]

    has_key = dense.any(dim=-1, keepdim=True)
    return torch.where(has_key, out, torch.zeros_like(out))
