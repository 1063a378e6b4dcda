"""Measurement primitives: wall time of a call, and the peak resident memory a call adds.

Peak memory on the CPU is read from the kernel, not from an allocator: a fresh child process
builds the inputs, resets its high-water mark (``/proc/self/clear_refs``), runs the call once and
reports ``VmHWM - VmRSS(before)``. A fresh process per measurement keeps one method's freed but
cached pages from hiding another's peak.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch

__all__ = ["machine_info", "peak_extra_rss", "time_call"]


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeat: int = 3) -> dict[str, float]:
    """Median and min wall time in seconds over ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def machine_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _child(target: str, kwargs_json: str) -> None:
    """Entry point of the measuring child: ``target`` is ``module:function`` returning a callable."""
    module, name = target.split(":")
    setup = getattr(importlib.import_module(module), name)
    run = setup(**json.loads(kwargs_json))
    run()  # warm-up: one-time allocations (thread pools, caches) are not the call's own cost
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    print(json.dumps({"extra_bytes": (peak - before) * 1024}))


def peak_extra_rss(target: str, **kwargs: Any) -> int | None:
    """Bytes of resident memory one call adds at its peak, measured in a fresh process.

    ``target`` names a ``module:function`` that takes ``kwargs``, allocates the inputs and
    returns the call to measure. Returns None where the kernel offers no /proc high-water mark.
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    code = f"from delta_opt.bench.measure import _child; _child({target!r}, {json.dumps(kwargs)!r})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe of {target} failed:\n{result.stderr[-2000:]}")
    return int(json.loads(result.stdout.strip().splitlines()[-1])["extra_bytes"])
