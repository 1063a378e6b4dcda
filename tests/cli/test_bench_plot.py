"""``delta-opt bench`` pieces that need no timing: the plot's series, the plot, a missing matplotlib."""

from __future__ import annotations

import importlib.abc
import sys

import pytest

from delta_opt.cli.bench import SERIES, plot, series
from delta_opt.cli.errors import CliError
from delta_opt.cli.main import main

# The shape of a GPU benchmark result (delta_opt.bench.gpu_attention.run): per size, one entry per
# method, measured or skipped with the reason.
GPU_RESULT = {
    "benchmark": "gpu_attention",
    "plan": {"config": {"window": 2048, "sinks": 1024, "stride": 64}},
    "results": [
        {"n": 32768, "triton": {"median_s": 0.004}, "sdpa": {"median_s": 0.02}, "flex": {"median_s": 0.006}},
        {"n": 131072, "triton": {"median_s": 0.015}, "sdpa": {"median_s": 0.25}, "flex": {"skipped": "predicted 90 s"}},
        {"n": 1048576, "triton": {"median_s": 0.2}, "sdpa": {"skipped": "predicted 16 s, 5 s of the budget left"}},
    ],
}


def test_series_keeps_what_was_measured():
    lines = series(GPU_RESULT)
    assert lines[SERIES["triton"]] == [(32768, 0.004), (131072, 0.015), (1048576, 0.2)]
    assert lines[SERIES["sdpa"]] == [(32768, 0.02), (131072, 0.25)]
    assert lines[SERIES["flex"]] == [(32768, 0.006)]
    assert SERIES["blocked"] not in lines


def test_plot_writes_a_png_and_refuses_an_empty_result(tmp_path):
    pytest.importorskip("matplotlib", reason="needs matplotlib (the plot extra)")
    plot(GPU_RESULT, tmp_path / "gpu.png", force=False)
    assert (tmp_path / "gpu.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(CliError, match="no time to plot"):
        plot({"results": [{"n": 1, "sdpa": {"error": "x"}}]}, tmp_path / "none.png", force=False)
    assert not (tmp_path / "none.png").exists()


class _Hide(importlib.abc.MetaPathFinder):
    """Makes a package look uninstalled to this process."""

    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name or fullname.startswith(self.name + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}")
        return None


def test_plot_without_matplotlib_says_what_to_install_before_running(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_Hide("matplotlib"), *sys.meta_path])
    assert main(["bench", "--device", "cpu", "--n", "64", "--plot", "p.png"]) == 2
    captured = capsys.readouterr()
    assert "bench --plot needs matplotlib, which is not installed: pip install 'delta-opt[plot]'" in captured.err
    assert captured.out == ""  # nothing was measured
