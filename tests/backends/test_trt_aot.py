"""Ahead-of-time builds of the plugins' kernels on the CPU, for sm_90, sm_80 and sm_89, and the
GPU check's ``--dry-run``.

Triton ships its own LLVM and ``ptxas``: the kernels compile for any architecture here. Each test
runs in a subprocess with ``TRITON_INTERPRET`` unset (this process runs them interpreted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="needs triton (the `gpu` extra)")

ROOT = Path(__file__).resolve().parents[2]
# Largest dynamic shared memory per block a kernel may opt into.
SHARED_LIMIT = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _run(code: str | None = None, args: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-c", code] if code is not None else [sys.executable, *args]  # type: ignore[list-item]
    return subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=ROOT)


BUILD = """
import json, torch
from delta_opt.backends.tensorrt.aot import assemble, compile_stage, kernel_function, plan_stage
from delta_opt.backends.tensorrt.ptx import entry_params
from delta_opt.backends.tensorrt.stages import STAGES, StageAttributes, StageDims
from delta_opt.backends.tensorrt.symbolic import Sym
from delta_opt.ops.triton.cross_compile import resource_usage

# The benchmark configuration as a dynamic-shape engine sees it: batch and lengths symbolic
# (the GPU check's dry run below builds the same variants, from Triton's cache).
dims = StageDims(Sym.var("q0"), 32, 8, Sym.var("q2"), Sym.var("k2"), 128, 128)
attrs = StageAttributes(True, 2048, 1024, 64, 128, 128 ** -0.5, False)
# A calibrated per-head plan with taylor heads: the variant with the long-range sweep compiled in.
plan = StageAttributes(True, 2048, 1024, 64, 128, 128 ** -0.5, False, corrections=("taylor", "none", "paper", "taylor") * 8)
report = {}
# Both kernels for Hopper; for Ampere and Ada one each (same source, the architecture's own
# shared-memory limit); the fp32 variant (other tiles, exact fp32 products) for Hopper; the
# taylor variant of the dense kernel for Hopper.
VARIANTS = [(90, torch.bfloat16, s, attrs, "") for s in STAGES] + [
    (80, torch.bfloat16, STAGES[1], attrs, ""), (89, torch.bfloat16, STAGES[0], attrs, ""),
    (90, torch.float32, STAGES[1], attrs, ""), (90, torch.bfloat16, STAGES[0], plan, "-taylor")]
for arch, dtype, stage, stage_attrs, suffix in VARIANTS:
    if True:
        build = plan_stage(stage, dims, stage_attrs, dtype, kernel_function(stage).arg_names)
        art = compile_stage(build, arch)
        params = entry_params(art.ptx, art.kernel_name)
        kinds = build.layout.slot_kinds()
        report[f"{stage.name}-sm{arch}-{str(dtype)[6:]}{suffix}"] = dict(
            art.metadata(),
            target=[l.split()[1] for l in art.ptx.splitlines() if l.strip().startswith(".target")][0],
            names=[p.name for p in params], sizes=[p.size for p in params],
            expected=[f"{stage.kernel}_param_{i}" if i is not None else None for i in build.layout.order],
            kinds=list(kinds), block=list(art.block),
            usage=resource_usage(assemble(art.ptx, arch)),
            original_usage=resource_usage(art.compiled.asm["cubin"]),
        )
