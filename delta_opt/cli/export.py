"""``delta-opt export onnx|trt MODEL -o FILE``: lower the converted model for a runtime.

``onnx`` converts the attention (unless MODEL is a saved program that already calls
``delta_attention``) and writes an ONNX file whose attention sites are ``delta_opt.DeltaAttention``
nodes carrying a function body of standard ops, so ONNX Runtime runs it as it is.

``trt`` builds a TensorRT engine from such an ONNX file (or from MODEL via ``onnx``). It needs
TensorRT >= 10.7 and the engine builder ``delta_opt.backends.tensorrt.build_engine``; when either
is missing it says which and exits with code 2 before doing any work.
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path
from typing import Any

from .args import add_attention, add_config, add_logging, add_model, add_output
from .context import Context
from .errors import EXIT_OK, CliError, MissingDependency
from .optimize import add_dynamic, check_dynamic_flags, dynamic_shapes
from .outputs import claim, write_json_file, write_via
from .reports import conversion_summary, dense_equivalence_notes, describe_inputs, print_conversion

__all__ = ["register"]

ONNX_INSTALL = "pip install 'delta-opt[onnx]'"
TRT_INSTALL = "pip install 'delta-opt[trt]' on a machine with an NVIDIA GPU and TensorRT's libraries"
TRT_BUILDER = "delta_opt.backends.tensorrt"


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="export the converted MODEL to ONNX (onnx) or a TensorRT engine (trt)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    targets = parser.add_subparsers(dest="target", metavar="TARGET", required=True, parser_class=type(parser))
    onnx_parser = targets.add_parser(
        "onnx",
        help="an ONNX file with DeltaAttention nodes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(onnx_parser, output_help="the .onnx file to write (required unless --dump-config)")
    onnx_parser.add_argument("--report", metavar="FILE", help="also write a JSON report here")
    onnx_parser.set_defaults(run=run_onnx)
    trt_parser = targets.add_parser(
        "trt",
        help="a TensorRT engine (needs TensorRT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(trt_parser, output_help="the engine file to write (required unless --dump-config)")
    trt_parser.add_argument(
        "--precision", choices=("fp32", "fp16", "bf16"), default="fp16", help="engine precision (default fp16)"
    )
    trt_parser.set_defaults(run=run_trt)


def _common(parser: argparse.ArgumentParser, *, output_help: str) -> None:
    add_model(parser)
    add_output(parser, required=False, help=output_help)
    group = parser.add_argument_group("ONNX")
    group.add_argument("--opset", type=int, default=None, help="ONNX opset of the default domain (default 18)")
    group.add_argument(
        "--inline",
        action="store_true",
        help="write the DeltaAttention bodies in place (standard ONNX ops only, no custom node)",
    )
    add_dynamic(parser)
    add_config(parser)
    add_attention(parser)
    add_logging(parser)


def _settings(ctx: Context) -> tuple[Any, Any] | None:
    attention, inputs = ctx.settings("attention"), ctx.settings("inputs")
    if ctx.dump_requested({"attention": attention, "inputs": inputs}):
        return None
    return attention, inputs


def _export_onnx_function() -> Any:
    """``delta_opt.export_onnx``, after checking that its packages are installed."""
    for module in ("onnx", "onnxscript"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingDependency(f"export onnx needs {module}, which is not installed: {ONNX_INSTALL}") from None
    import delta_opt

    try:
        return delta_opt.export_onnx
    except AttributeError:
        raise CliError("this installation of delta_opt has no ONNX exporter (delta_opt.export_onnx)") from None


def _export(ctx: Context, attention: Any, path: Path, *, force: bool) -> tuple[Any, Any]:
    """Load MODEL and export it to ``path``: (loaded model, ``OnnxExport``)."""
    export_onnx = _export_onnx_function()
    loaded = ctx.load_model()
    shapes = dynamic_shapes(ctx, loaded)
    # A saved program that already calls delta_attention is exported as it is; anything else is
    # converted first (export_onnx runs delta_opt.optimize with the config).
    config = None if loaded.delta_sites() else attention
    example = None if loaded.is_exported() else loaded.example_inputs
    what = "exporting to ONNX" if config is None else "converting the attention and exporting to ONNX"
    with ctx.console.step(what):
        result = export_onnx(
            loaded.model, example, path, config=config, opset=ctx.args.opset,
            dynamic_shapes=shapes, inline=ctx.args.inline, force=force,
        )  # fmt: skip
    return loaded, result


def run_onnx(ctx: Context) -> int:
    settings = _settings(ctx)
    if settings is None:
        return EXIT_OK
    attention, _ = settings
    args = ctx.args
    if args.output is None:
        raise CliError("-o/--output FILE.onnx is required")
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise CliError(f"-o {args.output!r}: the ONNX file must end in .onnx")
    check_dynamic_flags(args)
    claim(output, force=args.force)
    report_file = claim(args.report, force=args.force, what="report")
    loaded, result = _export(ctx, attention, output, force=args.force)
    report = result.conversion
    notes = dense_equivalence_notes(report, attention) if report is not None else []
    if result.delta_sites == 0:
        notes.insert(0, "the exported model has no DeltaAttention node: no attention site was converted")
    data = {
        "command": "export onnx",
        "model": loaded.description,
        "output": str(result.path),
        "inputs": describe_inputs(loaded),
        "opset": result.opset,
        "inline": result.inline,
        "dynamic": bool(args.dynamic),
        "delta_attention_nodes": result.delta_nodes,
        "delta_attention_sites": result.delta_sites,
        "onnx_inputs": list(result.input_names),
        "onnx_outputs": list(result.output_names),
        "config": None if report is None else attention.to_dict(),
        "summary": None if report is None else conversion_summary(report),
        "notes": notes,
        "report": None if report is None else report.to_dict(),
    }
    if report_file is not None:
        write_json_file(report_file, data, force=args.force, what="report")
    ctx.console.line(f"model: {loaded.description}")
    if report is not None:
        print_conversion(ctx.console, report, title="attention sites")
    for note in notes:
        ctx.console.note(note)
    nodes = "inlined" if result.inline else f"{result.delta_nodes} DeltaAttention node(s)"
    ctx.console.note(f"wrote {result.path}: {nodes} for {result.delta_sites} site(s), opset {result.opset}")
    return EXIT_OK


def _trt_builder() -> Any:
    """``build_engine``, or :class:`MissingDependency` naming everything that is missing."""
    missing = []
    try:
        importlib.import_module("tensorrt")
    except ImportError:
        missing.append(f"TensorRT >= 10.7 (the tensorrt package: {TRT_INSTALL})")
    builder = None
    try:
        builder = getattr(importlib.import_module(TRT_BUILDER), "build_engine", None)
    except ImportError:
        pass
    if builder is None:
        missing.append(f"the engine builder {TRT_BUILDER}.build_engine (not in this version of delta_opt yet)")
    if missing:
        raise MissingDependency(f"export trt needs what this installation lacks: {' and '.join(missing)}")
    return builder


def run_trt(ctx: Context) -> int:
    settings = _settings(ctx)
    if settings is None:
        return EXIT_OK
    attention, _ = settings
    build_engine = _trt_builder()
    args = ctx.args
    if args.output is None:
        raise CliError("-o/--output FILE is required")
    check_dynamic_flags(args)
    output = claim(args.output, force=args.force)
    assert output is not None

    # The builder's signature is the one the TensorRT issue specifies:
    # build_engine(onnx_path, engine_path, *, precision, ...); it writes a temporary sibling of the
    # output, renamed into place here, so an engine file is never half-written or overwritten.
    def build(onnx_path: Path) -> None:
        with ctx.console.step(f"building a TensorRT engine ({args.precision})"):
            write_via(output, lambda tmp: build_engine(onnx_path, tmp, precision=args.precision), force=args.force)

    if args.model is not None and args.model.endswith(".onnx"):
        onnx_path = Path(args.model)
        if not onnx_path.is_file():
            raise CliError(f"MODEL file {args.model!r} does not exist")
        build(onnx_path)
    else:
        with tempfile.TemporaryDirectory(prefix="delta-opt-trt-") as tmp:
            _, result = _export(ctx, attention, Path(tmp) / "model.onnx", force=False)
            build(result.path)
    ctx.console.note(f"wrote {output}")
    return EXIT_OK
