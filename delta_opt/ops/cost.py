"""Exact work of dense vs Delta Attention, counted as attended (query, key) pairs.

Every attended pair costs the same ``2 D + 2 Dv`` FLOPs (one dot product for the score, one
multiply-add row of the value product) in either method, so the pair counts give the FLOP-ideal
speed-up that a perfect kernel of each kind would reach. Benchmarks report measured speed-ups
next to this number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import num_corrected_rows, resolve_tail

__all__ = ["AttentionCost", "attention_cost"]


@dataclass(frozen=True)
class AttentionCost:
    """Attended pairs per (batch, head) of dense and of delta attention for one sequence length."""

    n: int
    dense_pairs: int
    sparse_pairs: int  # window + sinks, rows [0, Np)
    anchor_pairs: int  # dense anchor rows 0, G, ..., Np - G
    tail_pairs: int  # dense rows [Np, N)

    @property
    def delta_pairs(self) -> int:
        return self.sparse_pairs + self.anchor_pairs + self.tail_pairs

    @property
    def ideal_speedup(self) -> float:
        """Dense pairs / delta pairs: the speed-up a kernel that skips nothing it needn't would get."""
        return self.dense_pairs / max(1, self.delta_pairs)

    def flops(self, *, heads: int, head_dim: int, value_dim: int | None = None, batch: int = 1) -> dict[str, float]:
        """FLOPs of both methods for ``batch`` x ``heads`` heads of the given dims."""
        per_pair = 2 * head_dim + 2 * (head_dim if value_dim is None else value_dim)
        scale = batch * heads * per_pair
        return {"dense": float(self.dense_pairs * scale), "delta": float(self.delta_pairs * scale)}


def _dense_row_pairs(rows: np.ndarray, n: int, causal: bool) -> int:
    return int((rows + 1).sum()) if causal else int(rows.size) * n


def attention_cost(n: int, *, window: int, sinks: int, stride: int, tail: int | None = None, causal: bool) -> AttentionCost:
    """Count the (query, key) pairs each method attends for a sequence of ``n`` tokens (no mask)."""
    tail = resolve_tail(tail, stride)
    n_corrected = num_corrected_rows(n, stride, tail)
    rows = np.arange(n, dtype=np.int64)
    dense_pairs = _dense_row_pairs(rows, n, causal)

    i = rows[:n_corrected]
    lo = np.maximum(0, i - window + 1)
    hi = i + 1 if causal else np.minimum(n, i + window)  # window keys are [lo, hi)
    # The union of the window [lo, hi) and the sinks [0, S'): sinks left and right of the window.
    n_sinks = min(sinks, n)
    outside = np.minimum(n_sinks, lo) + (0 if causal else np.maximum(0, n_sinks - hi))
    sparse_pairs = int((hi - lo + outside).sum())

    anchor_pairs = _dense_row_pairs(np.arange(0, n_corrected, stride, dtype=np.int64), n, causal)
    tail_pairs = _dense_row_pairs(rows[n_corrected:], n, causal)
    return AttentionCost(n, dense_pairs, sparse_pairs, anchor_pairs, tail_pairs)
