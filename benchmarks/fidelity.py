"""Fidelity of SmolLM2-135M-Instruct under dense, sparse, sparse + dense tail, and delta attention.

    python benchmarks/fidelity.py -o benchmarks/results/fidelity.json      # the full study (hours on 2 cores)
    python benchmarks/fidelity.py --n-tokens 1024 --trials 2               # a quick look

Progress goes to a partial JSON (default: OUTPUT.partial.json, or fidelity.partial.json) after
every unit; rerunning the same command resumes from it. The result (and a Markdown table on
stderr) is printed when every unit is done; `--table PROGRESS` prints the table of a run so far.
Probe trials run in an order that covers every depth early (0, 19, 9, 14, 4, ...).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from delta_opt.bench.fidelity import add_study_arguments, markdown_table, print_progress_table, run
from delta_opt.bench.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(parser)
    parser.add_argument("--partial", help="resumable progress file (default: OUTPUT.partial.json)")
    args = parser.parse_args()
    if args.table:
        print_progress_table(args.table)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    partial = args.partial or (f"{args.output}.partial.json" if args.output else "fidelity.partial.json")
    result = run(
        partial=partial,
        n_tokens=args.n_tokens,
        eval_tokens=args.eval_tokens,
        trials=args.trials,
        texts=tuple(args.texts),
        probes=tuple(args.probes),
    )
    print(json.dumps(result, indent=2))
    print(markdown_table(result["summary"]), file=sys.stderr)
    if args.output:
        write_json(args.output, result, force=args.force)


if __name__ == "__main__":
    main()
