"""The reference against a second, independently written oracle: one query row at a time.

The reference is the oracle for every backend, so it is itself checked against the literal
reading of DESIGN §1, written as loops over rows with the repeat of K/V done by indexing.
"""

from __future__ import annotations

import math

import pytest
import torch

from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import make_inputs


def _row_attention(q_i, k, v, visible, bias):
    """Softmax attention of one query row over the keys where ``visible`` holds; 0 if none."""
    idx = [j for j in range(k.shape[0]) if visible[j]]
    if not idx:
        return torch.zeros(v.shape[1], dtype=v.dtype)
    scores = torch.stack([q_i @ k[j] + bias[j] for j in idx])
    weights = torch.softmax(scores, dim=0)
    return sum(w * v[j] for w, j in zip(weights, idx))


def _row_lse_and_mean_key(q_i, k, visible, bias):
    """log-sum-exp of one row's scores over the visible keys, and the softmax-weighted mean key."""
    idx = [j for j in range(k.shape[0]) if visible[j]]
    if not idx:
        return float("-inf"), torch.zeros(k.shape[1], dtype=k.dtype)
    scores = torch.stack([q_i @ k[j] + bias[j] for j in idx])
    weights = torch.softmax(scores, dim=0)
    return torch.logsumexp(scores, dim=0), sum(w * k[j] for w, j in zip(weights, idx))


def _loop_oracle(q, k, v, mask, *, causal, window, sinks, stride, tail, rules=None):
    B, Hq, N, D = q.shape
    group = Hq // k.shape[1]
    scale = 1 / math.sqrt(D)
    if mask is None:
        mask = torch.ones(1, 1, N, N, dtype=torch.bool)
    mask = mask.expand(B, Hq, N, N)
    n_corrected = max(0, (N - tail) // stride * stride)
    out = torch.zeros(B, Hq, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(Hq):
            kh, vh, m = k[b, h // group] * scale, v[b, h // group], mask[b, h]
            bias = torch.zeros(N, N, dtype=q.dtype) if m.dtype == torch.bool else m.clone().nan_to_num(neginf=0.0)
            allowed = m if m.dtype == torch.bool else m > float("-inf")

            def dense(i):
                return [allowed[i, j] and (j <= i or not causal) for j in range(N)]

            def sparse(i):
                return [d and (abs(i - j) < window or j < sinks) for j, d in enumerate(dense(i))]

            for i in range(N):
                if not any(dense(i)):
                    continue  # stays zero
                rule = "paper" if rules is None else rules[h]
                if i >= n_corrected:
                    out[b, h, i] = _row_attention(q[b, h, i], kh, vh, dense(i), bias[i])
                elif rule == "none":
                    out[b, h, i] = _row_attention(q[b, h, i], kh, vh, sparse(i), bias[i])
                elif rule == "paper":
                    a = stride * (i // stride)
                    out[b, h, i] = (
                        _row_attention(q[b, h, i], kh, vh, sparse(i), bias[i])
                        + _row_attention(q[b, h, a], kh, vh, dense(a), bias[a])
                        - _row_attention(q[b, h, a], kh, vh, sparse(a), bias[a])
                    )
                else:  # taylor: the mixing written out for one row (kh is already scaled)
                    a = stride * (i // stride)
                    far_a = [d and not s for d, s in zip(dense(a), sparse(a))]
                    lse_far, mean_key = _row_lse_and_mean_key(q[b, h, a], kh, far_a, bias[a])
                    lse_own, _ = _row_lse_and_mean_key(q[b, h, i], kh, sparse(i), bias[i])
                    own = _row_attention(q[b, h, i], kh, vh, sparse(i), bias[i])
                    if lse_far == float("-inf"):
                        out[b, h, i] = own
                        continue
                    # mean_key is a mean of scaled keys: (q_i - q_a) . mean_key = s (q_i - q_a) . mu
                    estimate = lse_far + (q[b, h, i] - q[b, h, a]) @ mean_key
                    w = torch.sigmoid(torch.as_tensor(estimate - lse_own, dtype=q.dtype))
                    out[b, h, i] = (1 - w) * own + w * _row_attention(q[b, h, a], kh, vh, far_a, bias[a])
    return out


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mask", ["none", "bool", "additive", "key_padding"])
@pytest.mark.parametrize(
    ("n", "window", "sinks", "stride", "tail"),
    [(23, 4, 2, 5, 3), (16, 3, 0, 4, 4), (19, 30, 1, 3, 0), (12, 2, 20, 2, 30)],
    ids=["odd-n", "no-sinks", "window-over-n", "tail-over-n"],
)
def test_reference_matches_row_by_row_reading_of_the_spec(causal, mask, n, window, sinks, stride, tail):
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=n, head_dim=8, value_dim=5, mask=mask, seed=n)
    params = dict(causal=causal, window=window, sinks=sinks, stride=stride, tail=tail)
    expected = _loop_oracle(x.q, x.k, x.v, x.attn_mask, **params)
    got = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("mask", ["none", "additive", "key_padding"])
@pytest.mark.parametrize("rules", [("taylor",) * 4, ("none",) * 4, ("taylor", "none", "paper", "taylor")])
def test_reference_correction_rules_match_row_by_row_reading(causal, mask, rules):
    x = make_inputs(batch=1, q_heads=4, kv_heads=2, n=29, head_dim=8, value_dim=5, mask=mask, seed=5)
    params = dict(causal=causal, window=4, sinks=2, stride=5, tail=3)
    expected = _loop_oracle(x.q, x.k, x.v, x.attn_mask, **params, rules=rules)
    got = delta_attention_reference(x.q, x.k, x.v, x.attn_mask, **params, correction=",".join(rules))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_reference_default_tail_and_scale_are_the_papers():
    x = make_inputs(n=300, head_dim=16, q_heads=2, kv_heads=1)
    implicit = delta_attention_reference(x.q, x.k, x.v, causal=True, window=8, sinks=2, stride=16)
    explicit = delta_attention_reference(
        x.q, x.k, x.v, causal=True, window=8, sinks=2, stride=16, tail=128, scale=1 / math.sqrt(16)
    )
    torch.testing.assert_close(implicit, explicit, rtol=0, atol=0)
