"""examples/end_to_end.py keeps working: inspect -> optimize -> export onnx -> check, on the stand-in model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .helpers import ROOT


@pytest.mark.slow
def test_end_to_end_example_on_the_tiny_model(tmp_path):
    out = tmp_path / "example"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "end_to_end.py"), "--tiny", "--seq-len", "512", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for step in (
        "inspect smollm2_factory:build_tiny",
        "optimize",
        "export onnx model.pt2",
        "inspect model.onnx",
        "check",
    ):
        assert f"$ delta-opt {step}" in proc.stdout
    assert {"delta-opt.toml", "model.pt2", "model.report.json", "model.onnx", "check.json"} <= {
        p.name for p in out.iterdir()
    }
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] is True and check["conversion"]["num_converted"] == 2
    assert not any(
        "exactly dense" in note for note in check["notes"]
    )  # 512 tokens, window 256, tail 128: rows [256, 384) are beyond the window
