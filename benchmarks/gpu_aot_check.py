"""The TensorRT plugins' compiled kernels, loaded and launched through the CUDA driver, vs the reference.

    python benchmarks/gpu_aot_check.py --dry-run --arch 90   # any machine: compile, lay out, pack (no GPU)
    python benchmarks/gpu_aot_check.py                      # a GPU machine: launch and check every case
    python benchmarks/gpu_aot_check.py --quick -o aot.json

No TensorRT is needed (or used): see delta_opt/bench/gpu_aot.py for what is and is not checked.
The JSON goes to --output, or to $OUT/gpu_aot_check.json when $OUT is set, and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="everything up to the first CUDA driver call")
    parser.add_argument("--arch", type=int, default=None, help="compute capability x10 (default: the GPU's; 90 for --dry-run)")
    parser.add_argument("--quick", action="store_true", help="two cases instead of all")
    parser.add_argument("--case", action="append", default=[], help="run only the named case(s)")
    parser.add_argument("-o", "--output", help="JSON path (default $OUT/gpu_aot_check.json when $OUT is set)")
    parser.add_argument("--force", action="store_true", help="overwrite --output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y"):
        print("error: compiling the kernels needs TRITON_INTERPRET unset", file=sys.stderr)
        return 2
    from delta_opt.bench.gpu_aot import CASES, QUICK, run
    from delta_opt.bench.io import write_json

    cases = QUICK if args.quick else CASES
    if args.case:
        known = {c.name: c for c in CASES}
        unknown = [n for n in args.case if n not in known]
        if unknown:
            print(f"error: unknown case(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
            return 2
        cases = tuple(known[n] for n in args.case)
    output = Path(args.output) if args.output else (Path(os.environ["OUT"]) / "gpu_aot_check.json" if os.environ.get("OUT") else None)
    if output is not None and output.exists() and not args.force:
        print(f"error: {output} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    arch = args.arch if args.arch is not None else (90 if args.dry_run else None)
    result = run(cases, arch=arch, dry_run=args.dry_run)
    if output is not None:
        write_json(output, result, force=args.force)
    print(json.dumps(result, indent=2))
    ok = result["all_built"] if args.dry_run else result["all_passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
