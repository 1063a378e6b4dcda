"""The Triton kernels on a GPU: time, peak memory and error against dense SDPA and FlexAttention.

One run measures, for each sequence length N, three ways of computing causal attention with
the same bf16 inputs in the same process:

- ``triton``: ``delta_attention(..., impl="triton")``, the fused kernels;
- ``sdpa``: dense causal ``scaled_dot_product_attention``, on the fastest backend that takes
  grouped-query heads (tried once at the smallest N; the choice is recorded);
- ``flex``: Delta Attention composed from compiled FlexAttention (:mod:`.flex_delta`),

next to the FLOP-ideal speed-up (:func:`delta_opt.ops.cost.attention_cost`), plus the error of
the kernels against the float64 reference at 8K and against ``blocked`` at 32K (first), and a
small matrix of dtype / head-dim / mask checks against the reference (last, if time is left).

Sizes that would not finish in the time budget are skipped, and say so, using seconds-per-pair
rates measured on the way (priors from an H200 before the first measurement); an out-of-memory
error skips one method at one size. Results are written after every size, so a run cut short
still leaves its JSON. :func:`plan` does everything that needs no GPU (``--dry-run``).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..ops.checks import num_corrected_rows, resolve_tail
from ..ops.cost import attention_cost
from .io import write_json

__all__ = ["BenchConfig", "Budget", "estimate_seconds", "make_inputs", "plan", "run"]

METHODS = ("triton", "sdpa", "flex")
# Seconds per attended (query, key) pair per head on an H200, bf16, D = 128, before any
# measurement: dense SDPA ran 254 ms at 128K with 32 heads; the sparse methods are assumed to
# reach 2/3 of its throughput per attended pair. Measured rates replace these as the run goes.
PRIOR_SECONDS_PER_PAIR = {"sdpa": 0.254 / (131072 * 131073 / 2 * 32)}
PRIOR_SECONDS_PER_PAIR["triton"] = PRIOR_SECONDS_PER_PAIR["flex"] = 1.5 * PRIOR_SECONDS_PER_PAIR["sdpa"]
# First call of a new shape: Triton compiles two kernels once; compiled FlexAttention builds
# two graphs (and block masks) per sequence length.
COMPILE_SECONDS = {"triton": 20.0, "sdpa": 0.0, "flex": 40.0}
# Outside the sizes: start-up, the error checks at 8K/32K, the dtype/head-dim check matrix.
FIXED_SECONDS = {"startup": 15.0, "errors": 25.0, "checks": 70.0}
TARGETS = {
    "speedup_vs_sdpa": {131072: 14.0, 1048576: 38.0},
    "speedup_vs_flex": {131072: 1.5},
}


@dataclass(frozen=True)
class BenchConfig:
    ns: tuple[int, ...] = (32768, 131072, 524288, 1048576)
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    window: int = 2048
    sinks: int = 1024
    stride: int = 64
    tail: int | None = None
    repeat: int = 3
    time_budget_s: float = 420.0
    methods: tuple[str, ...] = METHODS
    checks: bool = True
    seed: int = 0
    error_ns: tuple[int, int] = (8192, 32768)  # vs the float64 reference, vs blocked
    check_n: int = 1531  # sequence length of the dtype / head-dim / mask checks
    device: str = "cuda"  # "cpu" runs the whole pipeline at toy sizes in Triton's interpreter

    def __post_init__(self) -> None:
        for name in ("batch", "q_heads", "kv_heads", "head_dim", "window", "stride", "repeat"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.q_heads % self.kv_heads:
            raise ValueError(f"q_heads must be a multiple of kv_heads; got {self.q_heads} and {self.kv_heads}")
        if not self.ns or min(self.ns) < 1:
            raise ValueError(f"ns must be positive sequence lengths; got {self.ns}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ValueError(f"methods must be among {', '.join(METHODS)}; got {sorted(unknown)}")
        if self.time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be > 0; got {self.time_budget_s}")

    def params(self) -> dict[str, Any]:
        return dict(window=self.window, sinks=self.sinks, stride=self.stride, tail=self.tail)

    def cost(self, n: int):
        return attention_cost(n, window=self.window, sinks=self.sinks, stride=self.stride, tail=self.tail, causal=True)

    def pairs(self, method: str, n: int) -> float:
        """Attended (query, key) pairs over all heads: dense for SDPA, delta for the others."""
        cost = self.cost(n)
        per_head = cost.dense_pairs if method == "sdpa" else cost.delta_pairs
        return float(per_head) * self.batch * self.q_heads

    def tensor_bytes(self, n: int) -> dict[str, int]:
        """bf16 bytes of the inputs and one output, and the kernels' fp32 anchor buffer."""
        q = self.batch * self.q_heads * n * self.head_dim * 2
        kv = 2 * self.batch * self.kv_heads * n * self.head_dim * 2
        n_anchors = num_corrected_rows(n, self.stride, resolve_tail(self.tail, self.stride)) // self.stride
        anchors = self.batch * self.q_heads * n_anchors * self.head_dim * 4
        return {"inputs": q + kv, "output": q, "anchor_buffer": anchors}


