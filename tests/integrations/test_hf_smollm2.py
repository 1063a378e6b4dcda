"""The "delta" implementation on the real SmolLM2-135M (kept short: CI has 2 cores)."""

from __future__ import annotations

import pytest
import torch

from delta_opt import DeltaConfig, apply_to_hf

pytestmark = pytest.mark.real_model

CONFIG = DeltaConfig(window=32, sinks=8, stride=16, tail=32)


def _text_ids(tokenizer, n: int, offset: int = 0) -> torch.Tensor:
    from delta_opt.eval.corpora import stdlib_text

    ids = tokenizer(stdlib_text("argparse"), add_special_tokens=False, return_tensors="pt").input_ids
    return ids[:, offset : offset + n]


def test_generate_works_and_restores(smollm2):
    model, tokenizer = smollm2
    ids = _text_ids(tokenizer, 120)
    with torch.no_grad():
        dense = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        with apply_to_hf(model, CONFIG) as conversion:
            assert len(conversion.delta_layers) == 30
            calls = []
            conversion.add_observer(lambda module, q, k, v, out, **kw: calls.append((module.layer_idx, q.shape[2])))
            delta = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
        again = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert model.config._attn_implementation == "sdpa"
    assert calls == [(i, 120) for i in range(30)]  # the prefill of every layer, no decode step
    assert delta.shape == dense.shape and torch.equal(again, dense)


def test_batched_left_padded_generate_equals_one_by_one(smollm2):
    model, tokenizer = smollm2
    prompts = [_text_ids(tokenizer, n, offset)[0] for n, offset in ((110, 0), (83, 400))]
    n = max(len(p) for p in prompts)
    ids = torch.full((2, n), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, n - len(p) :], mask[b, n - len(p) :] = p, 1
    with apply_to_hf(model, CONFIG), torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
        for b, p in enumerate(prompts):
            alone = model.generate(p[None], max_new_tokens=2, do_sample=False, pad_token_id=0)
            assert batch[b, n:].tolist() == alone[0, len(p) :].tolist()
