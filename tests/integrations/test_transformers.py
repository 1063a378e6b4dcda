"""The "delta" attention implementation on small random-init transformers models (float64).

Real weights are tested in test_hf_smollm2.py; random weights are enough to pin the plumbing:
the op sees un-repeated K/V and gives the reference's output, decode steps are dense, padded
batches equal per-sequence runs, models' own sliding-window layers keep their windows.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers (the hf extra)")

from delta_opt import DeltaConfig, apply_to_hf  # noqa: E402
from delta_opt.integrations.transformers import ATTN_IMPLEMENTATION, delta_attention_forward  # noqa: E402
from delta_opt.ops.reference import delta_attention_reference  # noqa: E402
from delta_opt.zoo import tiny_llama_config  # noqa: E402

CONFIG = DeltaConfig(window=8, sinks=2, stride=4, tail=6)


def _llama(seed: int = 0, **overrides):
    """The zoo's tiny Llama (64 wide, 2 layers, 4 query / 2 kv heads) in float64, smaller vocabulary."""
    torch.manual_seed(seed)
    sizes = dict(vocab_size=97, intermediate_size=96, head_dim=16, max_position_embeddings=256)
    config = tiny_llama_config(**{**sizes, "attn_implementation": "sdpa", **overrides})
    return transformers.LlamaForCausalLM(config).to(torch.float64).eval()


def _ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 97, (batch, n), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, use_cache=False, **kwargs).logits


def test_apply_switches_and_restores():
    model = _llama()
    conversion = apply_to_hf(model, CONFIG)
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert conversion.previous_implementation == "sdpa"
    assert [plan.delta for plan in conversion.layers] == [True, True]
    assert conversion.summary()["delta_layers"] == 2
    assert conversion.restore() == "sdpa"
    assert model.config._attn_implementation == "sdpa"
    assert not any(hasattr(m, "_delta_opt_state") for m in model.modules())


def test_context_manager_restores_on_error():
    model = _llama()
    with pytest.raises(RuntimeError, match="boom"):
        with apply_to_hf(model, CONFIG):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"


def test_bad_arguments_are_reported():
    model = _llama()
    with pytest.raises(ValueError, match="DeltaConfig"):
        apply_to_hf(model, {"window": 8})
    with pytest.raises(ValueError, match="PreTrainedModel"):
        apply_to_hf(torch.nn.Linear(2, 2), CONFIG)
    with apply_to_hf(model, CONFIG):
        with pytest.raises(ValueError, match="already converted"):
            apply_to_hf(model, CONFIG)


def test_a_window_covering_the_prompt_is_the_dense_model():
    model = _llama()
    ids = _ids(40, batch=2)
    expected = _logits(model, ids)
    with apply_to_hf(model, DeltaConfig(window=64, sinks=0, stride=4)):
        got = _logits(model, ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_prefill_runs_the_op_on_unrepeated_kv():
    model = _llama()
    ids = _ids(45)
    seen = []
    with apply_to_hf(model, CONFIG) as conversion:
        conversion.add_observer(lambda module, q, k, v, out, causal, scale: seen.append((q, k, v, out, scale)))
        converted = _logits(model, ids)
    assert len(seen) == 2  # one prefill per layer
    for q, k, v, out, scale in seen:
        assert q.shape[1] == 4 and k.shape[1] == 2  # GQA: K/V reach the op un-repeated
        expected = delta_attention_reference(q, k, v, causal=True, scale=scale, **_op_params(CONFIG))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)
    assert (converted - _logits(model, ids)).abs().max() > 1e-3  # sparse attention changed the logits


def _op_params(config: DeltaConfig) -> dict:
    return dict(window=config.window, sinks=config.sinks, stride=config.stride, tail=config.resolved_tail)


def test_short_prompts_run_dense():
    model = _llama()
    ids = _ids(30)
    expected = _logits(model, ids)
    with apply_to_hf(model, CONFIG.replace(min_seq_len=31)):
        torch.testing.assert_close(_logits(model, ids), expected, rtol=0, atol=1e-10)


def test_decode_steps_are_dense_over_the_cache():
    # With N = 40 and 41, G = 4, T = 6: Np = 32 for both, so rows < 40 are classified alike and
    # the last row of a 41-token prefill is a dense tail row: it must equal the decode step that
    # follows a 40-token prefill with the KV cache.
    model = _llama()
    ids = _ids(41)
    with apply_to_hf(model, CONFIG), torch.no_grad():
        full = model(ids, use_cache=False).logits[0, -1]
        prefill = model(ids[:, :40], use_cache=True)
        step = model(ids[:, 40:], cache=prefill.cache, use_cache=True).logits[0, -1]
    torch.testing.assert_close(step, full, rtol=0, atol=1e-10)


