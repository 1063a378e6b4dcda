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
- i <  Np: O(i) = O_s(i) + O_d(a) - O_s(a), a = G * floor(i / G)
- i >= Np: O(i) = O_d(i)
- a row with no dense key outputs zeros, correction included.

A float ``attn_mask`` is added to the scores; its ``-inf`` entries are keys that may not be
attended. When Nq != Nk (decode steps, chunked prefill) the result is dense attention with the
causal diagonal aligned bottom-right: query i sees keys ``j <= i + Nk - Nq``.
"""

from __future__ import annotations

import torch

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
) -> torch.Tensor:
    """Delta Attention exactly as specified, computed in the dtype of ``q``.

    Args:
        q: [B, Hq, Nq, D]; k: [B, Hkv, Nk, D]; v: [B, Hkv, Nk, Dv]; ``Hq % Hkv == 0``.
        attn_mask: bool (True = may attend) or additive float, broadcastable to [B, Hq, Nq, Nk].
        causal, window, sinks, stride, tail, scale: see DESIGN §1; ``tail=None`` is
            ``max(128, stride)``, ``scale=None`` is ``1/sqrt(D)``.

    Returns:
        [B, Hq, Nq, Dv] in the dtype of q.
    """
    shape = check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale
    )
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
    out = out_dense.clone()
    rows = torch.arange(n_corrected, device=q.device)
    anchors = (rows // stride) * stride
    out[:, :, rows] = out_sparse[:, :, rows] + out_dense[:, :, anchors] - out_sparse[:, :, anchors]

    has_key = dense.any(dim=-1, keepdim=True)
    return torch.where(has_key, out, torch.zeros_like(out))
