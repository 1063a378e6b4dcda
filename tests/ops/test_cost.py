"""The pair counts behind the FLOP-ideal ratios, against a brute-force count of the spec's masks."""

from __future__ import annotations

import pytest
import torch

from delta_opt.ops.cost import attention_cost


def _masks(n, window, sinks, stride, tail, causal):
    """The spec's dense and sparse masks [n, n], Np, and the anchor rows."""
    i = torch.arange(n).view(-1, 1)
    j = torch.arange(n).view(1, -1)
    dense = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool)
    sparse = dense & (((i - j).abs() < window) | (j < sinks))
    n_corrected = max(0, (n - tail) // stride * stride)
    return dense, sparse, n_corrected, torch.arange(0, n_corrected, stride)


def _brute_force(n, window, sinks, stride, tail, causal):
    dense, sparse, n_corrected, anchors = _masks(n, window, sinks, stride, tail, causal)
    delta = sparse[:n_corrected].sum() + dense[anchors].sum() + dense[n_corrected:].sum()
    return int(dense.sum()), int(delta)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("n", "window", "sinks", "stride", "tail"),
    [(100, 7, 3, 8, 10), (257, 30, 40, 16, 128), (64, 100, 0, 4, 0), (50, 1, 0, 1, 0), (33, 5, 2, 64, 0)],
)
def test_pair_counts_match_brute_force(causal, n, window, sinks, stride, tail):
    cost = attention_cost(n, window=window, sinks=sinks, stride=stride, tail=tail, causal=causal)
    assert (cost.dense_pairs, cost.delta_pairs) == _brute_force(n, window, sinks, stride, tail, causal)


def test_paper_defaults_ideal_speedups():
    # DESIGN §1: about 16x at 128K and about 46x at 1M tokens for causal attention.
    at_128k = attention_cost(131072, window=2048, sinks=1024, stride=64, causal=True).ideal_speedup
    at_1m = attention_cost(1 << 20, window=2048, sinks=1024, stride=64, causal=True).ideal_speedup
    assert 15 < at_128k < 17
    assert 45 < at_1m < 47


def _brute_force_rule(n, window, sinks, stride, tail, causal, rule, retrieve):
    dense, sparse, n_corrected, anchors = _masks(n, window, sinks, stride, tail, causal)
    long_range = (dense[anchors] & ~sparse[anchors]).sum(-1)  # per anchor
    total = int(sparse[:n_corrected].sum() + dense[n_corrected:].sum())
    if rule == "paper":
        total += int(dense[anchors].sum())
    elif rule == "taylor" or retrieve:
        total += int(long_range.sum())
    if rule == "taylor":
        total += n_corrected
    for row in range(n_corrected):
        total += min(retrieve, int(long_range[row // stride]))
    return total


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("rule", "retrieve"), [("paper", 0), ("none", 0), ("taylor", 0), ("none", 5), ("taylor", 3), ("paper", 40)])
@pytest.mark.parametrize(("n", "window", "sinks", "stride", "tail"), [(100, 7, 3, 8, 10), (257, 30, 40, 16, 128)])
def test_rule_and_retrieval_counts_match_brute_force(causal, rule, retrieve, n, window, sinks, stride, tail):
    cost = attention_cost(
        n, window=window, sinks=sinks, stride=stride, tail=tail, causal=causal, correction=rule, retrieve=retrieve
    )
    assert cost.delta_pairs == _brute_force_rule(n, window, sinks, stride, tail, causal, rule, retrieve)


def test_none_without_retrieval_is_the_cheapest():
    kw = dict(window=128, sinks=32, stride=16, causal=True)
    none, taylor, paper = (attention_cost(4096, **kw, correction=r).delta_pairs for r in ("none", "taylor", "paper"))
    assert none < taylor < paper


def test_op_pairs_averages_a_per_head_plan():
    from delta_opt.ops.cost import op_pairs

    kw = dict(window=16, sinks=4, stride=8, tail=16, causal=True, retrieve=2)
    one = {rule: attention_cost(200, **kw, correction=rule).delta_pairs for rule in ("none", "taylor", "paper")}
    assert op_pairs(200, {**kw, "correction": "taylor"}) == one["taylor"]
    assert op_pairs(200, {**kw, "correction": "none,paper,paper,taylor"}) == (one["none"] + 2 * one["paper"] + one["taylor"]) / 4