def test_generate_with_cache_matches_step_by_step_decoding():
    model = _llama()
    ids = _ids(40)
    with apply_to_hf(model, CONFIG) as conversion, torch.no_grad():
        calls = []
        conversion.add_observer(lambda module, *args, **kwargs: calls.append(module.layer_idx))
        generated = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)[0, 40:]
        assert calls == [0, 1]  # the prefill only: decode steps never reach the delta path
        out = model(ids, use_cache=True)
        tokens, cache = [], out.cache
        next_id = out.logits[:, -1:].argmax(-1)
        for _ in range(4):
            tokens.append(int(next_id))
            out = model(next_id, cache=cache, use_cache=True)
            cache, next_id = out.cache, out.logits[:, -1:].argmax(-1)
    assert generated.tolist() == tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_runs(side):
    model = _llama()
    lengths = [37, 29, 23]  # 23 < min_seq_len: that sequence runs dense
    config = CONFIG.replace(min_seq_len=24)
    n = max(lengths)
    seqs = [_ids(length, seed=i)[0] for i, length in enumerate(lengths)]
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    mask = torch.zeros(len(seqs), n, dtype=torch.long)
    for b, s in enumerate(seqs):
        span = slice(n - len(s), n) if side == "left" else slice(0, len(s))
        ids[b, span], mask[b, span] = s, 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with apply_to_hf(model, config):
        batch = _logits(model, ids, attention_mask=mask, position_ids=position_ids)
        for b, s in enumerate(seqs):
            alone = _logits(model, s[None])[0]
            span = slice(n - len(s), n) if side == "left" else slice(0, len(s))
            torch.testing.assert_close(batch[b, span], alone, rtol=0, atol=1e-9)


def test_a_mask_that_is_not_padding_reaches_the_op():
    model = _llama()
    n = 36
    ids = _ids(n)
    # Two packed documents: block-diagonal causal mask, as a custom 4-D mask.
    doc = torch.arange(n) >= 20
    mask = (doc[:, None] == doc[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    mask = mask[None, None]
    seen = []
    with apply_to_hf(model, CONFIG) as conversion:
        conversion.add_observer(lambda module, q, k, v, out, causal, scale: seen.append((q, k, v, out, scale)))
        _logits(model, ids, attention_mask=mask)
    for q, k, v, out, scale in seen:
        expected = delta_attention_reference(q, k, v, mask, causal=True, scale=scale, **_op_params(CONFIG))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10)


def _qwen2_with_a_sliding_layer():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=1,  # layer 0 global, layer 1 sliding
        attn_implementation="sdpa",
    )
    return transformers.Qwen2ForCausalLM(config).to(torch.float64).eval()


def test_sliding_window_layers_keep_their_windows():
    model = _qwen2_with_a_sliding_layer()
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    ids = _ids(40)
    expected = _logits(model, ids)
    with apply_to_hf(model, DeltaConfig(window=64, sinks=0, stride=4)) as conversion:
        assert [plan.delta for plan in conversion.layers] == [True, False]
        assert "sliding window of 8" in conversion.layers[1].reason
        calls = []
        conversion.add_observer(lambda module, *args, **kwargs: calls.append(module.layer_idx))
        got = _logits(model, ids)
    assert calls == [0]
    # Delta with W >= N is dense on layer 0; layer 1 must still use its window of 8.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_a_model_with_only_sliding_layers_is_refused():
    torch.manual_seed(0)
    config = transformers.MistralConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, sliding_window=8, attn_implementation="sdpa",
    )  # fmt: skip
    model = transformers.MistralForCausalLM(config).eval()
    with pytest.raises(ValueError, match="sliding window"):
        apply_to_hf(model, CONFIG)
    assert model.config._attn_implementation == "sdpa"


def test_the_function_needs_a_converted_model():
    model = _llama()
    module = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 10, 16, dtype=torch.float64)
    k = v = torch.randn(1, 2, 10, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="apply_to_hf"):
        delta_attention_forward(module, q, k, v, None)
    with apply_to_hf(model, CONFIG):
        with pytest.raises(ValueError, match="softcap"):
            delta_attention_forward(module, q, k, v, None, softcap=30.0)
