"""Running ``delta-opt`` the way users do: a fresh interpreter, ``python -m delta_opt.cli``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import delta_opt

# The checkout (or installation) the test process imported delta_opt from: the subprocess runs
# the same code.
ROOT = Path(delta_opt.__file__).resolve().parent.parent

# Small enough to trace and run in well under a second, long enough that the sparse part is
# exercised: N = 64 with window 16, stride 8 and tail 8 leaves rows [0, 56) sparse + delta.
TEST_CONFIG = """\
[attention]
window = 16
sinks = 4
stride = 8
tail = 8

[inputs]
seq_len = 64

[check]
# This config is aggressive for 64 tokens (the tiny model measures about 17 dB, KL 3e-4, top-1 0.89).
min_sqnr_db = 10.0
max_kl = 0.01
min_top1_agreement = 0.5
"""


@dataclass(repr=False)
class Result:
    returncode: int
    stdout: str
    stderr: str

    def __repr__(self) -> str:  # shown by pytest when an assertion on the result fails
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Result:
    """Run ``python -m delta_opt.cli ARGS`` in ``cwd``; ``env`` adds to (or, with None values, removes from) the environment."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.pop("GITHUB_STEP_SUMMARY", None)  # only where a test sets it
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run(
        [sys.executable, "-m", "delta_opt.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, *phrases: str) -> None:
    """Exit code 2, one line on stderr containing every phrase, no traceback."""
    assert result.returncode == 2, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result
    assert "Traceback" not in result.stderr, result
    for phrase in phrases:
        assert phrase in errors[0], result
