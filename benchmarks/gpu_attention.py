"""GPU benchmark of the Triton kernels: vs dense causal SDPA and a FlexAttention composition, as JSON.

    python benchmarks/gpu_attention.py --dry-run           # the plan: sizes, FLOP math, predicted times (no GPU)
    python benchmarks/gpu_attention.py                     # the H200 run: N = 32K, 128K, 512K, 1M
    python benchmarks/gpu_attention.py --n 32768 131072 --no-checks -o results.json

Defaults follow the issue: bf16, B=1, Hq=32, Hkv=8, D=128, W=2048, S=1024, G=64. The JSON goes
to --output, or to $OUT/gpu_attention.json when $OUT is set, and is rewritten after every size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from delta_opt.bench.gpu_attention import METHODS, BenchConfig, plan, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=list(defaults.ns), help="sequence lengths")
    for name in ("batch", "q_heads", "kv_heads", "head_dim", "window", "sinks", "stride", "repeat", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    parser.add_argument("--tail", type=int, default=None, help="dense tail rows (default max(128, stride))")
    parser.add_argument("--time-budget-s", type=float, default=defaults.time_budget_s,
                        help="skip what is predicted not to finish in this many seconds")  # fmt: skip
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--no-checks", action="store_true", help="skip the dtype/head-dim/mask check matrix")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke run of the whole pipeline in Triton's interpreter (toy sizes only)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the plan (no GPU needed) and exit")
    parser.add_argument("-o", "--output", help="JSON path (default $OUT/gpu_attention.json when $OUT is set)")
    parser.add_argument("--force", action="store_true", help="overwrite --output")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        ns=tuple(args.n), batch=args.batch, q_heads=args.q_heads, kv_heads=args.kv_heads,
        head_dim=args.head_dim, window=args.window, sinks=args.sinks, stride=args.stride,
        tail=args.tail, repeat=args.repeat, time_budget_s=args.time_budget_s,
        methods=tuple(args.methods), checks=not args.no_checks, seed=args.seed, device=args.device,
    )  # fmt: skip


def output_path(args: argparse.Namespace) -> Path | None:
    if args.output:
        return Path(args.output)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_attention.json"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(plan(config), indent=2))
        return 0
    result = run(config, output=output_path(args), force=args.force)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
