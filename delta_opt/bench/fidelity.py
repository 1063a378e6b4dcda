"""Fidelity study on a real model: dense vs sparse vs sparse + dense tail vs delta.

The work is cut into units (one long text, or one probe trial with every variant on the same
prompt); each finished unit is written to a partial JSON at once, so a stopped run resumes where
it stopped (a partial file made with other parameters is refused, never mixed in).
"""

from __future__ import annotations

import argparse

import functools
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import DeltaConfig
from ..eval import (
    STDLIB_TEXTS,
    Variant,
    copy_prompt,
    greedy_continuation,
    passkey_correct,
    passkey_prompt,
    retrieval_prompt,
    stdlib_text,
    teacher_forced_scores,
    text_fidelity,
    use_variant,
)
from .io import write_json
from .measure import machine_info

__all__ = ["DEFAULT_CONFIGS", "load_partial", "markdown_table", "run", "spread_order", "summarize"]

DEFAULT_CONFIGS = {
    "W128_S32_G16": DeltaConfig(window=128, sinks=32, stride=16),
    "W256_S64_G32": DeltaConfig(window=256, sinks=64, stride=32),
}
COMPARED = (Variant.SPARSE, Variant.SPARSE_TAIL, Variant.DELTA)
PROBES = ("passkey", "retrieval", "copy")
COPY_SPAN = 32
PASSKEY_NEW_TOKENS = 8


def _depths(trials: int, lo: float, hi: float) -> list[float]:
    return [lo + (hi - lo) * i / max(1, trials - 1) for i in range(trials)]


def spread_order(n: int) -> list[int]:
    """0..n-1 ordered so that every prefix covers the range evenly (farthest point first): a run
    stopped early still has trials at every depth."""
    order = [0] if n else []
    while len(order) < n:
        chosen = set(order)
        order.append(max((i for i in range(n) if i not in chosen), key=lambda i: (min(abs(i - j) for j in order), -i)))
    return order


def _trial_prompt(probe: str, trial: int, params: dict[str, Any], encode: Callable[[str], list[int]], vocab: int):
    g = torch.Generator().manual_seed(params["seed"] * 1000 + trial)
    key = str(int(torch.randint(10000, 100000, (1,), generator=g)))
    n = params["n_tokens"]
    if probe == "passkey":
        return passkey_prompt(encode, n, _depths(params["trials"], 0.1, 0.8)[trial], key)
    depth = _depths(params["trials"], 0.1, 0.8 - params["gap"])[trial]
    if probe == "retrieval":
        return retrieval_prompt(encode, n, depth, params["gap"], key)
    # Random ordinary tokens: ids below 1000 hold the special and byte-level tokens.
    span = torch.randint(1000, vocab, (COPY_SPAN,), generator=g).tolist()
    return copy_prompt(encode, n, depth, params["gap"], span)


def _score(probe: str, model: Any, tokenizer: Any, prompt) -> dict[str, Any]:
    if probe == "passkey":
        text = tokenizer.decode(greedy_continuation(model, prompt.ids, PASSKEY_NEW_TOKENS))
        return {"generated": text, "correct": passkey_correct(text, prompt.answer)}
    scores = teacher_forced_scores(model, prompt.ids, prompt.targets)
    if probe == "retrieval":
        return {"correct": scores["all_top1"], "mean_logprob": scores["mean_logprob"], "top1_rate": scores["top1_rate"]}
    return {"mean_nll": scores["mean_nll"], "top1_rate": scores["top1_rate"]}


def _compared(name: str, params: dict[str, Any]) -> list[Variant]:
    """The variants compared for config ``name``: all of them, or those ``variants_for`` names."""
    return [Variant.parse(v) for v in params.get("variants_for", {}).get(name, [v.value for v in COMPARED])]


def _probe_unit(probe: str, trial: int, model, tokenizer, configs, params) -> dict[str, Any]:
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    prompt = _trial_prompt(probe, trial, params, encode, model.config.vocab_size)
    any_config = next(iter(configs.values()))
    with use_variant(model, Variant.DENSE, any_config):
        dense = _score(probe, model, tokenizer, prompt)
    results: dict[str, Any] = {}
    for name, config in configs.items():
        results[name] = {}
        for variant in _compared(name, params):
            with use_variant(model, variant, config):
                results[name][variant.value] = _score(probe, model, tokenizer, prompt)
    return {
        "n_tokens": len(prompt.ids),
        "depth": prompt.depth,
        "answer": prompt.answer,
        "positions": prompt.positions,
        "dense": dense,
        "configs": results,
    }


