"""The TensorRT plugins' compiled kernels, launched through the CUDA driver and checked at real sizes.

No machine of this project has TensorRT. This check runs what a TensorRT engine would run for
the two ``delta_opt`` plugins, short of TensorRT itself:

1. the plugin's launch logic over *symbolic* sizes, as TensorRT sees a dynamic-shape engine
   (batch and sequence lengths unknown, head dims fixed): :func:`~delta_opt.backends.tensorrt.aot.plan_stage`;
2. the kernels compiled for the GPU's architecture with their PTX parameters reordered into
   TensorRT's order (:func:`~delta_opt.backends.tensorrt.aot.compile_stage`);
3. the PTX loaded by the CUDA driver (which JIT-compiles it, as at engine load) and launched
   twice -- dense, then sparse in place -- with the plugin's grid, block, shared memory and
   extra int32 arguments evaluated at the real sizes, TensorRT's argument order, and null for
   Triton's hidden pointers (:class:`~delta_opt.backends.tensorrt.driver.DriverKernel`);
4. the result against the float64 reference (per head, up to 8K) and against the eager Triton
   launcher (every size), with the test-suite's data-derived tolerance.

``dry_run=True`` does steps 1-2 for a chosen architecture on any machine (Triton cross-compiles),
assembles the reordered PTX with Triton's ``ptxas``, reads its registers, and packs the launch
arguments with stand-in addresses -- everything up to the first driver call.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..backends.tensorrt.aot import StageArtifact, assemble, compile_stage, driver_ptx_version, kernel_function, plan_stage
from ..backends.tensorrt.driver import argument_bytes
from ..backends.tensorrt.graph import graph_bias
from ..backends.tensorrt.ptx import entry_params
from ..backends.tensorrt.stages import DENSE, STAGES, StageAttributes, StageDims
from ..backends.tensorrt.symbolic import Sym, evaluate
from ..config import default_tail
from ..ops.reference import delta_attention_reference
from ..ops.triton.cross_compile import resource_usage
from ..testing import error_floor

__all__ = ["CASES", "QUICK", "AotCase", "run", "run_case"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class AotCase:
    """One checked configuration. ``mask``: "none", "padding" (bool [B,1,1,Nk]) or "key_bias"
    (additive [B,1,1,Nk], finite biases and -inf padding); ``correction``: the op's rule string
    (one rule, or one per query head), which the node carries as rule codes."""

    name: str
    dtype: str = "bf16"
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    q_len: int = 8192
    kv_len: int | None = None
    head_dim: int = 128
    causal: bool = True
    window: int = 2048
    sinks: int = 1024
    stride: int = 64
    tail: int | None = None
    mask: str = "none"
    reference_max_len: int = 8192  # the float64 reference runs up to this many keys
    correction: str = "paper"

    @property
    def keys(self) -> int:
        return self.q_len if self.kv_len is None else self.kv_len

    def attributes(self) -> StageAttributes:
        tail = default_tail(self.stride) if self.tail is None else self.tail
        return StageAttributes(
            self.causal, self.window, self.sinks, self.stride, tail, self.head_dim**-0.5, self.mask != "none",
            corrections=tuple(self.correction.split(",")),
        )  # fmt: skip


CASES: tuple[AotCase, ...] = (
    AotCase("bf16-D128-gqa4-8K"),  # the benchmark configuration (paper defaults)
    AotCase("bf16-D128-gqa4-32K", q_len=32768),
    AotCase("fp16-D64-gqa4-b2-padding", dtype="fp16", batch=2, q_heads=8, kv_heads=2, q_len=4099, head_dim=64,
            window=512, sinks=64, stride=32, mask="padding"),  # fmt: skip
    AotCase("fp32-D80-mha-bidirectional-key_bias", dtype="fp32", q_heads=4, kv_heads=4, q_len=2049, head_dim=80,
            causal=False, window=256, sinks=16, stride=16, tail=40, mask="key_bias"),  # fmt: skip
    AotCase("bf16-D128-decode-16-of-4096", q_len=16, kv_len=4096),
    AotCase("bf16-D64-window-covers-N", q_heads=8, kv_heads=8, q_len=1500, head_dim=64, window=2048),
    AotCase("bf16-D128-gqa4-8K-taylor", correction="taylor"),
    # A calibrated per-head plan: taylor, none and paper heads in one node (Hq = 8).
    AotCase("fp16-D64-per-head-plan", dtype="fp16", q_heads=8, kv_heads=2, q_len=4099, head_dim=64, window=512,
            sinks=64, stride=32, mask="padding", correction="taylor,none,paper,taylor,none,none,paper,taylor"),  # fmt: skip
)
QUICK = tuple(c for c in CASES if c.name in ("bf16-D128-gqa4-8K", "fp16-D64-gqa4-b2-padding"))


def _symbolic_dims(case: AotCase) -> StageDims:
    """The sizes as a dynamic-shape engine sees them: batch and lengths symbolic."""
    masked = case.mask != "none"
    return StageDims(
        batch=Sym.var("q0"), q_heads=case.q_heads, kv_heads=case.kv_heads, q_len=Sym.var("q2"),
        kv_len=Sym.var("k2"), head_dim=case.head_dim, value_dim=case.head_dim,
        mask_batch=Sym.var("bias0") if masked else 1, mask_heads=1,
    )  # fmt: skip


def _env(case: AotCase) -> dict[str, int]:
    return {"q0": case.batch, "q2": case.q_len, "k2": case.keys, "bias0": case.batch if case.mask != "none" else 1}


def _launch(artifact: StageArtifact, env: dict[str, int]) -> dict[str, Any]:
    build = artifact.build
    return {
        "grid": [evaluate(g, env) for g in build.grid],
        "block": list(artifact.block),
        "shared_mem": artifact.shared_mem,
        "extras": dict(zip(build.layout.extras, (evaluate(x, env) for x in build.layout.extra_values()))),
    }


def _static_checks(artifact: StageArtifact, launch: dict[str, Any]) -> dict[str, Any]:
    """The reordered PTX's parameters against TensorRT's slots; the packed argument sizes."""
    params = entry_params(artifact.ptx, artifact.kernel_name)
    kinds = artifact.build.layout.slot_kinds()
    order = artifact.build.layout.order
    # Stand-in device addresses (256-byte aligned, like TensorRT's) for a launch that is not made.
    extras = iter(launch["extras"].values())
    values = [0x7F0000000000 + (i << 20) if k == "ptr" else next(extras) for i, k in enumerate(kinds)]
    sizes = [len(b) for b in argument_bytes(kinds, values, hidden=artifact.hidden_params)]
    expected_names = [f"{artifact.build.stage.kernel}_param_{i}" if i is not None else None for i in order]
    names_ok = all(e is None or p.name == e for p, e in zip(params, expected_names))
    sizes_ok = [p.size for p in params] == sizes
    return {"ptx_params": len(params), "slots": len(kinds), "hidden_params": artifact.hidden_params,
            "param_names_in_slot_order": names_ok, "param_sizes_match_packed_arguments": sizes_ok}  # fmt: skip


def _inputs(case: AotCase, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dtype = _DTYPES[case.dtype]
    shape = lambda h, n: (case.batch, h, n, case.head_dim)  # noqa: E731
    q = torch.randn(shape(case.q_heads, case.q_len), generator=g).to(device, dtype)
    k = torch.randn(shape(case.kv_heads, case.keys), generator=g).to(device, dtype)
    v = torch.randn(shape(case.kv_heads, case.keys), generator=g).to(device, dtype)
    mask = None
    if case.mask != "none":
        lengths = torch.randint(max(1, case.keys // 2), case.keys + 1, (case.batch,), generator=g)
        mask = torch.arange(case.keys).view(1, 1, 1, -1) < lengths.view(-1, 1, 1, 1)
        if case.mask == "key_bias":
            bias = torch.randn(case.batch, 1, 1, case.keys, generator=g, dtype=torch.float64)
            mask = bias.masked_fill(~mask, float("-inf"))
        mask = mask.to(device)
    return q, k, v, mask


def _node_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The exporter's canonical additive mask in the node's element type."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        return torch.where(mask, zero, torch.tensor(float("-inf"), dtype=dtype, device=mask.device))
    return mask.to(dtype)


def _run_on_device(case: AotCase, artifacts: dict, env: dict[str, int]) -> tuple[torch.Tensor, float, dict]:
    from ..backends.tensorrt.driver import DriverKernel

    dtype = _DTYPES[case.dtype]
    q, k, v, mask = _inputs(case, "cuda")
    attrs = case.attributes()
    node_mask = _node_mask(mask, dtype)
    bias = graph_bias(node_mask, case.keys) if node_mask is not None else torch.zeros(1, 1, 1, 1, device="cuda")
    scale = torch.tensor([attrs.qk_scale_log2], dtype=torch.float32, device="cuda")
    rules = torch.tensor(attrs.rule_codes(case.q_heads), dtype=torch.int32, device="cuda")
    shapes = artifacts[DENSE].build.outputs
    out = torch.full([evaluate(d, env) for d in shapes["out"]], float("nan"), dtype=dtype, device="cuda")
    # The scratch TensorRT would allocate between the plugins (NaN: a value read unwritten shows).
    scratch = {name: torch.full([evaluate(d, env) for d in shapes[name]], float("nan"), dtype=torch.float32, device="cuda")
               for name in ("delta", "mean_key", "offset")}  # fmt: skip
    tensors = dict(q=q, k=k, v=v, bias=bias, scale=scale, rules=rules, out=out, partial=out, **scratch)
    kernels = {stage: DriverKernel(artifacts[stage].ptx, artifacts[stage].kernel_name) for stage in STAGES}
    loaded = {stage.name: {"registers": kernels[stage].attribute("NUM_REGS"),
                           "local_bytes": kernels[stage].attribute("LOCAL_SIZE_BYTES")} for stage in STAGES}  # fmt: skip
    stream = torch.cuda.current_stream().cuda_stream

    def launch_both() -> None:
        for stage in STAGES:
            art = artifacts[stage]
            spec = _launch(art, env)
            ints = iter(spec["extras"].values())
            names = list(stage.inputs) + [None] * len(spec["extras"]) + list(stage.outputs)
            values = [tensors[n].data_ptr() if n is not None else next(ints) for n in names]
            kernels[stage].launch(spec["grid"], spec["block"], spec["shared_mem"], stream,
                                  art.build.layout.slot_kinds(), values, hidden=art.hidden_params)  # fmt: skip

    launch_both()
    torch.cuda.synchronize()
    result = out.clone()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        launch_both()
    end.record()
    torch.cuda.synchronize()
    for kernel in kernels.values():
        kernel.close()
    return result, start.elapsed_time(end) / 3, loaded


def _reference_per_head(q, k, v, mask, params: dict, dtype: torch.dtype) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    rules = params["correction"].split(",")  # one rule for every head, or one per head
    for h in range(q.shape[1]):
        kv = slice(h // group, h // group + 1)
        out[:, h : h + 1] = delta_attention_reference(
            q[:, h : h + 1].to(dtype), k[:, kv].to(dtype), v[:, kv].to(dtype),
            None if mask is None else mask.to(dtype) if mask.dtype != torch.bool else mask,
            **{**params, "correction": rules[h] if len(rules) > 1 else rules[0]},
        )  # fmt: skip
    return out


def _numerics(case: AotCase, got: torch.Tensor) -> dict[str, Any]:
    import delta_opt

    dtype = _DTYPES[case.dtype]
    q, k, v, mask = _inputs(case, "cuda")
    attrs = case.attributes()
    params = dict(causal=case.causal, window=case.window, sinks=case.sinks, stride=case.stride, tail=attrs.tail,
                  correction=case.correction)  # fmt: skip
    result: dict[str, Any] = {"nan_in_output": bool(torch.isnan(got).any())}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    eager = delta_opt.delta_attention(q, k, v, mask, **params, impl="triton")
    torch.cuda.synchronize()
    result["eager_seconds_first_call"] = time.perf_counter() - t0
    result["max_abs_difference_vs_eager_triton"] = (got.double() - eager.double()).abs().max().item()
    if case.keys <= case.reference_max_len:
        oracle = _reference_per_head(q, k, v, mask, params, torch.float64)
        same = _reference_per_head(q, k, v, mask, params, dtype).double()
        err, same_err = (got.double() - oracle).abs().max().item(), (same - oracle).abs().max().item()
        result["vs_float64_reference"] = {"max_abs_error": err, "reference_same_dtype_error": same_err,
                                          "within_tolerance": err <= 2 * same_err + error_floor(dtype)}  # fmt: skip
    return result


def run_case(case: AotCase, *, arch: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Build, (launch,) and check one case; errors are recorded, not raised."""
    record: dict[str, Any] = {"case": asdict(case)}
    try:
        if arch is None:
            major, minor = torch.cuda.get_device_capability()
            arch = 10 * major + minor
        record["arch"] = arch
        dims, attrs, dtype, env = _symbolic_dims(case), case.attributes(), _DTYPES[case.dtype], _env(case)
        # The ISA the driver can load, as the plugin compiles it for TensorRT (none in a dry run).
        ptx_version = None if dry_run else driver_ptx_version(arch)
        record["ptx_version"] = ptx_version
        artifacts = {}
        for stage in STAGES:
            build = plan_stage(stage, dims, attrs, dtype, kernel_function(stage).arg_names)
            t0 = time.perf_counter()
            artifacts[stage] = art = compile_stage(build, arch, ptx_version=ptx_version)
            launch = _launch(art, env)
            usage = resource_usage(assemble(art.ptx, arch))
            record[stage.name] = {**art.metadata(), "compile_seconds": time.perf_counter() - t0, "launch": launch,
                                  "cubin_of_reordered_ptx": usage, **_static_checks(art, launch)}  # fmt: skip
        record["delta_shape"] = [evaluate(d, env) for d in artifacts[DENSE].build.outputs["delta"]]
        if dry_run:
            record["launched"] = False
            return record
        got, ms, loaded = _run_on_device(case, artifacts, env)
        record["launched"] = True
        record["driver_loaded"] = loaded
        record["plugin_pair_ms"] = ms
        record.update(_numerics(case, got))
        ref = record.get("vs_float64_reference", {})
        # The same kernels as the eager launcher (other specialisation, same math): agree to rounding.
        record["matches_eager_triton"] = record["max_abs_difference_vs_eager_triton"] <= error_floor(dtype)
        record["passed"] = (
            not record["nan_in_output"]
            and record["matches_eager_triton"]
            and ref.get("within_tolerance", True)
            and all(record[s.name]["param_names_in_slot_order"] and record[s.name]["param_sizes_match_packed_arguments"] for s in STAGES)
        )
    except Exception as e:  # one case failing is a finding; the others still run
        record["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        record["passed"] = False
    return record


def run(cases: tuple[AotCase, ...] = CASES, *, arch: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    from .gpu_checks import machine

    results = [run_case(case, arch=arch, dry_run=dry_run) for case in cases]
    summary: dict[str, Any] = {"machine": machine(), "dry_run": dry_run, "cases": results}
    if not dry_run:
        summary["all_passed"] = all(r.get("passed") for r in results)
    else:
        summary["all_built"] = all("error" not in r for r in results)
    summary["note"] = (
        "TensorRT is not installed on this machine: the plugins' kernels are launched through the CUDA driver "
        "exactly as their ahead-of-time launch parameters say; TensorRT itself is not exercised"
    )
    return summary

