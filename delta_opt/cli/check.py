"""``delta-opt check MODEL``: the CI gate — convert, compare with dense, hold to thresholds.

Converts MODEL's attention, runs the dense model and the converted program on the same inputs
(the model's own, generated ones, ``--inputs`` or ``--text``), and measures every floating output:
SQNR in dB and relative L2 error against dense; for language-model logits (an output named
``logits``) also the mean KL(dense || converted) and the top-1 agreement. With timing on it also
times both forward passes. Each measurement is held to its ``[check]`` threshold (flags
override; ``off`` skips one), and so is the number of converted sites (``min_converted``).

Prints a summary (``--quiet``: nothing), writes the JSON report with ``-o``, appends a Markdown
summary to ``$GITHUB_STEP_SUMMARY`` when that is set, and exits 0 when every check passes, 1 when
one fails, 2 on bad input or setup.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Any

from .args import add_attention, add_config, add_logging, add_model, add_output, add_table_flags
from .context import Context
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .outputs import claim, write_json_file
from .reports import conversion_summary, dense_equivalence_notes, describe_inputs, print_conversion
from .settings import CheckSettings

__all__ = ["Check", "compare_outputs", "evaluate", "markdown_summary", "register", "run"]

# Threshold key -> (metric, relation, applies to): "all" floating outputs or "logits" only.
THRESHOLDS: dict[str, tuple[str, str, str]] = {
    "min_sqnr_db": ("sqnr_db", ">=", "all"),
    "max_relative_l2": ("relative_l2", "<=", "all"),
    "max_kl": ("kl_divergence", "<=", "logits"),
    "min_top1_agreement": ("top1_agreement", ">=", "logits"),
}


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "check",
        help="CI gate: convert MODEL, compare with dense, exit 1 when a fidelity threshold fails",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(parser)
    add_output(parser, required=False, help="write the JSON report here")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout instead of the summary")
    add_table_flags(parser, "check", "thresholds ([check] in the config file)")
    add_config(parser)
    add_attention(parser)
    add_logging(parser)
    parser.set_defaults(run=run)


@dataclass
class Check:
    """One threshold held against one measurement."""

    name: str  # the [check] key
    output: str | None  # the model output it measured ("logits"), None for model-wide checks
    metric: str
    value: float | int | None
    relation: str  # ">=" or "<="
    threshold: float | int
    passed: bool


# ---- measuring -----------------------------------------------------------------------------


def _path_name(path: tuple[Any, ...]) -> str:
    parts = []
    for key in path:
        for attr in ("key", "idx", "name"):  # MappingKey, SequenceKey, GetAttrKey
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return ".".join(parts) or "output"


def _tensor_leaves(value: Any) -> dict[str, Any]:
    import torch
    from torch.utils._pytree import tree_flatten_with_path

    leaves, _ = tree_flatten_with_path(value)
    return {_path_name(path): leaf for path, leaf in leaves if isinstance(leaf, torch.Tensor)}


def _is_logits(name: str, tensor: Any) -> bool:
    return name.split(".")[-1].lower() == "logits" and tensor.ndim >= 2 and tensor.shape[-1] > 1


def compare_outputs(dense: Any, converted: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Metrics of every tensor output of ``converted`` against ``dense``, matched by name.

    Returns ``(outputs, problems)``: one dict per output (name, shape, dtype, metrics) and the
    structural problems found (an output missing on one side, shapes that differ).
    """
    from ..eval.metrics import kl_divergence, next_token_agreement, relative_l2, sqnr_db

    dense_leaves, converted_leaves = _tensor_leaves(dense), _tensor_leaves(converted)
    problems = []
    if dense_leaves.keys() != converted_leaves.keys():
        problems.append(
            f"the outputs differ: dense has {sorted(dense_leaves)}, converted has {sorted(converted_leaves)}"
        )
    outputs = []
    for name, ref in dense_leaves.items():
        got = converted_leaves.get(name)
        if got is None:
            continue
        entry: dict[str, Any] = {"name": name, "shape": list(ref.shape), "dtype": str(ref.dtype).replace("torch.", "")}
        if got.shape != ref.shape:
            problems.append(f"output {name!r} has shape {list(got.shape)} converted, {list(ref.shape)} dense")
            continue
        if not ref.is_floating_point():
            entry["compared"] = False
            entry["identical"] = bool((got == ref).all())
            outputs.append(entry)
            continue
        ref, got = ref.detach().cpu(), got.detach().cpu()
        entry["compared"] = True
        entry["logits"] = _is_logits(name, ref)
        metrics = {
            "sqnr_db": sqnr_db(ref, got),
            "relative_l2": relative_l2(ref, got),
            "max_abs_error": float((got.double() - ref.double()).abs().max()) if ref.numel() else 0.0,
            "finite": bool(got.isfinite().all()),
        }
        if entry["logits"]:
            metrics["kl_divergence"] = kl_divergence(ref, got)
            metrics["top1_agreement"] = next_token_agreement(ref, got)
        entry["metrics"] = metrics
        outputs.append(entry)
    return outputs, problems


