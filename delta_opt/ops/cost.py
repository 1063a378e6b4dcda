"""Exact work of dense vs Delta Attention, counted as attended (query, key) pairs.

Every attended pair costs the same ``2 D + 2 Dv`` FLOPs (one dot product for the score, one
multiply-add row of the value product) in either method, so the pair counts give the FLOP-ideal
speed-up that a perfect kernel of each kind would reach. Benchmarks report measured speed-ups
next to this number.

What the anchor rows cost depends on the correction rule (:class:`~delta_opt.plan.Correction`):
``paper`` attends each anchor densely (its sparse part is inside that row); ``taylor`` attends the
anchor's long-range keys (outside its window and sinks) and adds one mean-key dot product per
corrected row; ``none`` attends nothing at the anchors. Retrieval (``retrieve = K``) makes every
anchor score its long-range keys (to pick the top K) and every corrected row attend up to K more.
Score-only and value work are counted alike, so these counts are an upper bound for retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..plan import Correction
from .checks import num_corrected_rows, resolve_tail

__all__ = ["AttentionCost", "attention_cost", "op_pairs"]


@dataclass(frozen=True)
class AttentionCost:
    """Attended pairs per (batch, head) of dense and of delta attention for one sequence length."""

    n: int
    dense_pairs: int
    sparse_pairs: int  # window + sinks, rows [0, Np)
    anchor_pairs: int  # anchor rows 0, G, ..., Np - G: dense (paper) or long-range keys (taylor, retrieval)
    tail_pairs: int  # dense rows [Np, N)
    extra_pairs: int = 0  # taylor's mean-key dots and retrieved keys, rows [0, Np)

    @property
    def delta_pairs(self) -> int:
        return self.sparse_pairs + self.anchor_pairs + self.tail_pairs + self.extra_pairs

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


def attention_cost(
    n: int,
    *,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None = None,
    causal: bool,
    correction: Correction | str = Correction.PAPER,
    retrieve: int = 0,
) -> AttentionCost:
    """Count the (query, key) pairs each method attends for a sequence of ``n`` tokens (no mask),
    with one correction rule and ``retrieve`` long-range keys per anchor block."""
    rule = Correction.parse(correction)
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

    anchors = np.arange(0, n_corrected, stride, dtype=np.int64)
    anchor_dense = (anchors + 1) if causal else np.full(anchors.shape, n, dtype=np.int64)
    anchor_sparse = (hi - lo + outside)[anchors]
    long_range = anchor_dense - anchor_sparse  # keys an anchor sees densely but not sparsely
    extra = 0
    if rule is Correction.PAPER:
        anchor_pairs = int(anchor_dense.sum())
    elif rule is Correction.TAYLOR or retrieve > 0:
        anchor_pairs = int(long_range.sum())
    else:
        anchor_pairs = 0
    if rule is Correction.TAYLOR:
        extra += n_corrected  # one q . mean-key per corrected row
    if retrieve > 0:
        # Row i of block b attends min(K, long-range keys of anchor b) more keys.
        extra += int(np.minimum(retrieve, np.repeat(long_range, stride)[:n_corrected]).sum())
    tail_pairs = _dense_row_pairs(rows[n_corrected:], n, causal)
    return AttentionCost(n, dense_pairs, sparse_pairs, anchor_pairs, tail_pairs, extra)


def op_pairs(n: int, kwargs: dict) -> float:
    """Attended pairs per head, averaged over heads, of one ``delta_attention`` call on ``n``
    tokens given its keyword arguments (``correction``: one rule, or comma-separated per head)."""
    rules = kwargs["correction"].split(",")
    return sum(
        attention_cost(
            n, window=kwargs["window"], sinks=kwargs["sinks"], stride=kwargs["stride"], tail=kwargs["tail"],
            causal=kwargs["causal"], correction=rule, retrieve=kwargs["retrieve"],
        ).delta_pairs
        for rule in rules
    ) / len(rules)  # fmt: skip
