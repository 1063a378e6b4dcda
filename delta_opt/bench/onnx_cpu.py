"""One attention layer in ONNX Runtime on the CPU: the DeltaAttention body against the dense
attention that the torch.onnx exporter writes for ``scaled_dot_product_attention``.

Both models are exported from PyTorch in the same run (dynamic sequence length, fp32) and run on
the same inputs in ONNX Runtime. Defaults follow issue 4: N = 8K, Hq = 8, Hkv = 2, D = 64,
W = 512, S = 64, G = 64 (T = max(128, G)), causal.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..ops.blocked import delta_attention_blocked
from ..ops.cost import attention_cost
from .measure import machine_info, peak_extra_rss, time_call

DEFAULTS = dict(batch=1, q_heads=8, kv_heads=2, head_dim=64, window=512, sinks=64, stride=64)
_EXPORT_LEN = 256


class _Delta(torch.nn.Module):
    def __init__(self, window: int, sinks: int, stride: int, correction: str = "paper") -> None:
        super().__init__()
        self.params = dict(window=window, sinks=sinks, stride=stride, correction=correction)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from .. import delta_attention

        return delta_attention(q, k, v, causal=True, **self.params)


class _Dense(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])


def export_models(
    folder: str | Path,
    *,
    batch: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    window: int,
    sinks: int,
    stride: int,
    inline: bool = False,
    corrections: tuple[str, ...] = ("paper",),
) -> dict[str, Path]:
    """Export the dense SDPA layer (``"dense"``) and one DeltaAttention layer per correction plan
    (keyed by the plan; dynamic sequence length) into ``folder``."""
    from ..backends.onnx import export_onnx

    folder = Path(folder)
    q, k, v = _inputs(_EXPORT_LEN, batch, q_heads, kv_heads, head_dim)
    seq = torch.export.Dim("seq")
    dims = ({2: seq},) * 3
    paths = {"dense": folder / "dense.onnx"}
    export_onnx(_Dense(), (q, k, v), paths["dense"], dynamic_shapes=dims, force=True)
    for i, correction in enumerate(corrections):
        paths[correction] = folder / f"delta{i}.onnx"
        module = _Delta(window, sinks, stride, correction)
        export_onnx(module, (q, k, v), paths[correction], dynamic_shapes=dims, inline=inline, force=True)
    return paths


def _inputs(n: int, batch: int, q_heads: int, kv_heads: int, head_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, h, n, head_dim, generator=g) for h in (q_heads, kv_heads, kv_heads))


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    from ..backends.onnx import load_session

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return load_session(path, options=options)


def setup(path: str, n: int, batch: int, q_heads: int, kv_heads: int, head_dim: int, threads: int) -> Callable[[], Any]:
    """Open ``path`` in ONNX Runtime and return one run of it on fresh inputs of length ``n``."""
    sess = _session(path, threads)
    feed = dict(zip(("q", "k", "v"), (t.numpy() for t in _inputs(n, batch, q_heads, kv_heads, head_dim))))
    return lambda: sess.run(None, feed)


def run(
    ns: tuple[int, ...] = (8192,),
    *,
    repeat: int = 3,
    memory: bool = False,
    threads: int | None = None,
    inline: bool = False,
    corrections: tuple[str, ...] = ("paper",),
    **overrides: int,
) -> dict[str, Any]:
    """Time the dense layer and one DeltaAttention layer per correction plan at each length.

    ``corrections`` are the op's ``correction`` values (a rule, or one per query head); the
    first is the row's ``"delta"`` (speed-up vs dense). With more than one, ``by_correction``
    gives each plan's time and its ratio to the first plan's, measured in the same process.
    """
    params = {**DEFAULTS, **overrides}
    threads = threads or torch.get_num_threads()
    if not corrections:
        raise ValueError("corrections must name at least one correction plan")
    shape = {key: params[key] for key in ("batch", "q_heads", "kv_heads", "head_dim")}
    structure = {key: params[key] for key in ("window", "sinks", "stride")}
    results = []
    errors: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = export_models(folder, **params, inline=inline, corrections=tuple(corrections))
        for n in ns:
            row: dict[str, Any] = {"n": n}
            timings: dict[str, dict[str, Any]] = {}
            for name in ("dense", *corrections):
                timings[name] = time_call(setup(str(paths[name]), n, threads=threads, **shape), repeat=repeat)
                if memory:
                    timings[name]["peak_extra_bytes"] = peak_extra_rss(
                        "delta_opt.bench.onnx_cpu:setup", path=str(paths[name]), n=n, threads=threads, **shape
                    )
            row["dense"], row["delta"] = timings["dense"], timings[corrections[0]]
            row["speedup"] = row["dense"]["median_s"] / row["delta"]["median_s"]
            cost = attention_cost(n, **structure, causal=True)
            row["ideal_speedup"] = cost.ideal_speedup
            if len(corrections) > 1:
                first = timings[corrections[0]]["median_s"]
                row["by_correction"] = {
                    c: {**timings[c], f"time_vs_{corrections[0]}": timings[c]["median_s"] / first,
                        "speedup_vs_dense": row["dense"]["median_s"] / timings[c]["median_s"]}
                    for c in corrections
                }  # fmt: skip
            results.append(row)
        # Correctness of what was timed: ORT's DeltaAttention against the PyTorch op, same inputs.
        n_check = min(ns)
        q, k, v = _inputs(n_check, **shape, seed=1)
        for correction in corrections:
            sess = _session(paths[correction], threads)
            got = sess.run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
            expected = delta_attention_blocked(q, k, v, causal=True, **structure, correction=correction)
            errors[correction] = float(np.abs(got - expected.numpy()).max())
    import onnxruntime

    result: dict[str, Any] = {
        "benchmark": "onnx_cpu",
        "dtype": "float32",
        "params": params,
        "inline": inline,
        "baseline": "torch.onnx export of scaled_dot_product_attention(is_causal=True, enable_gqa=True), opset 18",
        "machine": {**machine_info(), "onnxruntime": onnxruntime.__version__, "ort_intra_op_threads": threads},
        f"max_abs_error_vs_pytorch_op_at_{n_check}": errors[corrections[0]],
        "results": results,
    }
    if len(corrections) > 1 or corrections[0] != "paper":
        result["corrections"] = list(corrections)
        result[f"max_abs_error_vs_pytorch_op_at_{n_check}_by_correction"] = errors
    return result


def run_smollm2(n: int = 4096, *, repeat: int = 2, threads: int | None = None, export_len: int = 256, **overrides: int) -> dict[str, Any]:
    """End-to-end prefill latency of SmolLM2-135M in ONNX Runtime: converted vs dense, at length ``n``.

    The real model (``delta_opt.models.load_smollm2``, float32) is exported twice with a dynamic
    sequence length: as it is (the exporter's SDPA lowering) and converted with
    ``delta_opt.optimize`` (``export_onnx(config=...)``). Both run on the same random token ids;
    only the last position's logits are computed (``logits_to_keep=1``), as in a prefill step.
    """
    import delta_opt

    from ..backends.onnx import export_onnx
    from ..config import DeltaConfig
    from ..models import load_smollm2

    if getattr(delta_opt, "optimize", None) is None:
        raise ValueError("the SmolLM2 end-to-end benchmark needs delta_opt.optimize (the conversion pass)")
    params = {**{k: DEFAULTS[k] for k in ("window", "sinks", "stride")}, **overrides}
    threads = threads or torch.get_num_threads()
    model, _ = load_smollm2()
    g = torch.Generator().manual_seed(0)
    example = {"input_ids": torch.randint(0, model.config.vocab_size, (1, export_len), generator=g), "use_cache": False, "logits_to_keep": 1}
    dims = {"input_ids": {1: torch.export.Dim("seq", max=model.config.max_position_embeddings)}, "use_cache": None, "logits_to_keep": None}
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=g).numpy()
    row: dict[str, Any] = {"n": n}
    with tempfile.TemporaryDirectory() as folder:
        dense = export_onnx(model, example, Path(folder) / "dense.onnx", dynamic_shapes=dims)
        delta = export_onnx(model, example, Path(folder) / "delta.onnx", dynamic_shapes=dims, config=DeltaConfig(**params))
        outputs = {}
        for name, result in (("dense", dense), ("delta", delta)):
            sess = _session(result.path, threads)
            feed = {sess.get_inputs()[0].name: ids}
            row[name] = time_call(lambda: sess.run(None, feed), repeat=repeat)
            row[name]["delta_nodes"] = result.delta_nodes
            outputs[name] = sess.run(None, feed)[0]
            del sess
    row["speedup"] = row["dense"]["median_s"] / row["delta"]["median_s"]
    # How far the converted model's next-token distribution moves from the dense one's.
    dense_logp = torch.log_softmax(torch.from_numpy(outputs["dense"]).double().reshape(-1), 0)
    delta_logp = torch.log_softmax(torch.from_numpy(outputs["delta"]).double().reshape(-1), 0)
    row["last_token_kl_dense_to_delta"] = float((dense_logp.exp() * (dense_logp - delta_logp)).sum())
    row["same_argmax"] = bool(dense_logp.argmax() == delta_logp.argmax())
    import onnxruntime

    return {
        "benchmark": "onnx_cpu_smollm2",
        "dtype": "float32",
        "params": params,
        "converted_sites": delta.delta_nodes,
        "machine": {**machine_info(), "onnxruntime": onnxruntime.__version__, "ort_intra_op_threads": threads},
        "results": [row],
    }
