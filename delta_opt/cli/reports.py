"""Conversion reports as the commands show and save them."""

from __future__ import annotations

from typing import Any

from ..config import DeltaConfig
from ..ops.checks import num_corrected_rows
from .console import Console
from .models import LoadedModel

__all__ = [
    "conversion_summary",
    "delta_calls",
    "dense_equivalence_notes",
    "describe_inputs",
    "print_conversion",
    "print_delta_calls",
]


def describe_inputs(loaded: LoadedModel) -> dict[str, Any]:
    """Shapes and dtypes of the example inputs (values of non-tensors as they are)."""
    import torch

    def one(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
        return value if isinstance(value, (bool, int, float, str, type(None))) else type(value).__name__

    out: dict[str, Any] = {f"arg{i}": one(v) for i, v in enumerate(loaded.args)}
    out.update({k: one(v) for k, v in loaded.kwargs.items()})
    return out


def conversion_summary(report: Any) -> dict[str, Any]:
    """The counts of a ``delta_opt.Report`` without the per-site details."""
    return {
        "num_sites": report.num_sites,
        "num_converted": report.num_converted,
        "num_skipped": report.num_skipped,
        "skip_reasons": report.skip_reasons,
        "forms": report.forms,
    }


def dense_equivalence_notes(report: Any, config: DeltaConfig) -> list[str]:
    """Converted sites whose Delta Attention equals dense attention at the traced length.

    Causal attention is exactly dense when no sparse row exists (``Np = 0``) or every sparse row
    sees all its keys (``Np <= window``); bidirectional when ``Np = 0`` or ``N <= window``; any
    attention when ``stride = 1`` under the paper's correction. A fidelity number measured there says nothing about the
    sparse approximation, so the commands say so.
    """
    lengths: dict[tuple[int, int, int, int], int] = {}
    for site in report.converted:
        n = site.q_shape[2] if site.q_shape else None
        if not isinstance(n, int):
            continue  # a dynamic length: decided at run time
        # The parameters the site got: a layer plan may override window and stride.
        heads = site.heads if isinstance(site.heads, int) else None
        kw = config.op_kwargs(site.layer, heads)
        rows = num_corrected_rows(n, kw["stride"], kw["tail"])
        reach = rows if site.causal else n
        # Stride 1 makes every row an anchor, which the paper's rule sets to its dense output.
        anchors_only = kw["stride"] == 1 and set(kw["correction"].split(",")) == {"paper"}
        if rows == 0 or reach <= kw["window"] or anchors_only:
            key = (n, kw["window"], kw["stride"], kw["tail"])
            lengths[key] = lengths.get(key, 0) + 1
    notes = []
    for (n, window, stride, tail), count in sorted(lengths.items()):
        notes.append(
            f"{count} converted site(s) at N = {n} compute exactly dense attention with window "
            f"{window}, stride {stride}, tail {tail}: the sparse approximation is not exercised at "
            "this length (use a longer --seq-len or a smaller window)"
        )
    return notes


def print_conversion(console: Console, report: Any, *, title: str) -> None:
    """The per-site table of a ``delta_opt.Report`` and the softmaxes that were not attention."""
    rows = []
    for s in report.sites:
        shape = "[" + ",".join(map(str, s.q_shape)) + "]" if s.q_shape else "?"
        heads = f"{s.heads}/{s.kv_heads}" if s.heads is not None else "?"
        status = "converted" if s.converted else f"kept: {s.reason}"
        rows.append((s.index, s.module or "<root>", s.form, shape, heads, s.mask or "?", status))
    caption = f"{report.num_sites} attention site(s): {report.num_converted} converted, {report.num_skipped} kept dense"
    console.table(title, ("#", "module", "form", "q [B,H,N,D]", "heads/kv", "mask", "status"), rows, caption=caption)
    for u in report.unmatched:
        console.line(f"softmax not taken for attention: {u.module or '<root>'} ({u.node}): {u.reason}")


def delta_calls(program: Any) -> list[dict[str, Any]]:
    """The ``delta_opt::delta_attention`` calls already in an ExportedProgram, with their parameters."""
    import torch

    target = torch.ops.delta_opt.delta_attention.default
    calls = []
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target is not target:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else ""
        q = node.args[0].meta.get("val") if node.args and hasattr(node.args[0], "meta") else None
        calls.append(
            {
                "node": node.name,
                "module": module,
                "q_shape": [s if isinstance(s, int) else str(s) for s in q.shape] if q is not None else None,
                "mask": len(node.args) > 3 and node.args[3] is not None or node.kwargs.get("attn_mask") is not None,
                **{k: v for k, v in node.kwargs.items() if k != "attn_mask"},
            }
        )
    return calls


def print_delta_calls(console: Console, calls: list[dict[str, Any]]) -> None:
    rows = []
    for c in calls:
        shape = "[" + ",".join(map(str, c["q_shape"])) + "]" if c["q_shape"] else "?"
        params = ", ".join(f"{k}={c[k]}" for k in ("causal", "window", "sinks", "stride", "tail", "impl") if k in c)
        rows.append((c["node"], c["module"] or "<root>", shape, "yes" if c["mask"] else "no", params))
    console.table(
        "delta_attention calls already in the program", ("node", "module", "q [B,H,N,D]", "mask", "parameters"), rows
    )
