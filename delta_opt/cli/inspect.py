"""``delta-opt inspect MODEL``: the attention sites found and what conversion would do to each.

For a PyTorch model the passes run on a traced copy (nothing is written); for an ONNX file the
``delta_opt.DeltaAttention`` nodes are listed with their attributes.
"""

from __future__ import annotations

import argparse
from typing import Any

from .args import add_attention, add_config, add_logging, add_model
from .context import Context
from .errors import EXIT_OK, require
from .reports import delta_calls, dense_equivalence_notes, describe_inputs, print_conversion, print_delta_calls

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inspect",
        help="list the attention sites of MODEL and what conversion would do to each",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_config(parser)
    add_attention(parser)
    add_logging(parser)
    parser.set_defaults(run=run)


def run(ctx: Context) -> int:
    attention, inputs = ctx.settings("attention"), ctx.settings("inputs")
    if ctx.dump_requested({"attention": attention, "inputs": inputs}):
        return EXIT_OK
    loaded = ctx.load_model(allow_onnx=True)
    if loaded.kind == "onnx":
        return _inspect_onnx(ctx, loaded)
    import delta_opt

    existing = delta_calls(loaded.model) if loaded.is_exported() else []
    with ctx.console.step("tracing the model and matching attention"):
        example = None if loaded.is_exported() else loaded.example_inputs
        _, report = delta_opt.optimize(loaded.model, example, attention)
    notes = dense_equivalence_notes(report, attention)
    if existing:
        notes.insert(0, f"the program already calls delta_attention at {len(existing)} site(s)")
    if ctx.args.json:
        ctx.console.json(
            {
                "model": loaded.description,
                "inputs": describe_inputs(loaded),
                "delta_attention_calls": existing,
                "notes": notes,
                "report": report.to_dict(),
            }
        )
        return EXIT_OK
    ctx.console.line(f"model: {loaded.description}")
    if existing:
        print_delta_calls(ctx.console, existing)
    if report.num_sites or report.unmatched or not existing:
        print_conversion(ctx.console, report, title="attention sites")
    for note in notes:
        ctx.console.note(note)
    return EXIT_OK


def _inspect_onnx(ctx: Context, loaded: Any) -> int:
    require("onnx", needed_for="inspecting an ONNX file", install="pip install 'delta-opt[onnx]'")
    from collections import Counter

    import onnx

    from .errors import CliError

    try:
        model = onnx.load(str(loaded.path), load_external_data=False)
    except Exception as e:
        raise CliError(f"MODEL {str(loaded.path)!r} is not a readable ONNX file: {type(e).__name__}: {e}") from None
    # The node contract lives in the ONNX backend (domain delta_opt, op DeltaAttention, version 1);
    # these names are the spec's (DESIGN §3), read here without importing the exporter.
    domain, op_type = "delta_opt", "DeltaAttention"
    nodes = []
    for node in model.graph.node:
        if node.domain == domain and node.op_type == op_type:
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            nodes.append(
                {"name": node.name, "inputs": list(node.input), "outputs": list(node.output), "attributes": attributes}
            )
    has_body = any((f.domain, f.name) == (domain, op_type) for f in model.functions)
    counts = Counter(f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node)
    info = {
        "model": loaded.description,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "num_nodes": len(model.graph.node),
        "delta_attention_nodes": nodes,
        "delta_attention_function_body": has_body,
        "op_counts": dict(counts.most_common()),
    }
    if ctx.args.json:
        ctx.console.json(info)
        return EXIT_OK
    ctx.console.line(f"model: {loaded.description}")
    ctx.console.line(
        f"opsets: {info['opsets']}; {info['num_nodes']} nodes; inputs {info['inputs']}; outputs {info['outputs']}"
    )
    rows = []
    for n in nodes:
        attrs = ", ".join(f"{k}={_short(v)}" for k, v in sorted(n["attributes"].items()))
        rows.append((n["name"], ", ".join(n["inputs"]), attrs))
    body = "carries" if has_body else "does not carry"
    caption = f"{len(nodes)} DeltaAttention node(s); the model {body} their function body (what ONNX Runtime runs)"
    ctx.console.table("DeltaAttention nodes", ("node", "inputs", "attributes"), rows, caption=caption)
    return EXIT_OK


def _short(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
