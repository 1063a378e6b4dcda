"""Exploration (issue 9): which retrieval settings recover mid-context retrieval, and at what cost.

    python benchmarks/explore_retrieval.py --threads 2 --partial benchmarks/results/explore_retrieval.partial.json

SmolLM2-135M at 4K, the fidelity harness's mid-context retrieval probe (same prompts as
``benchmarks/fidelity.py``), W128 S32 with ``correction="none"`` and: 128 keys per 16-row block;
32 keys per 4-row block; 32 keys per row (G = 1: every row is its own anchor — a diagnostic, it
scores every long-range key, i.e. dense work). Resumable; stop it any time and print the table
with ``python benchmarks/fidelity.py --table PARTIAL``.
"""

from __future__ import annotations

import argparse

import torch

from delta_opt import DeltaConfig
from delta_opt.bench.fidelity import markdown_table, run
from delta_opt.eval import Variant

BASE = DeltaConfig(window=128, sinks=32, stride=16, correction="none")
CONFIGS = {
    "none_r128_G16": BASE.replace(retrieve=128),
    "none_r32_G4": BASE.replace(retrieve=32, stride=4),
    "none_r32_G1": BASE.replace(retrieve=32, stride=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partial", required=True, help="resumable progress file")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(
        partial=args.partial, trials=args.trials, texts=(), probes=("retrieval",), configs=CONFIGS,
        variants_for={name: (Variant.DELTA,) for name in CONFIGS},
    )  # fmt: skip
    print(markdown_table(result["summary"]))


if __name__ == "__main__":
    main()