print(json.dumps(report))
"""


@pytest.mark.slow
def test_aot_builds_for_hopper_ada_and_ampere() -> None:
    """One test (one compile of each variant, also under pytest-xdist) with three checks."""
    result = _run(BUILD)
    assert result.returncode == 0, result.stderr[-4000:]
    builds = json.loads(result.stdout.strip().splitlines()[-1])
    _check_compiled(builds)
    _check_slot_order(builds)
    _check_resources(builds)


def _check_compiled(builds: dict) -> None:
    assert set(builds) == {"dense-sm90-bfloat16", "sparse-sm90-bfloat16", "sparse-sm80-bfloat16",
                           "dense-sm89-bfloat16", "sparse-sm90-float32", "dense-sm90-bfloat16-taylor"}  # fmt: skip
    # The taylor variant has the same tensor slots (its mean keys and offsets are read through
    # them); its int32 extras differ (their unit strides are compile-time constants there).
    taylor, plain = builds["dense-sm90-bfloat16-taylor"]["kinds"], builds["dense-sm90-bfloat16"]["kinds"]
    assert taylor.count("ptr") == plain.count("ptr") == 6 + 4 and taylor.count("i32") < plain.count("i32")
    for key, b in builds.items():
        stage, arch = key.split("-")[0], int(key.split("-")[1][2:])
        assert b["target"].startswith(f"sm_{arch}"), key
        assert b["num_warps"] == 8 and b["block"] == [256, 1, 1]
        assert 0 < b["shared_mem"] <= SHARED_LIMIT[arch], key  # fits the architecture's opt-in limit
        assert b["kernel"].startswith(f"delta_{stage}_kernel_")
        assert b["usage"]["reg"] > 0


def _check_slot_order(builds: dict) -> None:
    for key, b in builds.items():
        visible = len(b["expected"])
        assert b["hidden_params"] == b["ptx_params"] - visible and 0 <= b["hidden_params"] <= 2, key
        # Slot i of TensorRT's launch is the compiled parameter the layout put there...
        for name, expected in zip(b["names"], b["expected"]):
            assert expected is None and "_unused_" in name or name == expected, (key, name, expected)
        # ...with the size TensorRT passes: 8-byte pointers, 4-byte int32 extras, hidden pointers last.
        assert b["sizes"][:visible] == [8 if k == "ptr" else 4 for k in b["kinds"]], key
        assert b["sizes"][visible:] == [8] * b["hidden_params"]


def _check_resources(builds: dict) -> None:
    """ptxas assembles the reordered PTX (with default options, as the CUDA driver compiles the
    PTX TensorRT hands it) to the registers of Triton's own cubin; the bf16 sparse kernel, where
    most time goes, does not spill on Hopper either way. (Triton passes ptxas extra options, so
    spill sizes of kernels that spill can differ between the two.)"""
    for key, b in builds.items():
        assert b["usage"] is not None, "Triton's NVIDIA backend ships cuobjdump: registers must be read back"
        assert b["usage"]["reg"] == b["original_usage"]["reg"], key
    sparse = builds["sparse-sm90-bfloat16"]
    assert sparse["usage"]["stack"] == sparse["original_usage"]["stack"] == 0


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path) -> None:
    """``benchmarks/gpu_aot_check.py --dry-run``: everything up to the first CUDA driver call."""
    out = tmp_path / "aot.json"
    result = _run(args=["benchmarks/gpu_aot_check.py", "--dry-run", "--arch", "90", "--case", "bf16-D128-gqa4-8K", "-o", str(out)])
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["all_built"]
    (case,) = report["cases"]
    assert case["launched"] is False and "error" not in case
    dense, sparse = case["dense"], case["sparse"]
    for stage in (dense, sparse):
        assert stage["param_names_in_slot_order"] and stage["param_sizes_match_packed_arguments"]
    # The launch at N = 8192 (G = 64, T = 128): Np = 8064 corrected rows, 126 anchors.
    assert dense["launch"]["extras"]["n_corrected"] == sparse["launch"]["extras"]["n_corrected"] == 8064
    extras = dense["launch"]["extras"]
    assert extras["n_anchors"] == 126 and extras["anchor_blocks"] == 1 and dense["launch"]["grid"] == [2, 32, 1]
    assert sparse["launch"]["grid"] == [63, 32, 1] and case["delta_shape"] == [1, 32, 126, 128]
    # The output file is never overwritten without --force.
    again = _run(args=["benchmarks/gpu_aot_check.py", "--dry-run", "--case", "bf16-D128-gqa4-8K", "-o", str(out)])
    assert again.returncode == 2 and "exists" in again.stderr


def test_gpu_check_refuses_the_interpreter_and_unknown_cases() -> None:
    env_result = subprocess.run(
        [sys.executable, "benchmarks/gpu_aot_check.py", "--dry-run"], capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert env_result.returncode == 2 and "TRITON_INTERPRET unset" in env_result.stderr
    unknown = _run(args=["benchmarks/gpu_aot_check.py", "--dry-run", "--case", "nope"])
    assert unknown.returncode == 2 and "unknown case" in unknown.stderr
