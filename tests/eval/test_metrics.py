"""Error metrics: known values, and the chunked log-softmax paths against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from delta_opt.eval.metrics import kl_divergence, next_token_agreement, nll, perplexity, relative_l2, sqnr_db


def test_relative_l2_and_sqnr_known_values():
    ref = torch.tensor([3.0, 4.0])  # norm 5
    approx = ref + torch.tensor([0.3, 0.4])  # noise norm 0.5
    assert relative_l2(ref, approx) == pytest.approx(0.1)
    assert sqnr_db(ref, approx) == pytest.approx(20.0)
    assert sqnr_db(ref, ref) == math.inf
    assert relative_l2(ref, ref) == 0.0
    assert relative_l2(torch.zeros(2), torch.ones(2)) == math.inf


def _direct_kl(p_logits, q_logits):
    p = p_logits.double().log_softmax(-1)
    q = q_logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_kl_matches_the_direct_formula_across_chunks():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 300, 50, generator=g)  # 600 positions: three chunks of 256
    b = a + 0.3 * torch.randn(2, 300, 50, generator=g)
    assert kl_divergence(a, b) == pytest.approx(_direct_kl(a, b), rel=1e-10)
    assert kl_divergence(a, a) == pytest.approx(0.0, abs=1e-12)
    assert kl_divergence(a, b) > 0


def test_nll_and_perplexity():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(520, 30, generator=g)
    targets = torch.randint(0, 30, (520,), generator=g)
    direct = -logits.double().log_softmax(-1)[torch.arange(520), targets]
    torch.testing.assert_close(nll(logits, targets), direct)
    assert perplexity(torch.zeros(7, 30), torch.zeros(7, dtype=torch.long)) == pytest.approx(30.0)
    with pytest.raises(ValueError, match="targets must have shape"):
        nll(logits, targets[:-1])


def test_next_token_agreement():
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    b = torch.tensor([[0.0, 2.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert next_token_agreement(a, b) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="one shape"):
        next_token_agreement(a, b[:2])