def evaluate(
    thresholds: CheckSettings, num_converted: int, outputs: list[dict[str, Any]], timing: dict[str, Any] | None
) -> list[Check]:
    """Every enabled threshold held against what was measured."""
    checks = [
        Check("min_converted", None, "converted_sites", num_converted, ">=", thresholds.min_converted,
              num_converted >= thresholds.min_converted)
    ]  # fmt: skip
    for key, (metric, relation, scope) in THRESHOLDS.items():
        threshold = getattr(thresholds, key)
        if threshold is None:
            continue
        for out in outputs:
            if not out["compared"] or (scope == "logits" and not out["logits"]):
                continue
            value = out["metrics"][metric]
            checks.append(
                Check(key, out["name"], metric, value, relation, threshold, _holds(value, relation, threshold))
            )
    if timing is not None and thresholds.max_time_ratio is not None:
        ratio = timing["ratio"]
        checks.append(Check("max_time_ratio", None, "time_ratio", ratio, "<=", thresholds.max_time_ratio,
                            _holds(ratio, "<=", thresholds.max_time_ratio)))  # fmt: skip
    return checks


def _holds(value: float, relation: str, threshold: float) -> bool:
    # NaN compares false either way: a NaN measurement fails its check.
    return value >= threshold if relation == ">=" else value <= threshold


def _time_both(loaded: Any, program: Any, repeat: int) -> dict[str, Any]:
    import torch

    from ..bench.measure import time_call

    dense_module = loaded.model.module() if loaded.is_exported() else loaded.model
    converted_module = program.module()
    args, kwargs = loaded.args, loaded.kwargs
    with torch.no_grad():
        dense = time_call(lambda: dense_module(*args, **kwargs), repeat=repeat)
        converted = time_call(lambda: converted_module(*args, **kwargs), repeat=repeat)
    return {
        "dense": dense,
        "converted": converted,
        "ratio": converted["median_s"] / dense["median_s"],
        "what": "median wall time of one forward pass: the dense model as loaded vs the converted ExportedProgram's module()",
    }


