"""Conversion benchmark, as JSON: time to `optimize` a 30-layer model (target < 10 s on the CPU),
and the peak memory of an eager-attention model's forward before vs after conversion.

    python benchmarks/pass_speed.py                          # random 30-layer Llama + SmolLM2, N = 4K memory
    python benchmarks/pass_speed.py --models llama-random --no-memory   # no weights needed
    python benchmarks/pass_speed.py -o benchmarks/results/pass_speed.json
"""

from __future__ import annotations

import argparse
import json

from delta_opt.bench.io import write_json
from delta_opt.bench.pass_speed import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["llama-random", "smollm2"], choices=["llama-random", "smollm2"])
    parser.add_argument("--n", type=int, default=64, help="example length traced by optimize")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-n", type=int, default=4096, help="sequence length of the memory probe")
    parser.add_argument("--memory-model", default="llama-random", choices=["llama-random", "smollm2"])
    parser.add_argument("--memory-layers", type=int, default=2, help="layers of the random model in the memory probe")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("-o", "--output", help="also write the JSON here (refuses to overwrite without --force)")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    result = run(
        models=tuple(args.models),
        n=args.n,
        repeat=args.repeat,
        memory_n=None if args.no_memory else args.memory_n,
        memory_model=args.memory_model,
        memory_layers=args.memory_layers,
    )
    print(json.dumps(result, indent=2))
    if args.output:
        write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
