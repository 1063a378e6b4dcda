"""Integrations with other ecosystems.

- :mod:`.transformers` — a ``"delta"`` attention implementation for Hugging Face ``transformers``
  (``AttentionInterface``) and :func:`~delta_opt.integrations.transformers.apply_to_hf`.

Each integration imports its optional dependency only when it is imported itself.
"""
