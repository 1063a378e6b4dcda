"""CPU benchmark of the op: `blocked` vs dense causal SDPA, time and peak memory, as JSON.

    python benchmarks/op_cpu.py                       # N = 2K, 8K, 16K
    python benchmarks/op_cpu.py --n 4096 --no-memory  # quick look
    python benchmarks/op_cpu.py -o benchmarks/results/op_cpu.json
"""

from __future__ import annotations

import argparse
import json

from delta_opt.bench.io import write_json
from delta_opt.bench.op_cpu import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2048, 8192, 16384], help="sequence lengths")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("-o", "--output", help="also write the JSON here (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    result = run(tuple(args.n), repeat=args.repeat, memory=not args.no_memory)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
