"""Every subcommand end to end in a fresh interpreter, exit codes included.

Each run costs a few seconds of imports, so one run checks several things where it can.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from delta_opt.cli.main import main

from .helpers import TEST_CONFIG, assert_one_line_error, run_cli


@pytest.fixture
def workdir(tmp_path):
    """A folder with the small test config as its delta-opt.toml (read without --config)."""
    (tmp_path / "delta-opt.toml").write_text(TEST_CONFIG)
    return tmp_path


# ---- check -----------------------------------------------------------------------------------


def test_check_passes_writes_report_and_step_summary(workdir):
    summary = workdir / "summary.md"
    summary.write_text("earlier step\n")
    result = run_cli("check", "-o", "report.json", cwd=workdir, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert result.returncode == 0, result
    report = json.loads((workdir / "report.json").read_text())
    assert report["passed"] is True and report["exit_code"] == 0
    assert report["config"]["window"] == 16 and report["config"]["tail"] == 8  # from ./delta-opt.toml
    assert report["inputs"]["input_ids"]["shape"] == [1, 64]
    assert report["conversion"]["num_converted"] == 2
    (logits,) = report["outputs"]
    m = logits["metrics"]
    assert logits["name"] == "logits" and logits["logits"] is True and m["finite"]
    # The sparse part really ran (the config makes rows [0, 56) sparse): the outputs differ, a little.
    assert 0 < m["relative_l2"] < 0.5 and m["max_abs_error"] > 0
    assert math.isclose(m["sqnr_db"], -20 * math.log10(m["relative_l2"]), rel_tol=1e-9)
    assert 0 <= m["kl_divergence"] and 0 <= m["top1_agreement"] <= 1
    names = [c["name"] for c in report["checks"]]
    assert names == ["min_converted", "min_sqnr_db", "max_kl", "min_top1_agreement"]
    assert report["not_checked"] == ["max_relative_l2", "max_time_ratio"]
    assert not any("exactly dense" in n for n in report["notes"])
    # The terminal summary says what was measured and against what.
    assert "PASS: 4 of 4 checks met" in result.stdout and "min_sqnr_db" in result.stdout
    # The step summary was appended, not overwritten.
    text = summary.read_text()
    assert text.startswith("earlier step\n")
    assert "### delta-opt check: PASS (4 of 4 checks met)" in text
    assert "| `min_sqnr_db` | logits |" in text and "Not checked: `max_relative_l2`, `max_time_ratio`." in text


def test_check_fails_a_threshold_with_exit_1(workdir):
    summary = workdir / "summary.md"
    result = run_cli(
        "check", "--min-sqnr-db", "200", "--max-kl", "off", "--max-relative-l2", "0.9", "--timing", "--repeat", "1",
        "-q", "-o", "report.json", cwd=workdir, env={"GITHUB_STEP_SUMMARY": str(summary)},
    )  # fmt: skip
    assert result.returncode == 1, result
    assert result.stdout == "" and result.stderr == ""  # --quiet: the exit code and the files say it all
    report = json.loads((workdir / "report.json").read_text())
    assert report["passed"] is False and report["exit_code"] == 1
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["min_sqnr_db"]["passed"] is False and by_name["min_sqnr_db"]["threshold"] == 200
    assert by_name["max_relative_l2"]["passed"] is True
    assert "max_kl" not in by_name and "max_kl" in report["not_checked"]
    timing = report["timing"]
    assert (
        timing["dense"]["median_s"] > 0
        and timing["ratio"] == timing["converted"]["median_s"] / timing["dense"]["median_s"]
    )
    assert "### delta-opt check: FAIL" in summary.read_text() and "**FAIL**" in summary.read_text()


# ---- optimize, inspect -------------------------------------------------------------------------


def test_optimize_writes_program_and_report_then_refuses_then_forces(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)  # for the in-process runs: the same ./delta-opt.toml
    first = run_cli("optimize", "-o", "tiny.pt2", cwd=workdir)
    assert first.returncode == 0, first
    report = json.loads((workdir / "tiny.report.json").read_text())
    assert report["summary"]["num_converted"] == 2 and report["config"]["window"] == 16
    import transformers.modeling_outputs  # noqa: F401  registers the program's output type for loading

    program = torch.export.load(workdir / "tiny.pt2")
    calls = [n for n in program.graph.nodes if n.target is torch.ops.delta_opt.delta_attention.default]
    assert len(calls) == 2 and all(n.kwargs["window"] == 16 and n.kwargs["tail"] == 8 for n in calls)
    before = (workdir / "tiny.pt2").read_bytes()

    refused = run_cli("optimize", "-o", "tiny.pt2", "--window", "8", cwd=workdir)
    assert_one_line_error(refused, "'tiny.pt2' exists; pass --force")
    assert (workdir / "tiny.pt2").read_bytes() == before

    # --force replaces it (in this process: the subprocess path was shown above).
    assert main(["optimize", "-o", str(workdir / "tiny.pt2"), "--window", "8", "--force", "-q"]) == 0
    program = torch.export.load(workdir / "tiny.pt2")
    windows = {
        n.kwargs["window"] for n in program.graph.nodes if n.target is torch.ops.delta_opt.delta_attention.default
    }
    assert windows == {8}
    assert sorted(p.name for p in workdir.iterdir()) == ["delta-opt.toml", "tiny.pt2", "tiny.report.json"]
    # check refuses a converted program: there is no dense model to compare it with.
    assert main(["check", str(workdir / "tiny.pt2")]) == 2
    assert "already calls delta_attention at 2 site(s)" in capsys.readouterr().err

    # The saved program: inspect lists the calls it already makes.
    inspected = run_cli("inspect", "tiny.pt2", "--json", cwd=workdir)
    assert inspected.returncode == 0, inspected
    assert "[inputs] seq_len from the config file does not apply" in inspected.stderr  # a note, not an error
    calls = json.loads(inspected.stdout)["delta_attention_calls"]
    assert len(calls) == 2 and calls[0]["window"] == 8 and calls[0]["module"] == "model.layers.0.self_attn"


# ---- export ------------------------------------------------------------------------------------


def test_export_trt_says_what_is_missing(workdir):
    result = run_cli("export", "trt", "-o", "model.engine", cwd=workdir)
    assert_one_line_error(
        result,
        "export trt needs what this installation lacks",
        "TensorRT >= 10.7",
    )
    assert not (workdir / "model.engine").exists()


# ---- bench -------------------------------------------------------------------------------------


def test_bench_prints_json_writes_it_and_plots(tmp_path):
    result = run_cli(
        "bench", "--device", "cpu", "--n", "128", "256", "--repeat", "1", "--no-memory", "--window", "32",
        "--sinks", "4", "--stride", "16", "-o", "bench.json", "--plot", "bench.png", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result
    printed = json.loads(result.stdout)
    assert printed == json.loads((tmp_path / "bench.json").read_text())
    assert printed["benchmark"] == "op_cpu" and printed["params"]["window"] == 32
    assert [row["n"] for row in printed["results"]] == [128, 256]
    for row in printed["results"]:
        assert row["sdpa"]["median_s"] > 0 and row["blocked"]["median_s"] > 0
        assert row["speedup"] == row["sdpa"]["median_s"] / row["blocked"]["median_s"]
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
