"""Small random-init models the project builds itself: the CLI's embedded default and examples.

:func:`tiny_llama` is a two-layer Llama causal LM with grouped-query attention (4 query heads,
2 kv heads, head dim 16) made from a ``transformers`` config with a fixed seed, so that every
run builds the same weights. It exists to exercise the whole pipeline (trace, convert, export,
compare) in seconds; its random weights say nothing about a trained model's fidelity.

Both functions follow the CLI's factory contract (``delta-opt check delta_opt.zoo:tiny_llama``):
keyword arguments ``seq_len``, ``batch`` and ``seed``, returning ``(model, example_inputs)``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["TINY_LLAMA", "tiny_llama", "tiny_llama_config"]

# Sizes of the default model: big enough for grouped-query attention and several anchor strides
# at the default length, small enough that tracing and running it take well under a second.
TINY_LLAMA: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
DEFAULT_SEQ_LEN = 512


def tiny_llama_config(**overrides: Any) -> Any:
    """The ``transformers.LlamaConfig`` of :func:`tiny_llama` (``overrides`` replace its sizes)."""
    from transformers import LlamaConfig

    return LlamaConfig(**{**TINY_LLAMA, **overrides})


def tiny_llama(
    *, seq_len: int = DEFAULT_SEQ_LEN, batch: int = 1, seed: int = 0
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A random-init two-layer Llama-GQA causal LM (eval mode, float32) and token inputs.

    Args:
        seq_len: tokens per sequence N of the example inputs.
        batch: sequences B of the example inputs.
        seed: seeds the weights and the tokens (the same seed gives the same model and inputs).

    Returns:
        ``(model, {"input_ids": LongTensor [B, N], "use_cache": False})``; ``use_cache=False``
        because ``torch.export`` cannot trace the cache object a Llama returns otherwise.
    """
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    if seq_len > TINY_LLAMA["max_position_embeddings"]:
        raise ValueError(f"seq_len must be <= {TINY_LLAMA['max_position_embeddings']} for tiny_llama; got {seq_len}")
    from transformers import LlamaForCausalLM

    # fork_rng: seeding must not change the caller's global random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_llama_config()).eval()
        ids = torch.randint(0, TINY_LLAMA["vocab_size"], (batch, seq_len))
    return model, {"input_ids": ids, "use_cache": False}
