"""``delta-opt bench``: the attention speed benchmark that fits this machine, as JSON.

On a CUDA GPU: the Triton kernels vs dense causal SDPA vs a FlexAttention composition
(``delta_opt.bench.gpu_attention``); on the CPU: the ``blocked`` implementation vs dense causal
SDPA, with peak memory (``delta_opt.bench.op_cpu``). Both measure their baseline in the same
run. ``--plot FILE.png`` draws time against sequence length for dense and delta (matplotlib, the
``plot`` extra). Sizes and attention parameters come from ``[bench]`` or flags; unset ones take
the chosen benchmark's defaults, which ``--dump-config`` shows.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from .args import add_config, add_logging, add_output, add_table_flags
from .context import Context
from .errors import EXIT_OK, CliError, require
from .outputs import claim, write_json_file, write_via
from .settings import BenchSettings

__all__ = ["register", "resolve", "run"]

PLOT_INSTALL = "pip install 'delta-opt[plot]'"
CPU_NS = (2048, 8192, 16384)
SIZE_KEYS = ("batch", "q_heads", "kv_heads", "head_dim", "window", "sinks", "stride")
# Methods of the two benchmarks, as they appear in the plot.
SERIES = {
    "sdpa": "dense (SDPA, causal)",
    "blocked": "delta (blocked, PyTorch)",
    "triton": "delta (Triton kernels)",
    "flex": "delta (FlexAttention composition)",
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="run the attention speed benchmark for this machine and print JSON",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output(parser, required=False, help="also write the JSON here")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw time vs sequence length, dense and delta (needs matplotlib)"
    )
    add_table_flags(parser, "bench", "benchmark ([bench] in the config file)")
    add_config(parser)
    add_logging(parser)
    parser.set_defaults(run=run)


def resolve(settings: BenchSettings) -> BenchSettings:
    """The device picked and every unset size filled with that benchmark's default."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise CliError("[bench] device = 'cuda', but no CUDA device is available")
    if device == "cuda":
        from ..bench.gpu_attention import BenchConfig

        gpu = BenchConfig()
        defaults: dict[str, Any] = {k: getattr(gpu, k) for k in SIZE_KEYS}
        defaults.update(n=gpu.ns, time_budget_s=gpu.time_budget_s)
    else:
        from ..bench.op_cpu import DEFAULTS

        defaults = {**DEFAULTS, "n": CPU_NS}
    filled = {k: v for k, v in defaults.items() if getattr(settings, k) is None}
    return dataclasses.replace(settings, device=device, **filled)


def _run_cpu(ctx: Context, s: BenchSettings) -> dict[str, Any]:
    from ..bench.op_cpu import run as run_cpu

    if s.time_budget_s is not None:
        ctx.console.note("time_budget_s applies to the GPU benchmark; the CPU benchmark runs every size")
    sizes = {k: getattr(s, k) for k in SIZE_KEYS}
    with ctx.console.step(f"CPU benchmark: blocked vs dense SDPA at N = {', '.join(map(str, s.n))}"):
        return run_cpu(tuple(s.n), repeat=s.repeat, memory=s.memory, **sizes)


def _run_gpu(ctx: Context, s: BenchSettings) -> dict[str, Any]:
    from ..bench.gpu_attention import BenchConfig
    from ..bench.gpu_attention import run as run_gpu

    if not s.memory:
        ctx.console.note("--no-memory applies to the CPU benchmark; the GPU one reads the CUDA allocator")
    try:
        config = BenchConfig(
            ns=tuple(s.n),
            repeat=s.repeat,
            time_budget_s=float(s.time_budget_s),
            **{k: getattr(s, k) for k in SIZE_KEYS},
        )
    except ValueError as e:
        raise CliError(f"[bench] {e}") from None
    with ctx.console.step(f"GPU benchmark: Triton vs SDPA vs FlexAttention at N = {', '.join(map(str, s.n))}"):
        return run_gpu(config)


def series(result: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """``{label: [(n, median seconds), ...]}`` of every method measured at some size."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in result.get("results", []):
        for method, label in SERIES.items():
            entry = row.get(method)
            if isinstance(entry, dict) and isinstance(entry.get("median_s"), (int, float)):
                out.setdefault(label, []).append((row["n"], entry["median_s"]))
    return out


def plot(result: dict[str, Any], path: Path, *, force: bool) -> None:
    """Time against N on log-log axes, one line per method, written atomically as PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    lines = series(result)
    if not lines:
        raise CliError("the benchmark measured no time to plot")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for label, points in lines.items():
        ns, seconds = zip(*points)
        ax.plot(ns, seconds, marker="o", linestyle="--" if label.startswith("dense") else "-", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("median time per call (s)")
    params = result.get("params") or result.get("plan", {}).get("config", {})
    wsg = ", ".join(
        f"{label}={params[k]}" for k, label in (("window", "W"), ("sinks", "S"), ("stride", "G")) if k in params
    )
    ax.set_title(f"{result.get('benchmark', 'attention')}: dense vs delta ({wsg})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    write_via(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120), force=force, what="plot")


def run(ctx: Context) -> int:
    settings = resolve(ctx.settings("bench"))
    if ctx.dump_requested({"bench": settings}):
        return EXIT_OK
    args = ctx.args
    output = claim(args.output, force=args.force)
    plot_path = claim(args.plot, force=args.force, what="plot")
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise CliError(f"--plot {args.plot!r}: the plot is written as PNG; name it FILE.png")
        require("matplotlib", needed_for="bench --plot", install=PLOT_INSTALL)
    result = _run_gpu(ctx, settings) if settings.device == "cuda" else _run_cpu(ctx, settings)
    ctx.console.json(result)
    if output is not None:
        write_json_file(output, result, force=args.force)
        ctx.console.note(f"wrote {output}")
    if plot_path is not None:
        plot(result, plot_path, force=args.force)
        ctx.console.note(f"wrote {plot_path}")
    return EXIT_OK
