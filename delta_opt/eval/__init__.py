"""Fidelity of converted models: metrics, attention variants, long-context probes, real texts.

- :mod:`.variants` — ``Variant`` (dense, sparse, sparse_tail, delta) and their exact attention;
- :mod:`.metrics` — relative L2, SQNR (dB), logits KL, next-token agreement, perplexity;
- :mod:`.fidelity` — ``text_fidelity`` (per-layer, final hidden, logits, perplexity) and
  ``use_variant`` (run a Hugging Face model's prefill as one variant);
- :mod:`.probes` — passkey, mid-context retrieval and copy probes;
- :mod:`.corpora` — Python standard-library sources as long real texts.

The model-level parts run Hugging Face ``transformers`` models (the ``hf`` extra); importing
this package does not import ``transformers``.
"""

from .corpora import STDLIB_TEXTS, stdlib_text
from .fidelity import text_fidelity, use_variant
from .metrics import kl_divergence, next_token_agreement, nll, perplexity, relative_l2, sqnr_db
from .probes import (
    ProbePrompt,
    copy_prompt,
    greedy_continuation,
    passkey_correct,
    passkey_prompt,
    retrieval_prompt,
    teacher_forced_scores,
)
from .variants import Variant, variant_attention, variant_core

__all__ = [
    "ProbePrompt",
    "STDLIB_TEXTS",
    "Variant",
    "copy_prompt",
    "greedy_continuation",
    "kl_divergence",
    "next_token_agreement",
    "nll",
    "passkey_correct",
    "passkey_prompt",
    "perplexity",
    "relative_l2",
    "retrieval_prompt",
    "sqnr_db",
    "stdlib_text",
    "teacher_forced_scores",
    "text_fidelity",
    "use_variant",
    "variant_attention",
    "variant_core",
]
