"""Exploration (issue 9): which retrieval settings recover mid-context retrieval, and at what cost.

    python benchmarks/explore_retrieval.py --threads 2 --partial benchmarks/results/explore_retrieval.partial.json

SmolLM2-135M at 4K, the fidelity harness's mid-context retrieval probe (same prompts as
``benchmarks/fidelity.py``), W128 S32 with ``correction="none"`` and: 128 keys per 16-row block;
32 keys per 4-row block; 32 keys per row (G = 1: every row is its own anchor — a diagnostic, it
scores every long-range key, i.e. dense work). Resumable; stop it any time and print the table
with ``python benchmarks/fidelity.py --table PARTIAL``.

``--fewer-keys`` instead measures perplexity on the two texts with 16 and 8 keys per 16-row block
(compute 1.01x and 0.99x the paper's rule)::

    python benchmarks/explore_retrieval.py --threads 2 --fewer-keys --partial benchmarks/results/explore_fewer_keys.partial.json
"""

from __future__ import annotations

import argparse

import torch

from delta_opt import DeltaConfig
from delta_opt.bench.fidelity import markdown_table, run
from delta_opt.eval import Variant

BASE = DeltaConfig(window=128, sinks=32, stride=16, correction="none")
FEWER_KEYS = {"none_r16": BASE.replace(retrieve=16), "none_r8": BASE.replace(retrieve=8)}
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
    parser.add_argument("--fewer-keys", action="store_true", help="texts with 16 and 8 keys per block instead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fewer_keys:
        study = dict(trials=0, configs=FEWER_KEYS)
    else:
        study = dict(trials=args.trials, texts=(), probes=("retrieval",), configs=CONFIGS)
    result = run(
        partial=args.partial, **study, variants_for={name: (Variant.DELTA,) for name in study["configs"]}
    )
    print(markdown_table(result["summary"]))


if __name__ == "__main__":
    main()
