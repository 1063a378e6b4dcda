"""The real model the fidelity tests rely on loads offline and works."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.real_model


def test_smollm2_is_the_expected_architecture(smollm2):
    model, _ = smollm2
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config.max_position_embeddings == 8192


def test_smollm2_retrieves_a_pass_key(smollm2):
    model, tokenizer = smollm2
    prompt = "The pass key is 40317. Remember it. 40317 is the pass key. What is the pass key? The pass key is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert "40317" in tokenizer.decode(out[0, ids.shape[1] :])