def _text_unit(name: str, model, tokenizer, configs, params) -> dict[str, Any]:
    ids = tokenizer(stdlib_text(name), add_special_tokens=False, return_tensors="pt").input_ids[:, : params["n_tokens"]]
    variants_for = {name: _compared(name, params) for name in configs}
    return text_fidelity(model, ids, configs, COMPARED, eval_tokens=params["eval_tokens"], variants_for=variants_for)


def run(
    *,
    partial: str | Path,
    n_tokens: int = 4096,
    eval_tokens: int = 1024,
    trials: int = 20,
    gap: float = 0.2,
    texts: tuple[str, ...] = STDLIB_TEXTS,
    probes: tuple[str, ...] = PROBES,
    configs: dict[str, DeltaConfig] | None = None,
    variants_for: dict[str, tuple[Variant, ...]] | None = None,
    seed: int = 0,
    model_and_tokenizer: tuple[Any, Any] | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> dict[str, Any]:
    """Run (or resume) the study on SmolLM2-135M-Instruct; returns the full result with its summary.

    ``partial`` is the progress file (created, or resumed when it holds the same parameters);
    ``model_and_tokenizer`` reuses an already loaded SmolLM2 (default: :func:`load_smollm2`);
    ``variants_for`` limits the variants of some configs (e.g. only ``DELTA`` for a config that
    differs from another by its correction rule alone).
    """
    from ..models import load_smollm2

    configs = dict(DEFAULT_CONFIGS if configs is None else configs)
    unknown = sorted(set(probes) - set(PROBES))
    if unknown:
        raise ValueError(f"probes must be among {', '.join(PROBES)}; got {', '.join(unknown)}")
    params = {
        "model": "SmolLM2-135M-Instruct",
        "n_tokens": n_tokens,
        "eval_tokens": eval_tokens,
        "trials": trials,
        "gap": gap,
        "texts": list(texts),
        "probes": list(probes),
        "configs": {name: config.to_dict() for name, config in configs.items()},
        "variants": ["dense", *(v.value for v in COMPARED)],
        "seed": seed,
    }
    if variants_for:
        unknown = sorted(set(variants_for) - set(configs))
        if unknown:
            raise ValueError(f"variants_for names configs that are not compared: {', '.join(unknown)}")
        params["variants_for"] = {name: [Variant.parse(v).value for v in vs] for name, vs in variants_for.items()}
    partial = Path(partial)
    state: dict[str, Any] = {"params": params, "units": {}}
    if partial.exists():
        state = load_partial(partial)
        if not _same_params(state["params"], params):
            raise ValueError(f"{partial} was made with other parameters; remove it or pass the same ones")
        log(f"resuming from {partial}: {len(state['units'])} units done")

    model, tokenizer = load_smollm2() if model_and_tokenizer is None else model_and_tokenizer
    work: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for name in texts:
        work.append((f"text/{name}", functools.partial(_text_unit, name, model, tokenizer, configs, params)))
    for trial in spread_order(trials):
        for probe in probes:
            unit = functools.partial(_probe_unit, probe, trial, model, tokenizer, configs, params)
            work.append((f"{probe}/{trial:03d}", unit))
    for i, (unit, fn) in enumerate(work):
        if unit in state["units"]:
            continue
        start = time.perf_counter()
        result = fn()
        result["seconds"] = time.perf_counter() - start
        state["units"][unit] = result
        write_json(partial, state, force=True)  # atomic; the partial file is ours to update
        log(f"[{i + 1}/{len(work)}] {unit} done in {result['seconds']:.0f} s")
    return {
        "benchmark": "fidelity",
        "params": params,
        "machine": machine_info(),
        "summary": summarize(state["units"], params),
        "units": state["units"],
    }


def _same_params(saved: dict[str, Any], params: dict[str, Any]) -> bool:
    """Whether a progress file measured the same thing: configs compared as configs, so a file
    written before ``DeltaConfig`` gained a field (at its default) still resumes."""
    def normal(p: dict[str, Any]) -> dict[str, Any]:
        configs = {name: DeltaConfig.from_dict(c) for name, c in p.get("configs", {}).items()}
        return {**p, "configs": configs}

    return normal(saved) == normal(params)


def load_partial(path: str | Path) -> dict[str, Any]:
    """The progress file of a run: ``{"params": ..., "units": {unit: result}}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"progress file {str(path)!r} does not exist")
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or "params" not in state or "units" not in state:
        raise ValueError(f"{str(path)!r} is not a fidelity progress file (no params/units)")
    return state


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(finite) if finite else None


def summarize(units: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One row per (config, variant) — plus dense — with every metric aggregated over units."""
    texts = {k.split("/", 1)[1]: v for k, v in units.items() if k.startswith("text/")}
    trials = {p: [v for k, v in units.items() if k.startswith(p + "/")] for p in PROBES}

    def probe_stats(results: list[dict[str, Any]], probe: str) -> dict[str, Any]:
        if not results:
            return {}
        if probe == "copy":
            return {"copy_mean_nll": _mean([r["mean_nll"] for r in results]),
                    "copy_top1_rate": _mean([r["top1_rate"] for r in results])}  # fmt: skip
        out = {f"{probe}_correct": sum(bool(r["correct"]) for r in results), f"{probe}_trials": len(results)}
        if probe == "retrieval":
            out["retrieval_mean_logprob"] = _mean([r["mean_logprob"] for r in results])
        return out

    dense: dict[str, Any] = {f"perplexity_{name}": t["dense"]["perplexity"] for name, t in texts.items()}
    for probe, results in trials.items():
        dense.update(probe_stats([r["dense"] for r in results], probe))
    rows: dict[str, Any] = {"dense": dense}
    for name in params["configs"]:
        for variant in [v.value for v in _compared(name, params)]:
            row: dict[str, Any] = {}
            per_text = [t["configs"][name]["variants"][variant] for t in texts.values()]
            for text_name, t in texts.items():
                row[f"perplexity_{text_name}"] = t["configs"][name]["variants"][variant]["perplexity"]
            if per_text:
                row["kl"] = _mean([m["kl"] for m in per_text])
                row["next_token_agreement"] = _mean([m["next_token_agreement"] for m in per_text])
                row["final_hidden_sqnr_db"] = _mean([m["final_hidden"]["sqnr_db"] for m in per_text])
                for kind in ("isolated", "propagated"):
                    layers = [db for m in per_text for db in m["layers"][kind]["sqnr_db"]]
                    row[f"layer_sqnr_db_{kind}_mean"] = _mean(layers)
                    row[f"layer_sqnr_db_{kind}_min"] = min(layers) if layers else None
            for probe, results in trials.items():
                row.update(probe_stats([r["configs"][name][variant] for r in results], probe))
            rows[f"{name}/{variant}"] = row
    return rows


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options every fidelity study script shares (``benchmarks/fidelity.py``,
    ``benchmarks/corrections.py``)."""
    add = parser.add_argument
    add("--n-tokens", type=int, default=4096, help="prompt and text length in tokens")
    add("--eval-tokens", type=int, default=1024, help="perplexity/KL over the last this many tokens")
    add("--trials", type=int, default=20, help="trials per probe (depths spread over 10-80%%)")
    add("--texts", nargs="+", default=list(STDLIB_TEXTS), help="standard-library modules")
    add("--probes", nargs="+", default=list(PROBES), choices=PROBES)
    add("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    add("-o", "--output", help="write the JSON here (refuses to overwrite without --force)")
    add("--force", action="store_true")
    add("--table", metavar="PROGRESS", help="print the summary of a progress file (partial or not) and exit")


def print_progress_table(path: str | Path) -> dict[str, Any]:
    """Print the Markdown table of a progress file (units done on stderr); returns its state."""
    state = load_partial(path)
    print(f"{len(state['units'])} units done", file=sys.stderr)
    print(markdown_table(summarize(state["units"], state["params"])))
    return state


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (one row per variant)."""
    columns = sorted({key for row in summary.values() for key in row}, key=_column_order)
    lines = ["| variant | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in summary.items():
        cells = []
        for col in columns:
            value = row.get(col)
            cells.append("" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _column_order(column: str) -> tuple[int, str]:
    order = ("perplexity", "kl", "next_token", "final_hidden", "layer_sqnr", "passkey", "retrieval", "copy")
    for i, prefix in enumerate(order):
        if column.startswith(prefix):
            return i, column
    return len(order), column
