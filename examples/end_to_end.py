"""SmolLM2-135M through the whole command line: inspect -> optimize -> export onnx -> check.

    python examples/end_to_end.py                  # SmolLM2-135M (random-init stand-in if unavailable)
    python examples/end_to_end.py --tiny           # the random-init stand-in, in seconds
    python examples/end_to_end.py --out DIR        # keep the files (default: a new temporary folder)

Each step is one ``delta-opt`` command, printed before it runs, so the script doubles as a
transcript of how to use the CLI. The MODEL is the factory in ``examples/smollm2_factory.py``
(SmolLM2 on the first ``--seq-len`` tokens of real text); the Delta Attention parameters and the
check's thresholds are written to ``DIR/delta-opt.toml``, which every command there reads.

The exit code is the check's: 0 when every threshold is met, 1 when one fails.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# At 1024 tokens a window of 256 with stride 32 and the default tail (128 rows) leaves rows
# [0, 896) sparse + delta. Thresholds: the defaults of `delta-opt check`, written out.
CONFIG = """\
[attention]
window = 256
sinks = 64
stride = 32

[inputs]
seq_len = {seq_len}

[check]
min_sqnr_db = 20.0
max_kl = 0.1
min_top1_agreement = 0.8
min_converted = 1
"""


def delta_opt(*args: str, cwd: Path) -> int:
    """Run one ``delta-opt`` command (``python -m delta_opt.cli``, the same as the console script)."""
    print(f"\n$ delta-opt {shlex.join(args)}", flush=True)
    env = dict(os.environ)
    # The factory module lives next to this script; the checkout, for runs without an install.
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "delta_opt.cli", *args], cwd=cwd, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for the outputs (created; must not hold them already)")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens of real text per run (default 1024)")
    parser.add_argument("--tiny", action="store_true", help="use the random-init stand-in model")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="delta-opt-example-"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "delta-opt.toml").write_text(CONFIG.format(seq_len=args.seq_len))
    model = "smollm2_factory:build_tiny" if args.tiny else "smollm2_factory:build"
    print(f"outputs in {out}")

    steps = [
        ("inspect", model),  # the attention sites and what conversion will do to each
        ("optimize", model, "-o", "model.pt2"),  # converted ExportedProgram + model.report.json
        ("export", "onnx", "model.pt2", "-o", "model.onnx"),  # the saved program, lowered to ONNX
        ("inspect", "model.onnx"),  # its DeltaAttention nodes
    ]
    for step in steps:
        code = delta_opt(*step, cwd=out)
        if code != 0:
            print(f"step failed with exit code {code}", file=sys.stderr)
            return code
    # The CI gate: dense vs converted on the same tokens, held to the thresholds in delta-opt.toml.
    code = delta_opt("check", model, "-o", "check.json", cwd=out)
    print(f"\ncheck exit code {code}; files: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return code


if __name__ == "__main__":
    sys.exit(main())
