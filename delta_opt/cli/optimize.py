"""``delta-opt optimize MODEL -o out.pt2``: convert the attention and save the ExportedProgram.

Writes the converted program (``torch.export.save``; load it with ``torch.export.load``) and a
JSON report next to it (``out.report.json``, or ``--report FILE``): every attention site,
converted or not and why, with the config and inputs used. Neither file is overwritten
without ``--force``; both are written atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .args import add_attention, add_config, add_logging, add_model, add_output, positive_int
from .context import Context
from .errors import EXIT_OK, CliError
from .outputs import claim, write_json_file, write_via
from .reports import conversion_summary, dense_equivalence_notes, describe_inputs, print_conversion

__all__ = ["add_dynamic", "check_dynamic_flags", "dynamic_shapes", "register", "report_path", "run"]


def add_dynamic(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shapes")
    group.add_argument(
        "--dynamic",
        action="store_true",
        help="trace with a dynamic sequence length (dim 1 of token inputs such as input_ids, "
        "or the factory's dynamic_shapes)",
    )
    group.add_argument("--max-seq-len", type=positive_int, default=None, metavar="N",
                       help="with --dynamic: the longest sequence the program accepts (default: the model "
                            "config's max_position_embeddings, else 131072)")  # fmt: skip


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "optimize",
        help="convert MODEL's attention and save the ExportedProgram (.pt2) with a report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model(parser)
    add_output(parser, required=False, help="the .pt2 file to write (required unless --dump-config)")
    parser.add_argument("--report", metavar="FILE", help="the JSON report (default: OUTPUT with .report.json)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    add_dynamic(parser)
    add_config(parser)
    add_attention(parser)
    add_logging(parser)
    parser.set_defaults(run=run)


def report_path(output: Path) -> Path:
    """``out.pt2`` -> ``out.report.json``."""
    return output.with_name(output.stem + ".report.json")


def check_dynamic_flags(args: Any) -> None:
    """Flag combinations ``--dynamic`` needs, checked before any work."""
    if not args.dynamic and args.max_seq_len is not None:
        raise CliError("--max-seq-len applies with --dynamic")
    if args.dynamic and args.model is not None and args.model.endswith(".pt2"):
        raise CliError("--dynamic applies when tracing; a saved program keeps the shapes it was exported with")


def dynamic_shapes(ctx: Context, loaded: Any) -> Any:
    """The ``dynamic_shapes`` that ``--dynamic`` asks for, or None."""
    if not ctx.args.dynamic:
        return None
    if loaded.is_exported():
        raise CliError("--dynamic applies when tracing; a saved program keeps the shapes it was exported with")
    max_len = ctx.args.max_seq_len
    if max_len is None:
        config = getattr(loaded.model, "config", None)
        max_len = getattr(config, "max_position_embeddings", None) or 131072
    return loaded.sequence_dynamic_shapes(max_len)


def run(ctx: Context) -> int:
    attention, inputs = ctx.settings("attention"), ctx.settings("inputs")
    if ctx.dump_requested({"attention": attention, "inputs": inputs}):
        return EXIT_OK
    args = ctx.args
    if args.output is None:
        raise CliError("-o/--output FILE.pt2 is required")
    output = Path(args.output)
    if output.suffix != ".pt2":
        raise CliError(f"-o {args.output!r}: the program is written as a .pt2 file (torch.export.save)")
    report_file = Path(args.report) if args.report else report_path(output)
    if report_file.resolve() == output.resolve():
        raise CliError("--report must differ from -o")
    check_dynamic_flags(args)
    claim(output, force=args.force, what="output")
    claim(report_file, force=args.force, what="report")

    import torch

    import delta_opt

    loaded = ctx.load_model()
    shapes = dynamic_shapes(ctx, loaded)
    with ctx.console.step("tracing the model and converting its attention"):
        example = None if loaded.is_exported() else loaded.example_inputs
        program, report = delta_opt.optimize(loaded.model, example, attention, dynamic_shapes=shapes)
    notes = dense_equivalence_notes(report, attention)
    if report.num_converted == 0:
        notes.insert(0, "no attention site was converted: the program computes what the model did (see the reasons)")
    with ctx.console.step(f"saving {output}"):
        write_via(output, lambda tmp: torch.export.save(program, tmp), force=args.force)
    data = {
        "command": "optimize",
        "model": loaded.description,
        "output": str(output),
        "inputs": describe_inputs(loaded),
        "dynamic": bool(args.dynamic),
        "config": attention.to_dict(),
        "summary": conversion_summary(report),
        "notes": notes,
        "report": report.to_dict(),
    }
    write_json_file(report_file, data, force=args.force, what="report")
    if args.json:
        ctx.console.json(data)
    else:
        ctx.console.line(f"model: {loaded.description}")
        print_conversion(ctx.console, report, title="attention sites")
    for note in notes:
        ctx.console.note(note)
    ctx.console.note(
        f"wrote {output} ({report.num_converted} of {report.num_sites} site(s) converted) and {report_file}"
    )
    return EXIT_OK
