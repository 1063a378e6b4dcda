"""Does the correction pay on a real model? Correction rules, retrieval and calibration on SmolLM2-135M.

The study of issue 9, on the fidelity harness of ``benchmarks/fidelity.py`` (same texts, same probe
prompts for the same ``--trials``): one window/sink/stride setting, several ways to correct the
sparse rows, and a per-layer plan that :func:`delta_opt.calibrate` chooses on text that is *not*
one of the evaluation texts (the ``inspect`` module's source)::

    sparse_tail, paper            the fidelity benchmark's rows (window+sinks+dense tail; + paper's Δ)
    none_r32                      no Δ; each anchor block's 32 best long-range keys join its rows' keys
    taylor_r32                    the anchor's long-range output mixed in by softmax normalisers, and r32
    calibrated                    per layer, the candidate with the lowest next-token KL on calibration text

Usage (CPU, resumable; the calibration is cached next to the output)::

    python benchmarks/corrections.py --threads 1 --trials 8 -o benchmarks/results/corrections_smollm2_4k.json
    python benchmarks/corrections.py --table benchmarks/results/corrections_smollm2_4k.json.partial.json

Every row prints perplexity on two code texts, KL and top-1 agreement with dense, and the three
probes; ``compute`` is the op's cost model (:mod:`delta_opt.ops.cost`) in query-key pairs per head,
relative to dense causal attention at the same length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from delta_opt import DeltaConfig
from delta_opt.bench.fidelity import add_study_arguments, markdown_table, print_progress_table, run
from delta_opt.bench.io import write_json
from delta_opt.calibration import Candidate, calibrate_layers
from delta_opt.eval import Variant, stdlib_text
from delta_opt.ops.cost import attention_cost, op_pairs

SMOLLM2_LAYERS, SMOLLM2_HEADS = 30, 9  # SmolLM2-135M (for --table, which loads no model)
BASE = DeltaConfig(window=128, sinks=32, stride=16)
CANDIDATES = (Candidate("none"), Candidate("none", retrieve=32), Candidate("taylor", retrieve=32))


def study_configs(calibrated: DeltaConfig) -> tuple[dict[str, DeltaConfig], dict[str, tuple[Variant, ...]]]:
    """The compared configs and, for each, the variants run (the new rules only as ``delta``)."""
    configs = {
        "W128_S32_G16": BASE,
        "none_r32": BASE.replace(correction="none", retrieve=32),
        "taylor_r32": BASE.replace(correction="taylor", retrieve=32),
        "calibrated": calibrated,
    }
    # sparse (no dense tail) is in benchmarks/fidelity.py on the same prompts; each forward costs ~30 s here.
    variants_for = {name: (Variant.DELTA,) for name in configs}
    variants_for["W128_S32_G16"] = (Variant.SPARSE_TAIL, Variant.DELTA)
    return configs, variants_for


def compute(config: DeltaConfig, n: int, layers: int, heads: int) -> dict[str, float]:
    """Attended pairs of ``config`` (every layer's plan, every head's rule) at length ``n``, per
    layer and head on average, and relative to dense and to the paper's rule at the same W, S, G."""
    pairs = sum(op_pairs(n, {**config.op_kwargs(layer, heads), "causal": True}) for layer in range(layers))
    mean = pairs / layers
    paper = attention_cost(n, window=config.window, sinks=config.sinks, stride=config.stride, tail=config.tail, causal=True)
    return {"pairs": mean, "vs_dense": mean / paper.dense_pairs, "vs_paper": mean / paper.delta_pairs}


def calibration(model, tokenizer, path: Path, n_tokens: int, *, per_head: bool, tolerance: float) -> dict:
    """Calibrate ``BASE`` on ``n_tokens`` of the ``inspect`` module's source (cached in ``path``)."""
    if path.exists():
        return json.loads(path.read_text())
    ids = tokenizer(stdlib_text("inspect"), add_special_tokens=False, return_tensors="pt").input_ids[:, :n_tokens]
    report = calibrate_layers(
        model, {"input_ids": ids, "use_cache": False}, BASE.replace(correction="none"), candidates=CANDIDATES,
        per_head=per_head, tolerance=tolerance,
    )  # fmt: skip
    print(report, file=sys.stderr)
    result = {
        "calibration_text": "inspect", "n_tokens": int(ids.shape[1]), "per_head": per_head, "tolerance": tolerance,
        **report.to_dict(),
    }  # fmt: skip
    write_json(path, result, force=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--calibration-tokens", type=int, default=2048, help="tokens of calibration text")
    parser.add_argument("--per-head", action="store_true", help="calibrate with per-head mixes (calibrate(per_head=True))")
    parser.add_argument("--tolerance", type=float, default=0.0, help="calibrate(tolerance=...): prefer cheaper within it")
    args = parser.parse_args()
    if args.table:
        state = print_progress_table(args.table)
        for name, config in state["params"]["configs"].items():
            c = compute(DeltaConfig.from_dict(config), state["params"]["n_tokens"], SMOLLM2_LAYERS, SMOLLM2_HEADS)
            print(f"compute {name}: {c['vs_paper']:.3f}x the paper's rule, {c['vs_dense']:.3f}x dense")
        return
    if not args.output:
        parser.error("-o/--output is required (except with --table)")
    if Path(args.output).exists() and not args.force:
        parser.error(f"{args.output} exists; pass --force to overwrite it")
    if args.threads:
        torch.set_num_threads(args.threads)

    from delta_opt.models import load_smollm2

    model, tokenizer = load_smollm2()
    cal = calibration(
        model, tokenizer, Path(f"{args.output}.calibration.json"), args.calibration_tokens,
        per_head=args.per_head, tolerance=args.tolerance,
    )  # fmt: skip
    configs, variants_for = study_configs(DeltaConfig.from_dict(cal["config"]))
    result = run(
        partial=f"{args.output}.partial.json",
        n_tokens=args.n_tokens,
        eval_tokens=args.eval_tokens,
        trials=args.trials,
        texts=tuple(args.texts),
        probes=tuple(args.probes),
        configs=configs,
        variants_for=variants_for,
        model_and_tokenizer=(model, tokenizer),
    )
    result["calibration"] = cal
    shape = model.config
    result["compute"] = {
        name: compute(config, args.n_tokens, shape.num_hidden_layers, shape.num_attention_heads)
        for name, config in configs.items()
    }
    for name, c in result["compute"].items():
        print(f"compute {name}: {c['vs_paper']:.3f}x the paper's rule, {c['vs_dense']:.3f}x dense", file=sys.stderr)
    print(markdown_table(result["summary"]), file=sys.stderr)
    write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