# ---- reporting -----------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def _json_safe(value: Any) -> Any:
    """Non-finite floats as the strings "inf", "-inf", "nan" (strict JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _not_checked(thresholds: CheckSettings, outputs: list[dict[str, Any]]) -> list[str]:
    off = [k for k in THRESHOLDS if getattr(thresholds, k) is None]
    if thresholds.max_time_ratio is None:
        off.append("max_time_ratio")
    if not any(o.get("logits") for o in outputs):
        off += [k for k in ("max_kl", "min_top1_agreement") if getattr(thresholds, k) is not None]
    return off


def _check_rows(checks: list[Check]) -> list[tuple[str, ...]]:
    return [
        (c.name, c.output or "-", _fmt(c.value), f"{c.relation} {_fmt(c.threshold)}", "pass" if c.passed else "FAIL")
        for c in checks
    ]


def markdown_summary(report: dict[str, Any]) -> str:
    """The GitHub step summary: verdict, what was measured, every check, what was not checked."""
    verdict = "PASS" if report["passed"] else "FAIL"
    failed = sum(not c["passed"] for c in report["checks"])
    lines = [
        f"### delta-opt check: {verdict} ({len(report['checks']) - failed} of {len(report['checks'])} checks met)",
        "",
        f"- model: {report['model']}",
        "- inputs: " + ", ".join(f"`{k}` {_describe(v)}" for k, v in report["inputs"].items()),
        "- attention: " + ", ".join(f"{k}={v}" for k, v in report["config"].items() if v not in (None, [], ())),
        f"- sites: {report['conversion']['num_converted']} converted, {report['conversion']['num_skipped']} kept dense",
        f"- configuration: {_config_source(report)}",
        "",
        "| check | output | measured | threshold | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in report["checks"]:
        result = "pass" if c["passed"] else "**FAIL**"
        lines.append(
            f"| `{c['name']}` | {c['output'] or '-'} | {_fmt(c['value'])} | {c['relation']} {_fmt(c['threshold'])} | {result} |"
        )
    if report["not_checked"]:
        lines += ["", "Not checked: " + ", ".join(f"`{k}`" for k in report["not_checked"]) + "."]
    if report.get("timing"):
        t = report["timing"]
        lines += ["", f"Timing: dense {t['dense']['median_s']:.4g} s, converted {t['converted']['median_s']:.4g} s "
                      f"(ratio {t['ratio']:.3g}; {t['what']})."]  # fmt: skip
    for note in report["notes"]:
        lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def _config_source(report: dict[str, Any]) -> str:
    where = f"{report['config_file']} and flags" if report["config_file"] else "built-in defaults and flags"
    return f"{where} (`delta-opt check --dump-config` prints it)"


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "shape" in value:
        return f"{value['dtype']} {value['shape']}"
    return repr(value)


def _print_summary(ctx: Context, report: dict[str, Any], checks: list[Check], conversion: Any) -> None:
    console = ctx.console
    console.line(f"model: {report['model']}")
    console.line("inputs: " + ", ".join(f"{k} {_describe(v)}" for k, v in report["inputs"].items()))
    console.line(f"configuration: {_config_source(report)}")
    print_conversion(console, conversion, title="attention sites")
    rows = []
    for out in report["outputs"]:
        if not out["compared"]:
            rows.append((out["name"], out["shape"], "not compared (not floating point)", "", "", "", ""))
            continue
        m = out["metrics"]
        rows.append((out["name"], out["shape"], _fmt(m["sqnr_db"]), _fmt(m["relative_l2"]), _fmt(m["max_abs_error"]),
                     _fmt(m.get("kl_divergence", "-")), _fmt(m.get("top1_agreement", "-"))))  # fmt: skip
    console.table(
        "converted vs dense", ("output", "shape", "SQNR dB", "rel. L2", "max |err|", "KL (nats)", "top-1"), rows
    )
    failed = sum(not c.passed for c in checks)
    verdict = "PASS" if not failed else "FAIL"
    caption = f"{verdict}: {len(checks) - failed} of {len(checks)} checks met"
    if report["not_checked"]:
        caption += "; not checked: " + ", ".join(report["not_checked"])
    console.table(
        "checks", ("check", "output", "measured", "threshold", "result"), _check_rows(checks), caption=caption
    )
    if report.get("timing"):
        t = report["timing"]
        console.line(
            f"timing: dense {t['dense']['median_s']:.4g} s, converted {t['converted']['median_s']:.4g} s, ratio {t['ratio']:.3g}"
        )
    for note in report["notes"]:
        console.note(note)


def _append_step_summary(ctx: Context, report: dict[str, Any]) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown_summary(report))
    except OSError as e:  # the gate's verdict stands; only the summary is lost
        ctx.console.note(f"could not append to GITHUB_STEP_SUMMARY={path!r}: {e}")


# ---- the command ---------------------------------------------------------------------------


def _load_dense(ctx: Context) -> Any:
    loaded = ctx.load_model()
    already = loaded.delta_sites()
    if already:
        raise CliError(
            f"{loaded.description} already calls delta_attention at {already} site(s); check compares a dense "
            "model with its conversion, so give it the dense model"
        )
    if not loaded.args and not loaded.kwargs:
        raise CliError(f"{loaded.description} has no example inputs to run; pass --inputs FILE")
    return loaded


def _measure(ctx: Context, loaded: Any, attention: Any, thresholds: CheckSettings) -> dict[str, Any]:
    """Convert, run both, compare (and time): what the checks are held against."""
    import delta_opt

    from .models import run_model

    with ctx.console.step("tracing the model and converting its attention"):
        example = None if loaded.is_exported() else loaded.example_inputs
        program, conversion = delta_opt.optimize(loaded.model, example, attention)
    with ctx.console.step("running the dense model"):
        dense = run_model(loaded.model, loaded.args, loaded.kwargs)
    with ctx.console.step("running the converted program"):
        converted = run_model(program, loaded.args, loaded.kwargs)
    with ctx.console.step("comparing outputs"):
        outputs, problems = compare_outputs(dense, converted)
    timing = None
    if thresholds.timed:
        with ctx.console.step(f"timing dense and converted ({thresholds.repeat} calls each)"):
            timing = _time_both(loaded, program, thresholds.repeat)
    return {"conversion": conversion, "outputs": outputs, "problems": problems, "timing": timing}


def _notes(loaded: Any, measured: dict[str, Any], attention: Any) -> list[str]:
    notes = measured["problems"] + dense_equivalence_notes(measured["conversion"], attention)
    if loaded.kind == "default":
        notes.append(
            "the embedded default is a random-init model: this run tests the pipeline, not a trained model's fidelity"
        )
    for out in measured["outputs"]:
        if out["compared"] and not out["metrics"]["finite"]:
            notes.append(f"output {out['name']!r} of the converted program has non-finite values")
    return notes


def run(ctx: Context) -> int:
    attention, inputs, thresholds = ctx.settings("attention"), ctx.settings("inputs"), ctx.settings("check")
    if ctx.dump_requested({"attention": attention, "inputs": inputs, "check": thresholds}):
        return EXIT_OK
    output = claim(ctx.args.output, force=ctx.args.force, what="report")
    try:
        import delta_opt.eval.metrics  # noqa: F401
    except ImportError as e:
        raise CliError(f"check needs delta_opt.eval.metrics, which this installation lacks ({e})") from None
    import torch

    import delta_opt

    start = time.perf_counter()
    loaded = _load_dense(ctx)
    measured = _measure(ctx, loaded, attention, thresholds)
    conversion, outputs = measured["conversion"], measured["outputs"]
    checks = evaluate(thresholds, conversion.num_converted, outputs, measured["timing"])
    if measured["problems"]:  # a conversion that changes what the model returns fails the gate
        checks.insert(1, Check("outputs_match", None, "mismatched_outputs", len(measured["problems"]), "<=", 0, False))
    passed = all(c.passed for c in checks)
    report = {
        "command": "check",
        "passed": passed,
        "exit_code": EXIT_OK if passed else EXIT_FAILED,
        "model": loaded.description,
        "inputs": describe_inputs(loaded),
        "config": attention.to_dict(),
        "thresholds": asdict(thresholds),
        "config_file": str(ctx.config.path) if ctx.config.path else None,
        "conversion": conversion_summary(conversion),
        "outputs": outputs,
        "checks": [asdict(c) for c in checks],
        "not_checked": _not_checked(thresholds, outputs),
        "timing": measured["timing"],
        "notes": _notes(loaded, measured, attention),
        "sites": [s.to_dict() for s in conversion.sites],
        "environment": {
            "delta_opt": delta_opt.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": ctx.args.device,
        },
        "elapsed_s": time.perf_counter() - start,
    }
    report = _json_safe(report)
    if output is not None:
        write_json_file(output, report, force=ctx.args.force, what="report")
    _append_step_summary(ctx, report)
    if ctx.args.json:
        ctx.console.json(report)
    else:
        _print_summary(ctx, report, checks, conversion)
    if output is not None:
        ctx.console.note(f"wrote {output}")
    return EXIT_OK if passed else EXIT_FAILED
