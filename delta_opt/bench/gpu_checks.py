"""Correctness of the Triton kernels on a real GPU, for the GPU benchmark's JSON.

The CPU test-suite checks the kernels in Triton's interpreter; these checks run the compiled
kernels: the benchmark configuration against the float64 reference at 8K and against
``blocked`` at 32K, and a small matrix of dtypes, head dims, masks and causality against the
reference with the test-suite's data-derived tolerance.
"""

from __future__ import annotations

import platform
from typing import Any, Callable

import torch

import delta_opt
from ..ops.blocked import delta_attention_blocked
from ..ops.reference import delta_attention_reference
from ..ops.triton.launch import unsupported_reason
from ..testing import error_floor, make_inputs, reference_errors

__all__ = ["check_matrix", "errors_at_scale", "machine"]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    return info


def _triton(q, k, v, mask=None, **params) -> torch.Tensor:
    reason = unsupported_reason(q, k, v, mask, interpret=q.device.type == "cpu")
    if reason is not None:
        raise RuntimeError(f"the kernels would fall back to blocked: {reason}")
    return delta_opt.delta_attention(q, k, v, mask, **params, impl="triton")


def _reference_per_head(q, k, v, params: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """The reference one query head at a time (it materialises [N, N] scores per call)."""
    group = q.shape[1] // k.shape[1]
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    for h in range(q.shape[1]):
        kv = slice(h // group, h // group + 1)
        out[:, h : h + 1] = delta_attention_reference(
            q[:, h : h + 1].to(dtype), k[:, kv].to(dtype), v[:, kv].to(dtype), causal=True, **params
        )
    return out


def errors_at_scale(config, make: Callable[..., tuple]) -> dict[str, Any]:
    """Max |error| of the benchmark configuration: vs the float64 reference at ``config.error_ns[0]``
    (8K), vs ``blocked`` at ``config.error_ns[1]`` (32K)."""
    result: dict[str, Any] = {}
    params = config.params()
    n_reference, n_blocked = config.error_ns
    q, k, v = make(config, n_reference, seed=1)
    got = _triton(q, k, v, causal=True, **params).double()
    oracle = _reference_per_head(q, k, v, params, torch.float64)
    eager = _reference_per_head(q, k, v, params, torch.bfloat16).double()
    err, eager_err = (got - oracle).abs().max().item(), (eager - oracle).abs().max().item()
    result[f"vs_float64_reference_at_{n_reference}"] = {
        "max_abs_error": err,
        "bf16_reference_max_abs_error": eager_err,
        "within_tolerance": err <= 2 * eager_err + error_floor(torch.bfloat16),
    }
    del q, k, v, got, oracle, eager
    q, k, v = make(config, n_blocked, seed=2)
    got = _triton(q, k, v, causal=True, **params).float()
    blocked = delta_attention_blocked(q, k, v, causal=True, **params).float()
    result[f"vs_blocked_at_{n_blocked}"] = {
        "max_abs_difference": (got - blocked).abs().max().item(),
        "output_max_abs": blocked.abs().max().item(),
    }
    return result


# name -> (make_inputs kwargs, op params, dtype); each compiles one kernel variant.
CHECKS: dict[str, tuple[dict, dict, torch.dtype]] = {
    "bf16-D128-gqa4-causal": (dict(q_heads=8, kv_heads=2, head_dim=128), dict(causal=True), torch.bfloat16),
    "bf16-D128-gqa4-causal-key_padding": (dict(q_heads=8, kv_heads=2, head_dim=128, mask="key_padding"), dict(causal=True), torch.bfloat16),
    "fp16-D64-mha-bidirectional-key_padding": (dict(q_heads=4, kv_heads=4, head_dim=64, mask="key_padding"), dict(causal=False), torch.float16),
    "bf16-D80-mqa-causal": (dict(q_heads=4, kv_heads=1, head_dim=80), dict(causal=True), torch.bfloat16),
    "fp16-D96-gqa2-bidirectional": (dict(q_heads=4, kv_heads=2, head_dim=96), dict(causal=False), torch.float16),
    "fp32-D64-gqa2-causal": (dict(q_heads=4, kv_heads=2, head_dim=64), dict(causal=True), torch.float32),
    # The correction rules: the taylor variant of both kernels, and per-head plans.
    "bf16-D128-gqa4-causal-key_padding-plan": (
        dict(q_heads=8, kv_heads=2, head_dim=128, mask="key_padding"),
        dict(causal=True, correction="taylor,paper,none,taylor,none,paper,taylor,taylor"),
        torch.bfloat16,
    ),
    "fp16-D64-mha-bidirectional-taylor": (dict(q_heads=4, kv_heads=4, head_dim=64), dict(causal=False, correction="taylor"), torch.float16),
    "bf16-D80-mqa-causal-none": (dict(q_heads=4, kv_heads=1, head_dim=80), dict(causal=True, correction="none"), torch.bfloat16),
}


def check_matrix(device: str = "cuda", n: int = 1531) -> dict[str, Any]:
    """Each check: max |kernel - fp64 reference| against twice the same-dtype reference's error."""
    results: dict[str, Any] = {}
    # At n = 1531: W = 255, S = 63, G = 32, T = 102, so every path of the kernels is taken.
    params = dict(window=max(8, n // 6), sinks=max(1, n // 24), stride=32 if n >= 512 else 8, tail=max(8, n // 15))
    for name, (shape, extra, dtype) in CHECKS.items():
        try:
            x = make_inputs(batch=2, n=n, seed=len(results), device=device, **shape)
            impl_err, eager_err = reference_errors(_triton, x, dtype, **params, **extra)
            results[name] = {
                "max_abs_error": impl_err,
                "reference_same_dtype_error": eager_err,
                "passed": impl_err <= 2 * eager_err + error_floor(dtype),
            }
        except Exception as e:  # record and go on: one variant failing to compile is a finding
            results[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}", "passed": False}
    # A decode step: Nq != Nk is dense attention, bottom-right aligned.
    x = make_inputs(batch=2, q_heads=8, kv_heads=2, n=n, head_dim=128, device=device, dtype=torch.bfloat16)
    q = x.q[:, :, -3:]
    got = _triton(q, x.k, x.v, causal=True, **params).double()
    oracle = delta_attention_reference(q.double(), x.k.double(), x.v.double(), causal=True, **params)
    eager = delta_attention_reference(q, x.k, x.v, causal=True, **params).double()
    err, eager_err = (got - oracle).abs().max().item(), (eager - oracle).abs().max().item()
    results["bf16-D128-decode-3-rows"] = {"max_abs_error": err, "reference_same_dtype_error": eager_err,
                                          "passed": err <= 2 * eager_err + error_floor(torch.bfloat16)}  # fmt: skip
    results["all_passed"] = all(r["passed"] for r in results.values() if isinstance(r, dict))
    return results