@dataclass
class Budget:
    """Wall-clock budget of a run; ``fits`` keeps ``reserve_s`` for writing results."""

    total_s: float
    reserve_s: float = 15.0
    start: float = field(default_factory=time.perf_counter)

    def remaining(self) -> float:
        return self.total_s - (time.perf_counter() - self.start)

    def fits(self, seconds: float) -> bool:
        return seconds <= self.remaining() - self.reserve_s


def estimate_seconds(config: BenchConfig, method: str, n: int, rates: dict[str, float]) -> float:
    """Predicted seconds of one call of ``method`` at ``n`` from a seconds-per-pair rate."""
    return rates[method] * config.pairs(method, n)


def _calls(seconds_per_call: float, repeat: int) -> tuple[int, int]:
    """(warm-up, timed) calls. Calls of seconds are timed once: their kernels are already loaded
    from the smaller sizes, and a second call would only spend the budget."""
    if seconds_per_call < 0.5:
        return 1, repeat
    return (1, 1) if seconds_per_call < 2.0 else (0, 1)


def plan(config: BenchConfig) -> dict[str, Any]:
    """Everything decidable without a GPU: FLOP math, tensor sizes and predicted times per size."""
    rates = dict(PRIOR_SECONDS_PER_PAIR)
    rows, total = [], 0.0
    for n in config.ns:
        cost = config.cost(n)
        flops = cost.flops(heads=config.q_heads, head_dim=config.head_dim, batch=config.batch)
        predicted = {}
        for method in config.methods:
            per_call = estimate_seconds(config, method, n, rates)
            warmup, timed = _calls(per_call, config.repeat)
            predicted[method] = {"per_call_s": per_call, "calls": warmup + timed}
            total += per_call * (warmup + timed)
        rows.append(
            {
                "n": n,
                "ideal_speedup": cost.ideal_speedup,
                "pairs_per_head": {"dense": cost.dense_pairs, "delta": cost.delta_pairs,
                                   "sparse": cost.sparse_pairs, "anchors": cost.anchor_pairs, "tail": cost.tail_pairs},
                "flops": flops,
                "bytes": config.tensor_bytes(n),
                "predicted": predicted,
            }
        )  # fmt: skip
    first_calls = COMPILE_SECONDS["triton"] * ("triton" in config.methods)
    first_calls += COMPILE_SECONDS["flex"] * len(config.ns) * ("flex" in config.methods)
    fixed = FIXED_SECONDS["startup"] + FIXED_SECONDS["errors"] + FIXED_SECONDS["checks"] * config.checks
    return {
        "config": asdict(config),
        "sizes": rows,
        "predicted_total_s": total + first_calls + fixed,
        "targets": {key: {str(n): v for n, v in t.items()} for key, t in TARGETS.items()},
    }


