"""``generate()`` prefill time of SmolLM2-135M-Instruct, dense SDPA vs delta, same process.

``generate(max_new_tokens=1)`` runs exactly one forward pass over the prompt (the prefill) and
picks the token from its last logits, so its wall time is the prefill's. The prompt is real text
(a standard-library source), cut to each length.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ..config import DeltaConfig
from ..integrations.transformers import apply_to_hf
from .measure import machine_info

__all__ = ["DEFAULT_CONFIGS", "run"]

DEFAULT_CONFIGS = {
    "W128_S32_G16": DeltaConfig(window=128, sinks=32, stride=16),
    "W256_S64_G32": DeltaConfig(window=256, sinks=64, stride=32),
}


def _prompt(tokenizer: Any, n: int) -> torch.Tensor:
    from ..eval.corpora import STDLIB_TEXTS, stdlib_text

    ids: list[int] = []
    for name in STDLIB_TEXTS:
        ids += tokenizer(stdlib_text(name), add_special_tokens=False).input_ids
        if len(ids) >= n:
            break
    if len(ids) < n:
        raise ValueError(f"the standard-library texts hold {len(ids)} tokens, fewer than n={n}")
    return torch.tensor([ids[:n]])


def _time(fn, *, warmup: int, repeat: int) -> dict[str, float]:
    """Median wall and process-CPU seconds of ``fn``. On a shared machine the CPU time is the
    steadier of the two: it does not count the time other processes held the cores."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {
        "median_s": statistics.median(wall),
        "min_s": min(wall),
        "median_cpu_s": statistics.median(cpu),
        "repeat": repeat,
    }


def run(
    ns: tuple[int, ...] = (4096, 8192),
    *,
    configs: dict[str, DeltaConfig] | None = None,
    repeat: int = 2,
    warmup: int = 0,
) -> dict[str, Any]:
    from ..models import load_smollm2

    configs = dict(DEFAULT_CONFIGS if configs is None else configs)
    model, tokenizer = load_smollm2()
    results = []
    for n in ns:
        ids = _prompt(tokenizer, n)
        tokens: dict[str, int] = {}

        def prefill(name: str) -> None:
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=1, do_sample=False,
                                     pad_token_id=model.config.eos_token_id)  # fmt: skip
            tokens[name] = int(out[0, -1])

        row: dict[str, Any] = {"n": n, "dense": _time(lambda: prefill("dense"), warmup=warmup, repeat=repeat)}
        for name, config in configs.items():
            with apply_to_hf(model, config):
                row[name] = _time(lambda: prefill(name), warmup=warmup, repeat=repeat)
            row[name]["speedup_vs_dense"] = row["dense"]["median_s"] / row[name]["median_s"]
            row[name]["cpu_speedup_vs_dense"] = row["dense"]["median_cpu_s"] / row[name]["median_cpu_s"]
            row[name]["same_next_token_as_dense"] = tokens[name] == tokens["dense"]
        results.append(row)
    return {
        "benchmark": "hf_prefill",
        "model": "SmolLM2-135M-Instruct",
        "dtype": "float32",
        "configs": {name: config.to_dict() for name, config in configs.items()},
        "machine": machine_info(),
        "results": results,
    }
