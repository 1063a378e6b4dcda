"""ONNX Runtime CPU benchmark: the DeltaAttention body vs the exporter's dense SDPA, as JSON.

    python benchmarks/onnx_cpu.py                        # N = 8K (the issue's setting)
    python benchmarks/onnx_cpu.py --n 2048 8192 --memory # also the peak memory of each run
    python benchmarks/onnx_cpu.py -o benchmarks/results/onnx_cpu.json
    python benchmarks/onnx_cpu.py --smollm2           # + SmolLM2-135M end to end at 4K (needs the pass)
    python benchmarks/onnx_cpu.py --correction paper taylor none \
        taylor,paper,none,taylor,paper,none,taylor,paper  # the body per correction rule / per-head plan
"""

from __future__ import annotations

import argparse
import json

from delta_opt.bench.io import write_json
from delta_opt.bench.onnx_cpu import run, run_smollm2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8192], help="sequence lengths")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: torch's)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (fresh process per model)")
    parser.add_argument("--inline", action="store_true", help="time the inlined body instead of the function node")
    parser.add_argument(
        "--correction", nargs="+", default=["paper"],
        help="correction plans to time (a rule, or one per query head, comma-separated); the first is the baseline",
    )  # fmt: skip
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M end to end, converted vs dense")
    parser.add_argument("--smollm2-n", type=int, default=4096, help="sequence length of the SmolLM2 run")
    parser.add_argument("-o", "--output", help="also write the JSON here (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    result = run(
        tuple(args.n), repeat=args.repeat, memory=args.memory, threads=args.threads, inline=args.inline,
        corrections=tuple(args.correction),
    )  # fmt: skip
    if args.smollm2:
        result["smollm2"] = run_smollm2(args.smollm2_n, threads=args.threads)
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
