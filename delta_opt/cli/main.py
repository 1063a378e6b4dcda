"""``delta-opt``: the parser, built from one module per subcommand, and the error policy.

Exit codes: 0 done (``check``: every threshold met), 1 ``check``: a threshold failed, 2 bad input
or setup (missing file, unknown config key, unsupported model, missing package, bad flag). Errors
are one line on stderr; ``--debug`` adds the traceback. Subcommand modules import only argparse
and delta_opt's light modules at the top, so ``delta-opt --help`` loads neither transformers nor
onnx; heavy imports happen inside each command's ``run``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from typing import Sequence

from .. import __version__
from . import bench, check, export, inspect, optimize
from .args import Parser
from .console import Console
from .context import Context
from .errors import EXIT_BAD_INPUT, CliError

__all__ = ["build_parser", "main"]

COMMANDS = (inspect, optimize, export, check, bench)

DESCRIPTION = """\
Convert the attention of PyTorch models to Delta Attention (sliding window + sinks, corrected on
every G-th query row), export the result, and gate it in CI.

exit codes: 0 success, 1 check: a threshold failed, 2 bad input or setup.
configuration: ./delta-opt.toml (or --config FILE) with tables [attention], [inputs], [check],
[bench]; flags override it; --dump-config prints the effective values."""


def build_parser() -> Parser:
    parser = Parser(prog="delta-opt", description=DESCRIPTION, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"delta-opt {__version__}")
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _quiet_libraries(verbose: bool, quiet: bool) -> None:
    level = logging.INFO if verbose else (logging.ERROR if quiet else logging.WARNING)
    logging.basicConfig(level=level, format="delta-opt: %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # Deprecation and tracing notices from torch/transformers are not about the user's model;
        # what delta_opt itself has to say goes through its reports and loggers. Weight-loading
        # progress bars and advice from transformers likewise (read when it is first imported).
        warnings.simplefilter("ignore")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. transformers' GGUF de-quantization bar


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 400 else line[:400] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``delta-opt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    verbose = getattr(args, "verbose", False) or debug
    quiet = getattr(args, "quiet", False)
    _quiet_libraries(verbose, quiet)
    context = Context(args, Console(quiet=quiet, verbose=verbose))
    prefix = " ".join(["delta-opt", args.command_name, *([args.target] if getattr(args, "target", None) else [])])
    try:
        return args.run(context)
    except CliError as e:
        if debug:
            traceback.print_exc()
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unsupported model or a bug: one line, the traceback on request
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows the traceback)"
        print(f"{prefix}: error: {type(e).__name__}: {_first_line(e)}{hint}", file=sys.stderr)
        return EXIT_BAD_INPUT
