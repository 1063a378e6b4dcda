"""text_fidelity on the real SmolLM2-135M: facts that hold whatever the weights (short prompt)."""

from __future__ import annotations

import math

import pytest
import torch

from delta_opt import DeltaConfig
from delta_opt.eval import perplexity, stdlib_text, text_fidelity, use_variant

pytestmark = pytest.mark.real_model

N = 192


@pytest.fixture(scope="module")
def study(smollm2):
    model, tokenizer = smollm2
    ids = tokenizer(stdlib_text("difflib"), add_special_tokens=False, return_tensors="pt").input_ids[:, :N]
    configs = {
        "narrow": DeltaConfig(window=24, sinks=4, stride=8, tail=32),
        "covering": DeltaConfig(window=N, sinks=0, stride=8, tail=32),  # W >= N: every variant is dense
    }
    with torch.no_grad():
        plain = model(ids, logits_to_keep=49, use_cache=False).logits[0, :-1]
    return text_fidelity(model, ids, configs, eval_tokens=48), perplexity(plain, ids[0, -48:])


def test_dense_through_the_integration_is_the_sdpa_model(study):
    result, plain_ppl = study
    assert result["dense"]["perplexity"] == pytest.approx(plain_ppl, rel=1e-5)


def test_a_covering_window_makes_every_variant_dense(study):
    result, _ = study
    for metrics in result["configs"]["covering"]["variants"].values():
        assert metrics["kl"] < 1e-8 and metrics["next_token_agreement"] == 1.0
        assert min(metrics["layers"]["isolated"]["sqnr_db"]) > 80
        assert metrics["final_hidden"]["sqnr_db"] > 60


def test_the_dense_tail_never_adds_error(study):
    # SPARSE_TAIL equals SPARSE on rows < Np and dense on the rest: on each layer's own inputs its
    # error can only be smaller.
    result, _ = study
    variants = result["configs"]["narrow"]["variants"]
    sparse = variants["sparse"]["layers"]["isolated"]["rel_l2"]
    tail = variants["sparse_tail"]["layers"]["isolated"]["rel_l2"]
    assert len(sparse) == len(tail) == 30
    assert all(t <= s * (1 + 1e-9) for s, t in zip(sparse, tail))
    assert all(s > 0 for s in sparse)  # the window really drops keys


def test_every_metric_is_reported(study):
    result, _ = study
    assert result["n_tokens"] == N and result["eval_tokens"] == 48
    for metrics in result["configs"]["narrow"]["variants"].values():
        assert math.isfinite(metrics["perplexity"]) and metrics["kl"] > 0
        assert 0.0 <= metrics["next_token_agreement"] <= 1.0
        for kind in ("isolated", "propagated"):
            assert len(metrics["layers"][kind]["sqnr_db"]) == 30
        # Propagated error includes the layer's own: the first layer has nothing upstream.
        layers = metrics["layers"]
        assert layers["propagated"]["sqnr_db"][0] == pytest.approx(layers["isolated"]["sqnr_db"][0])


def test_use_variant_restores_the_model(smollm2):
    model, _ = smollm2
    with use_variant(model, "sparse", DeltaConfig(window=8)):
        assert model.config._attn_implementation == "delta"
    assert model.config._attn_implementation == "sdpa"
