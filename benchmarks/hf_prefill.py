"""`generate()` prefill time of SmolLM2-135M-Instruct on the CPU: dense SDPA vs delta, as JSON.

    python benchmarks/hf_prefill.py                           # 4K and 8K tokens
    python benchmarks/hf_prefill.py --n 1024 --repeat 1       # quick look
    python benchmarks/hf_prefill.py -o benchmarks/results/hf_prefill.json
"""

from __future__ import annotations

import argparse
import json

import torch

from delta_opt.bench.hf_prefill import run
from delta_opt.bench.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 8192], help="prompt lengths in tokens")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("-o", "--output", help="also write the JSON here (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(tuple(args.n), repeat=args.repeat, warmup=args.warmup)
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