# ---- measurement ---------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _time(fn: Callable[[], Any], warmup: int, timed: int, device: torch.device) -> dict[str, Any]:
    """Times of ``timed`` calls after ``warmup`` calls, and on CUDA the peak memory they add.

    CUDA calls are timed with events; ``peak_extra_bytes`` is the most any timed call allocated
    beyond what was allocated before it (its output included: each call's output is freed
    before the next one starts). Off CUDA (the smoke test) wall time is used and memory is None.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    cuda = device.type == "cuda"
    if cuda:
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(timed):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "warmup_calls": warmup,
        "timed_calls": timed,
        "peak_extra_bytes": int(torch.cuda.max_memory_allocated(device) - base) if cuda else None,
    }


def make_inputs(config: BenchConfig, n: int, dtype: torch.dtype = torch.bfloat16, seed: int | None = None):
    """Standard-normal q [B, Hq, n, D], k and v [B, Hkv, n, D] on the configured device."""
    device = torch.device(config.device)
    g = torch.Generator(device=device).manual_seed(config.seed if seed is None else seed)
    shape_q = (config.batch, config.q_heads, n, config.head_dim)
    shape_kv = (config.batch, config.kv_heads, n, config.head_dim)
    return tuple(torch.randn(s, generator=g, device=device, dtype=dtype) for s in (shape_q, shape_kv, shape_kv))


def _sdpa_call(q, k, v, backend) -> Callable[[], torch.Tensor]:
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    def call() -> torch.Tensor:
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    return call


def _pick_sdpa_backend(config: BenchConfig, n: int) -> tuple[Any, dict[str, Any]]:
    """The fastest SDPA backend that runs causal grouped-query attention at ``n`` (None: torch's pick)."""
    from torch.nn.attention import SDPBackend

    q, k, v = make_inputs(config, n)
    trials: dict[str, Any] = {}
    best, best_time = None, math.inf
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            t = _time(_sdpa_call(q, k, v, backend), 1, 3, q.device)["median_s"]
        except Exception as e:  # a backend that does not take these inputs says why
            trials[backend.name] = f"unavailable: {type(e).__name__}: {str(e)[:200]}"
            continue
        trials[backend.name] = t
        if t < best_time:
            best, best_time = backend, t
    return best, {"n": n, "median_s": trials, "chosen": None if best is None else best.name}


def _method_call(method: str, config: BenchConfig, q, k, v, sdpa_backend) -> tuple[Callable[[], torch.Tensor], dict]:
    import delta_opt

    info: dict[str, Any] = {}
    if method == "triton":
        return (lambda: delta_opt.delta_attention(q, k, v, causal=True, **config.params(), impl="triton")), info
    if method == "sdpa":
        info["backend"] = getattr(sdpa_backend, "name", "default")
        return _sdpa_call(q, k, v, sdpa_backend), info
    from .flex_delta import flex_delta_attention

    start = time.perf_counter()
    call = flex_delta_attention(q, k, v, **config.params(), compile=q.device.type == "cuda")
    _sync(q.device)
    info["block_mask_s"] = time.perf_counter() - start
    return call, info


def _measure_method(method, config, n, q, k, v, sdpa_backend, warmup, timed):
    call, info = _method_call(method, config, q, k, v, sdpa_backend)
    try:
        info.update(_time(call, warmup, timed, q.device))
    except RuntimeError as e:
        if method != "sdpa" or sdpa_backend is None or isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        # The backend picked at the smallest N may refuse a larger one: let torch choose.
        call, info = _method_call(method, config, q, k, v, None)
        info["chosen_backend_failed"] = f"{type(e).__name__}: {str(e)[:200]}"
        info.update(_time(call, warmup, timed, q.device))
    return call, info


def _measure_size(config: BenchConfig, n: int, budget: Budget, rates: dict[str, float], sdpa_backend, compiled: set[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"n": n, "ideal_speedup": config.cost(n).ideal_speedup, "bytes": config.tensor_bytes(n)}
    q, k, v = make_inputs(config, n)
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    for method in config.methods:
        per_call = estimate_seconds(config, method, n, rates)
        warmup, timed = _calls(per_call, config.repeat)
        first_call = COMPILE_SECONDS[method] if (method == "flex" or method not in compiled) else 0.0
        predicted = per_call * (warmup + timed) + first_call
        if not budget.fits(predicted):
            row[method] = {"skipped": f"predicted {predicted:.0f} s, {budget.remaining():.0f} s of the budget left"}
            continue
        try:
            calls[method], info = _measure_method(method, config, n, q, k, v, sdpa_backend, warmup, timed)
            compiled.add(method)
            if info["peak_extra_bytes"] is not None:
                info["extra_over_output"] = info["peak_extra_bytes"] / row["bytes"]["output"]
            rates[method] = info["median_s"] / config.pairs(method, n)
            row[method] = info
        except torch.cuda.OutOfMemoryError as e:
            row[method] = {"skipped": f"out of memory: {str(e)[:200]}"}
        except Exception as e:  # one failing method must not lose the others' numbers
            row[method] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
        _free(q.device)
    if n == min(config.ns) and {"triton", "flex"} <= calls.keys():
        # The two Delta Attention implementations must agree (both bf16 out, fp32 inside).
        row["triton_vs_flex_max_abs_difference"] = (calls["triton"]().float() - calls["flex"]().float()).abs().max().item()
    del q, k, v, calls
    _free(torch.device(config.device))
    _summarise(row, config)
    return row


def _summarise(row: dict[str, Any], config: BenchConfig) -> None:
    """Speed-ups of the kernels over the baselines, against the issue's targets; extra memory."""
    times = {m: row[m]["median_s"] for m in config.methods if "median_s" in row.get(m, {})}
    if "triton" not in times:
        return
    for other in ("sdpa", "flex"):
        if other in times:
            speedup = row[f"speedup_vs_{other}"] = times[other] / times["triton"]
            target = TARGETS[f"speedup_vs_{other}"].get(row["n"])
            if target is not None:
                row[f"meets_target_vs_{other}"] = {"target": target, "met": speedup >= target}
    extra = row["triton"]["peak_extra_bytes"]
    if extra is not None:
        # Target: no more than the output plus O(N / G * D) (the anchor buffer); 1 MiB of slack
        # covers the scale scalar and allocator rounding.
        allowed = row["bytes"]["output"] + row["bytes"]["anchor_buffer"] + 2**20
        row["triton"]["extra_minus_output_bytes"] = extra - row["bytes"]["output"]
        row["meets_memory_target"] = {"allowed_bytes": allowed, "met": extra <= allowed}


def run(config: BenchConfig, *, output: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Run the benchmark; write the JSON to ``output`` after every step (so a cut-off run keeps it)."""
    from . import gpu_checks

    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("the GPU benchmark needs a CUDA device (use --dry-run to check the plan)")
    if output is not None and Path(output).exists() and not force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    budget = Budget(config.time_budget_s)
    result: dict[str, Any] = {
        "benchmark": "gpu_attention",
        "dtype": "bfloat16",
        "plan": plan(config),
        "machine": gpu_checks.machine(),
    }

    def save() -> None:
        result["elapsed_s"] = budget.total_s - budget.remaining()
        if output is not None:
            write_json(output, result, force=True)

    # The benchmark configuration's correctness first, then the numbers, then the wider
    # dtype / head-dim / mask checks with what is left of the budget.
    result["errors"] = gpu_checks.errors_at_scale(config, make_inputs)
    save()
    sdpa_backend = None
    if "sdpa" in config.methods:
        sdpa_backend, result["sdpa_backend"] = _pick_sdpa_backend(config, min(config.ns))
    rates, compiled = dict(PRIOR_SECONDS_PER_PAIR), {"triton"}  # errors_at_scale compiled the kernels
    result["results"] = []
    for n in config.ns:
        result["results"].append(_measure_size(config, n, budget, rates, sdpa_backend, compiled))
        save()
    if config.checks:
        if budget.fits(FIXED_SECONDS["checks"]):
            result["checks"] = gpu_checks.check_matrix(config.device, n=config.check_n)
        else:
            result["checks"] = {"skipped": f"{budget.remaining():.0f} s of the budget left"}
        save()
    return result
