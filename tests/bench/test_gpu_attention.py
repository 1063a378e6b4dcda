"""The GPU benchmark's CPU-side parts: argument parsing, the size plan and FLOP math (--dry-run),
the time budget, the FlexAttention baseline's arithmetic, and a smoke run of the whole pipeline
on CPU tensors in Triton's interpreter (the numbers themselves need the H200)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from delta_opt.bench.flex_delta import flex_delta_attention
from delta_opt.bench.gpu_attention import BenchConfig, Budget, _calls, estimate_seconds, plan, PRIOR_SECONDS_PER_PAIR
from delta_opt.ops.reference import delta_attention_reference
from delta_opt.testing import make_inputs

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_attention.py"


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("gpu_attention_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_plan_of_the_h200_run(cli, capsys):
    assert cli.main(["--dry-run"]) == 0
    result = json.loads(capsys.readouterr().out)
    sizes = {row["n"]: row for row in result["sizes"]}
    assert list(sizes) == [32768, 131072, 524288, 1048576]
    # DESIGN §1: the FLOP-ideal speed-up over dense causal is about 16x at 128K and 46x at 1M.
    assert sizes[131072]["ideal_speedup"] == pytest.approx(15.67, abs=0.01)
    assert sizes[1048576]["ideal_speedup"] == pytest.approx(46.05, abs=0.01)
    row = sizes[131072]
    assert row["flops"]["dense"] / row["flops"]["delta"] == pytest.approx(row["ideal_speedup"])
    assert row["flops"]["dense"] == pytest.approx(4 * 128 * 32 * 131072 * 131073 / 2)
    assert row["bytes"] == {
        "inputs": (32 + 2 * 8) * 131072 * 128 * 2,  # bf16 q [1, 32, N, 128], k and v [1, 8, N, 128]
        "output": 32 * 131072 * 128 * 2,
        "anchor_buffer": 32 * 2046 * 128 * 4,  # fp32 [1, 32, Np / G, 128]
    }
    # The run is planned to fit the device tool's 8 minutes.
    assert result["predicted_total_s"] < 480
    assert result["config"]["q_heads"] == 32 and result["config"]["kv_heads"] == 8 and result["config"]["window"] == 2048


def test_bad_arguments_are_rejected_with_exit_code_2(cli, capsys):
    assert cli.main(["--dry-run", "--q-heads", "6", "--kv-heads", "4"]) == 2
    assert "q_heads must be a multiple of kv_heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--methods", "flash"])


def test_output_goes_to_OUT_when_set(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert cli.output_path(cli.parse_args([])) == tmp_path / "gpu_attention.json"
    assert cli.output_path(cli.parse_args(["-o", "x.json"])) == Path("x.json")
    monkeypatch.delenv("OUT")
    assert cli.output_path(cli.parse_args([])) is None


def test_budget_and_call_counts():
    config = BenchConfig()
    rates = dict(PRIOR_SECONDS_PER_PAIR)
    # The H200 prior reproduces the 254 ms for dense SDPA at 128K.
    assert estimate_seconds(config, "sdpa", 131072, rates) == pytest.approx(0.254)
    assert _calls(0.01, 3) == (1, 3) and _calls(1.0, 3) == (1, 1) and _calls(16.0, 3) == (0, 1)
    budget = Budget(100.0, reserve_s=10.0)
    assert budget.fits(80.0) and not budget.fits(95.0)


def test_plan_respects_the_methods_and_checks():
    quick = plan(BenchConfig(ns=(32768,), methods=("triton",), checks=False))
    assert set(quick["sizes"][0]["predicted"]) == {"triton"}
    assert quick["predicted_total_s"] < plan(BenchConfig(ns=(32768,)))["predicted_total_s"]
    with pytest.raises(ValueError, match="methods must be among"):
        BenchConfig(methods=("flash",))


EAGER_FLEX = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


@EAGER_FLEX
@pytest.mark.parametrize("n", [200, 261])
def test_flex_composition_equals_the_reference(n):
    """The FlexAttention baseline computes Delta Attention (eager FlexAttention on the CPU)."""
    x = make_inputs(batch=2, q_heads=4, kv_heads=2, n=n, head_dim=32, dtype=torch.float32)
    params = dict(window=40, sinks=10, stride=16, tail=30)
    got = flex_delta_attention(x.q, x.k, x.v, **params, compile=False)()
    expected = delta_attention_reference(x.q, x.k, x.v, causal=True, **params)
    assert (got - expected).abs().max() <= 1e-5


@EAGER_FLEX
@pytest.mark.slow
def test_smoke_run_of_the_whole_pipeline_on_cpu(tmp_path):
    """Every step of the GPU run, at toy sizes on CPU tensors (kernels in the interpreter,
    eager FlexAttention): the JSON is complete and written, the kernels agree with the
    reference, blocked and the FlexAttention composition."""
    from delta_opt.ops.triton import triton_available

    if not triton_available(torch.device("cpu")):
        pytest.skip("needs triton and TRITON_INTERPRET=1 (set by tests/conftest.py without a GPU)")
    from delta_opt.bench.gpu_attention import run

    config = BenchConfig(
        ns=(96,), q_heads=4, kv_heads=2, head_dim=16, window=16, sinks=4, stride=8, tail=8, repeat=1,
        error_ns=(48, 64), check_n=40, device="cpu",
    )  # fmt: skip
    out = tmp_path / "gpu_attention.json"
    result = run(config, output=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["errors"]["vs_float64_reference_at_48"]["within_tolerance"]
    assert result["errors"]["vs_blocked_at_64"]["max_abs_difference"] <= 2 ** -6  # one bf16 step at |x| ~ 2
    assert result["checks"]["all_passed"], result["checks"]
    (row,) = result["results"]
    assert {"median_s", "timed_calls"} <= set(row["triton"]) and "median_s" in row["sdpa"] and "median_s" in row["flex"]
    assert row["triton_vs_flex_max_abs_difference"] <= 2 ** -5
    assert row["speedup_vs_sdpa"] > 0 and row["ideal_speedup"] > 1
    with pytest.raises(FileExistsError):
        run(config, output=out)
