"""The op on the CPU: ``blocked`` against dense causal SDPA, same inputs, same process.

Defaults follow the foundation issue: fp32, B=1, Hq=8, Hkv=2, D=64, W=512, S=64, G=64.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..ops.blocked import delta_attention_blocked
from ..ops.cost import attention_cost
from ..ops.reference import delta_attention_reference
from .measure import machine_info, peak_extra_rss, time_call

DEFAULTS = dict(batch=1, q_heads=8, kv_heads=2, head_dim=64, window=512, sinks=64, stride=64)


def _inputs(n: int, batch: int, q_heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, q_heads, n, head_dim, generator=g)
    k = torch.randn(batch, kv_heads, n, head_dim, generator=g)
    v = torch.randn(batch, kv_heads, n, head_dim, generator=g)
    return q, k, v


def setup(method: str, n: int, batch: int, q_heads: int, kv_heads: int, head_dim: int, window: int, sinks: int, stride: int) -> Callable[[], Any]:
    """Allocate inputs and return the call of ``method`` ("sdpa" or "blocked") on them."""
    q, k, v = _inputs(n, batch, q_heads, kv_heads, head_dim)
    if method == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q_heads != kv_heads)
    if method == "blocked":
        return lambda: delta_attention_blocked(q, k, v, causal=True, window=window, sinks=sinks, stride=stride)
    raise ValueError(f"method must be 'sdpa' or 'blocked'; got {method!r}")


def _max_error_vs_reference(n: int, params: dict[str, int]) -> float:
    q, k, v = _inputs(n, params["batch"], params["q_heads"], params["kv_heads"], params["head_dim"], seed=1)
    kw = dict(causal=True, window=params["window"], sinks=params["sinks"], stride=params["stride"])
    got = delta_attention_blocked(q, k, v, **kw)
    expected = delta_attention_reference(q.double(), k.double(), v.double(), **kw)
    return float((got.double() - expected).abs().max())


def run(ns: tuple[int, ...] = (2048, 8192, 16384), *, repeat: int = 3, memory: bool = True, **overrides: int) -> dict[str, Any]:
    params = {**DEFAULTS, **overrides}
    results = []
    for n in ns:
        row: dict[str, Any] = {"n": n}
        for method in ("sdpa", "blocked"):
            row[method] = time_call(setup(method, n, **params), repeat=repeat)
            if memory:
                row[method]["peak_extra_bytes"] = peak_extra_rss("delta_opt.bench.op_cpu:setup", method=method, n=n, **params)
        row["speedup"] = row["sdpa"]["median_s"] / row["blocked"]["median_s"]
        cost = attention_cost(n, window=params["window"], sinks=params["sinks"], stride=params["stride"], causal=True)
        row["ideal_speedup"] = cost.ideal_speedup
        output_bytes = params["batch"] * params["q_heads"] * n * params["head_dim"] * 4
        row["output_bytes"] = output_bytes
        if memory and row["blocked"]["peak_extra_bytes"] is not None:
            row["blocked_extra_over_output"] = row["blocked"]["peak_extra_bytes"] / output_bytes
            row["sdpa_extra_over_output"] = row["sdpa"]["peak_extra_bytes"] / output_bytes
        results.append(row)
    return {
        "benchmark": "op_cpu",
        "dtype": "float32",
        "params": params,
        "machine": machine_info(),
        "max_abs_error_vs_float64_reference_at_2048": _max_error_vs_reference(2048, params),
        "results": results,
    }
