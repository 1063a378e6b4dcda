"""Fidelity of converted models against the dense model on the same inputs.

Everything runs through the ``"delta"`` Hugging Face integration, with the attention core of
each :class:`~delta_opt.eval.variants.Variant` (dense included), so that every variant is timed,
masked and cached the same way and only the attention differs.

Per-layer attention-output errors come in two kinds:

- ``isolated``: the variant computed on the dense model's own q, k, v of that layer — the error
  one layer adds by itself;
- ``propagated``: the layer's output in a run of the converted model against the dense run —
  that layer's error plus everything upstream.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch

from ..config import DeltaConfig
from ..integrations.transformers import HFConversion, apply_to_hf
from .metrics import kl_divergence, next_token_agreement, perplexity, relative_l2, sqnr_db
from .variants import Variant, variant_attention, variant_core

__all__ = ["text_fidelity", "use_variant"]


@contextlib.contextmanager
def use_variant(model: Any, variant: Variant | str, config: DeltaConfig) -> Iterator[HFConversion]:
    """Run ``model``'s prefill attention as ``variant`` (with ``config``'s W, S, G, T) inside the block."""
    variant = Variant.parse(variant)
    with apply_to_hf(model, config) as conversion:
        conversion.set_core(variant_core(variant, config))
        yield conversion


def _error(reference: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    return {"rel_l2": relative_l2(reference, approx), "sqnr_db": sqnr_db(reference, approx)}


def _layer_lists(per_layer: Mapping[int, dict[str, float]]) -> dict[str, list[float]]:
    layers = sorted(per_layer)
    return {
        "rel_l2": [per_layer[i]["rel_l2"] for i in layers],
        "sqnr_db": [per_layer[i]["sqnr_db"] for i in layers],
    }


def _forward(model: Any, ids: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits of the last ``keep`` positions [keep, V], final hidden state [N, H]) of a batch-1 prompt."""
    out = model(ids, logits_to_keep=keep, output_hidden_states=True, use_cache=False)
    return out.logits[0], out.hidden_states[-1][0]


@torch.no_grad()
def text_fidelity(
    model: Any,
    ids: torch.Tensor,
    configs: Mapping[str, DeltaConfig],
    variants: Sequence[Variant | str] = (Variant.SPARSE, Variant.SPARSE_TAIL, Variant.DELTA),
    *,
    eval_tokens: int = 1024,
    variants_for: Mapping[str, Sequence[Variant | str]] | None = None,
) -> dict[str, Any]:
    """Compare each (config, variant) with the dense model on one long text.

    Args:
        model: a ``transformers`` causal LM (batch-1 prompts).
        ids: token ids [1, N] or [N].
        configs: named DeltaConfigs, e.g. ``{"W128_S32_G16": DeltaConfig(128, 32, 16)}``.
        variants: the non-dense variants to compare (dense is always the reference).
        eval_tokens: perplexity, KL and next-token agreement are measured on the last
            ``eval_tokens`` tokens (each predicted from everything before it).
        variants_for: per config name, the variants to compare instead of ``variants`` (e.g. only
            ``DELTA`` for a config that differs from another by its correction alone).

    Returns:
        ``{"n_tokens", "eval_tokens", "dense": {"perplexity"}, "configs": {name: {variant: metrics}}}``
        where metrics hold ``perplexity``, ``kl``, ``next_token_agreement``, ``final_hidden``
        (rel_l2, sqnr_db) and ``layers`` (``isolated`` and ``propagated`` per-layer lists).
    """
    ids = ids.reshape(1, -1)
    n = ids.shape[1]
    if not 1 <= eval_tokens < n:
        raise ValueError(f"eval_tokens must be in [1, {n}) for a text of {n} tokens; got {eval_tokens}")
    chosen = {
        name: [Variant.parse(v) for v in (variants_for or {}).get(name, variants) if Variant.parse(v) is not Variant.DENSE]
        for name in configs
    }
    targets = ids[0, n - eval_tokens :]
    keep = eval_tokens + 1  # logits at N - eval_tokens - 1 .. N - 2 predict the last eval_tokens

    # Dense run: capture each layer's output and measure each variant on the same q, k, v.
    dense_out: dict[int, torch.Tensor] = {}
    isolated: dict[tuple[str, Variant], dict[int, dict[str, float]]] = {
        (c, v): {} for c in configs for v in chosen[c]
    }

    def capture_dense(module, q, k, v, out, *, causal, scale):
        dense_out[module.layer_idx] = out.detach().clone()
        for (name, variant), per_layer in isolated.items():
            approx = variant_attention(
                variant, q, k, v, causal=causal, config=configs[name], scale=scale, layer=module.layer_idx
            )
            per_layer[module.layer_idx] = _error(out, approx)

    any_config = next(iter(configs.values()))
    with use_variant(model, Variant.DENSE, any_config) as conversion:
        conversion.add_observer(capture_dense)
        dense_logits, dense_hidden = _forward(model, ids, keep)
    dense_logits = dense_logits[:-1]
    result: dict[str, Any] = {
        "n_tokens": n,
        "eval_tokens": eval_tokens,
        "dense": {"perplexity": perplexity(dense_logits, targets)},
        "configs": {},
    }
    for name, config in configs.items():
        per_variant: dict[str, Any] = {}
        for variant in chosen[name]:
            propagated: dict[int, dict[str, float]] = {}

            def compare(module, q, k, v, out, *, causal, scale, propagated=propagated):
                propagated[module.layer_idx] = _error(dense_out[module.layer_idx], out)

            with use_variant(model, variant, config) as conversion:
                conversion.add_observer(compare)
                logits, hidden = _forward(model, ids, keep)
            logits = logits[:-1]
            per_variant[variant.value] = {
                "perplexity": perplexity(logits, targets),
                "kl": kl_divergence(dense_logits, logits),
                "next_token_agreement": next_token_agreement(dense_logits, logits),
                "final_hidden": _error(dense_hidden, hidden),
                "layers": {
                    "isolated": _layer_lists(isolated[(name, variant)]),
                    "propagated": _layer_lists(propagated),
                },
            }
        result["configs"][name] = {"config": config.to_dict(), "variants": per_variant}
    return result
