"""The conversion itself: how long ``optimize`` takes on a 30-layer model, and what converting
an eager-attention model does to the peak memory of its forward pass.

- ``optimize_time``: a 30-layer model (the real SmolLM2-135M when its weights are available, and
  a random-init Llama of the same shape, which needs none), static and dynamic sequence length;
  export and the passes are timed separately.
- ``forward_memory``: peak extra resident memory of one forward pass at N tokens of an
  ``attn_implementation="eager"`` model, before and after conversion, each in a fresh process
  (:func:`~delta_opt.bench.measure.peak_extra_rss`). Eager attention materialises [B, H, N, N]
  scores; the converted program must not.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator

import torch

from .measure import machine_info, peak_extra_rss

# SmolLM2-135M's shape (DESIGN §4): 30 layers, hidden 576, 9 query / 3 kv heads of 64.
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
)
DELTA = dict(window=512, sinks=64, stride=64)
_MMAP_THRESHOLD = "MALLOC_MMAP_THRESHOLD_"


def random_llama(layers: int, *, vocab: int = 49152, attn_implementation: str = "sdpa") -> torch.nn.Module:
    """A random-init Llama with SmolLM2's layer shape (no weights needed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, num_hidden_layers=layers, **SMOLLM2_SHAPE)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def _model(name: str, attn_implementation: str = "sdpa", layers: int = 30, vocab: int = 49152) -> torch.nn.Module:
    if name == "smollm2":
        from ..models import load_smollm2

        return load_smollm2(attn_implementation=attn_implementation)[0]
    if name == "llama-random":
        return random_llama(layers, vocab=vocab, attn_implementation=attn_implementation)
    raise ValueError(f"model must be 'smollm2' or 'llama-random'; got {name!r}")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def optimize_time(name: str, *, n: int = 64, dynamic: bool = False, repeat: int = 3) -> dict[str, Any]:
    """Seconds to export + convert ``name`` (median over ``repeat`` after one warm-up)."""
    from torch.export import Dim

    from ..config import DeltaConfig
    from ..passes import optimize

    model = _model(name)
    inputs = {"input_ids": torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(0)), "use_cache": False}
    shapes = {"input_ids": {1: Dim("n", max=8192)}, "use_cache": None} if dynamic else None
    config = DeltaConfig(**DELTA)
    rows = []
    for _ in range(repeat + 1):
        export_s, ep = _timed(lambda: torch.export.export(model, (), inputs, dynamic_shapes=shapes, strict=False))
        passes_s, (_, report) = _timed(lambda: optimize(ep, None, config))
        total_s, _ = _timed(lambda: optimize(model, inputs, config, dynamic_shapes=shapes))
        rows.append((export_s, passes_s, total_s))
    rows = sorted(rows[1:], key=lambda r: r[2])  # the first round pays one-time costs
    export_s, passes_s, total_s = rows[len(rows) // 2]
    return {
        "model": name,
        "layers": report.num_sites,
        "converted": report.num_converted,
        "seq_len": n,
        "dynamic": dynamic,
        "optimize_s": total_s,
        "optimize_min_s": rows[0][2],
        "export_s": export_s,
        "passes_s": passes_s,
        "target_s": 10.0,
        "within_target": total_s < 10.0,
    }


def setup_forward(method: str, n: int, model: str = "llama-random", layers: int = 2) -> Callable[[], Any]:
    """The forward pass to measure: ``method`` is "eager" (the model as is) or "converted"."""
    from ..config import DeltaConfig
    from ..passes import optimize

    # A small vocabulary for the random model: at N = 4K the logits of a 49K vocabulary (800 MB)
    # would hide the attention's share of the peak.
    net = _model(model, attn_implementation="eager", layers=layers, vocab=1024)
    ids = torch.randint(0, 1000, (1, n), generator=torch.Generator().manual_seed(0))
    if method == "eager":
        call = net
    elif method == "converted":
        program, report = optimize(net, {"input_ids": ids, "use_cache": False}, DeltaConfig(**DELTA))
        if report.num_converted != report.num_sites or report.num_sites == 0:
            raise RuntimeError(f"conversion incomplete:\n{report}")
        call = program.module()
    else:
        raise ValueError(f"method must be 'eager' or 'converted'; got {method!r}")

    def forward() -> None:
        with torch.no_grad():
            call(input_ids=ids, use_cache=False)

    return forward


@contextlib.contextmanager
def _freed_memory_returned() -> Iterator[None]:
    """Make glibc map every allocation over 64 KiB on its own, in the probe processes.

    The probe measures the second call after a warm-up. By default glibc keeps freed blocks below
    its (adaptive, up to 32 MiB) mmap threshold in the heap, so a call made of many moderate
    blocks (the converted program) would reuse the warm-up's memory and show no peak at all,
    while one huge block (eager N x N scores) is always returned and re-counted. With a low
    threshold both are measured the same way.
    """
    before = os.environ.get(_MMAP_THRESHOLD)
    os.environ[_MMAP_THRESHOLD] = str(64 * 1024)
    try:
        yield
    finally:
        if before is None:
            del os.environ[_MMAP_THRESHOLD]
        else:
            os.environ[_MMAP_THRESHOLD] = before


def forward_memory(n: int = 4096, *, model: str = "llama-random", layers: int = 2) -> dict[str, Any]:
    heads = SMOLLM2_SHAPE["num_attention_heads"]
    row: dict[str, Any] = {"model": model, "layers": layers, "n": n, "attn_implementation": "eager"}
    with _freed_memory_returned():
        for method in ("eager", "converted"):
            row[f"{method}_peak_extra_bytes"] = peak_extra_rss(
                "delta_opt.bench.pass_speed:setup_forward", method=method, n=n, model=model, layers=layers
            )
    row["malloc_mmap_threshold"] = 64 * 1024
    scores = heads * n * n * 4  # one float32 [1, H, N, N] score tensor
    row["scores_bytes"] = scores
    if row["eager_peak_extra_bytes"] is not None:
        row["converted_over_eager"] = row["converted_peak_extra_bytes"] / row["eager_peak_extra_bytes"]
        row["converted_below_one_scores_tensor"] = row["converted_peak_extra_bytes"] < scores
    return row


def run(
    *,
    models: tuple[str, ...] = ("llama-random", "smollm2"),
    n: int = 64,
    repeat: int = 3,
    memory_n: int | None = 4096,
    memory_model: str = "llama-random",
    memory_layers: int = 2,
) -> dict[str, Any]:
    timings = []
    for name in models:
        for dynamic in (False, True):
            timings.append(optimize_time(name, n=n, dynamic=dynamic, repeat=repeat))
    result: dict[str, Any] = {
        "benchmark": "pass_speed",
        "delta_config": DELTA,
        "machine": machine_info(),
        "optimize": timings,
    }
    if memory_n:
        result["forward_memory"] = forward_memory(memory_n, model=memory_model, layers=memory_layers)
    return result
