"""Delta Attention composed from FlexAttention: the baseline the Triton kernels must beat.

Two ``flex_attention`` calls and an add, as one would write it without a custom kernel:

1. sparse attention of every row under a block mask of window + sinks (causal);
2. dense attention of the dense rows only (anchors ``0, G, ..., Np - G`` and the tail
   ``[Np, N)``), gathered into a short query tensor, under a causal block mask on their
   original positions;
3. ``out[:Np] += O_d(a) - O_s(a)`` broadcast over each anchor's G rows, ``out[Np:] = O_d(tail)``.

Block masks are built once per shape (setup, like a deployed model would cache them); the
returned callable runs the three steps. Causal only, no attention mask: the benchmark's case.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..ops.checks import num_corrected_rows, resolve_tail

__all__ = ["flex_delta_attention"]


def flex_delta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None = None,
    compile: bool = True,
) -> Callable[[], torch.Tensor]:
    """Build the block masks for q [B, Hq, N, D], k/v [B, Hkv, N, D] and return the call.

    ``compile=False`` runs FlexAttention eagerly (it then materialises scores: small N only,
    any device); the benchmark compiles it, as FlexAttention is meant to be used.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    n = q.shape[2]
    tail = resolve_tail(tail, stride)
    n_corrected = num_corrected_rows(n, stride, tail)
    n_anchors = n_corrected // stride
    device = q.device
    rows = torch.cat([torch.arange(0, n_corrected, stride, device=device), torch.arange(n_corrected, n, device=device)])

    def sparse_mask(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & ((q_idx - kv_idx < window) | (kv_idx < sinks))

    def dense_mask(b, h, q_idx, kv_idx):
        return kv_idx <= rows[q_idx]

    # Large N needs the compiled mask builder (the eager one materialises N x N booleans).
    build = dict(device=device, _compile=compile)
    sparse_blocks = create_block_mask(sparse_mask, None, None, n, n, **build)
    dense_blocks = create_block_mask(dense_mask, None, None, rows.numel(), n, **build)
    attend = torch.compile(flex_attention, dynamic=False) if compile else flex_attention
    gqa = q.shape[1] != k.shape[1]

    def run() -> torch.Tensor:
        out = attend(q, k, v, block_mask=sparse_blocks, enable_gqa=gqa)
        dense = attend(q[:, :, rows], k, v, block_mask=dense_blocks, enable_gqa=gqa)
        if n_anchors:
            corrected = out[:, :, :n_corrected].unflatten(2, (n_anchors, stride))
            corrected += (dense[:, :, :n_anchors] - corrected[:, :, :, 0]).unsqueeze(3)
        out[:, :, n_corrected:] = dense[:, :, n_anchors:]
        return out

    return run
