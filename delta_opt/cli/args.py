"""Argument groups shared by the subcommands: model, inputs, config, attention, output, logging.

Flags that map to a config key store into ``"<table>.<key>"`` with ``argparse.SUPPRESS`` as the
default, so the namespace holds only what the user typed and :func:`settings.overrides` can lay
it over the config file.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, NoReturn

from ..config import Impl
from ..plan import Correction
from .errors import EXIT_BAD_INPUT
from .settings import TABLES

__all__ = [
    "Parser",
    "add_attention",
    "add_config",
    "add_logging",
    "add_model",
    "add_output",
    "add_table_flags",
    "positive_int",
]

MODEL_HELP = (
    "the model: package.module:factory (or path/to/file.py:factory), FILE.pt2 (torch.export.save), "
    "hf:DIR or hf:FILE.gguf (Hugging Face transformers), FILE.onnx where the command says so; "
    "omitted: the embedded default delta_opt.zoo:tiny_llama (random-init 2-layer Llama-GQA)"
)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(EXIT_BAD_INPUT)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {value}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value}")
    return value


def number_or_off(text: str) -> float | None:
    """A threshold: a number, or ``off`` (not checked)."""
    if text.lower() in ("off", "none", "false"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'off'; got {text!r}") from None


def add_logging(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors (and what --json asks for)")
    group.add_argument("-v", "--verbose", action="store_true", help="log what each step does, and library warnings")
    group.add_argument("--debug", action="store_true", help="show the traceback of an error (implies --verbose)")


def add_config(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config", metavar="FILE",
        help="TOML config file (default: ./delta-opt.toml when present); flags override its values",
    )  # fmt: skip
    group.add_argument(
        "--dump-config", nargs="?", const="toml", choices=("toml", "json"), metavar="FORMAT",
        help="print the effective configuration (toml, the default, or json) and exit",
    )  # fmt: skip


def add_model(parser: argparse.ArgumentParser, *, inputs: bool = True) -> None:
    parser.add_argument("model", nargs="?", metavar="MODEL", help=MODEL_HELP)
    if not inputs:
        return
    group = parser.add_argument_group("inputs")
    group.add_argument(
        "--seq-len",
        dest="inputs.seq_len",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="tokens per sequence of generated inputs (and factories that take seq_len)",
    )
    group.add_argument(
        "--batch",
        dest="inputs.batch",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="B",
        help="sequences per batch of generated inputs (and factories that take batch)",
    )
    group.add_argument(
        "--seed",
        dest="inputs.seed",
        type=nonnegative_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="seed of generated inputs and of factories' random init (default 0)",
    )
    group.add_argument(
        "--inputs",
        dest="inputs_file",
        metavar="FILE",
        help="example inputs saved with torch.save: a tensor, a tuple/list of tensors or a dict of keyword inputs",
    )
    group.add_argument(
        "--text",
        dest="text_file",
        metavar="FILE",
        help="hf: models: tokenize this text file for the inputs (its first --seq-len tokens)",
    )
    group.add_argument("--device", default="cpu", help="device to run the model on (default cpu)")  # fmt: skip


def add_attention(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attention ([attention] in the config file)")
    add = group.add_argument
    add(
        "--window",
        dest="attention.window",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="W",
        help="sliding window W (default 2048)",
    )
    add(
        "--sinks",
        dest="attention.sinks",
        type=nonnegative_int,
        default=argparse.SUPPRESS,
        metavar="S",
        help="sink keys S (default 1024)",
    )
    add(
        "--stride",
        dest="attention.stride",
        type=positive_int,
        default=argparse.SUPPRESS,
        metavar="G",
        help="anchor stride G (default 64)",
    )
    add(
        "--tail",
        dest="attention.tail",
        type=nonnegative_int,
        default=argparse.SUPPRESS,
        metavar="T",
        help="dense tail rows T (default max(128, G))",
    )
    add(
        "--min-seq-len",
        dest="attention.min_seq_len",
        type=nonnegative_int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="keep attention over shorter sequences dense (default 0)",
    )
    add(
        "--dense-layers",
        dest="attention.dense_layers",
        type=nonnegative_int,
        nargs="*",
        default=argparse.SUPPRESS,
        metavar="I",
        help="layer indices kept dense",
    )
    add(
        "--dense-modules",
        dest="attention.dense_modules",
        nargs="*",
        default=argparse.SUPPRESS,
        metavar="GLOB",
        help="module-path globs kept dense",
    )
    add(
        "--correction",
        dest="attention.correction",
        choices=[c.value for c in Correction],
        default=argparse.SUPPRESS,
        help="the rule correcting the sparse rows (default paper); per-layer plans go in [attention.layer_plans]",
    )
    add(
        "--retrieve",
        dest="attention.retrieve",
        type=nonnegative_int,
        default=argparse.SUPPRESS,
        metavar="K",
        help="long-range keys each anchor block retrieves for its rows (default 0: none)",
    )
    add(
        "--impl",
        dest="attention.impl",
        choices=[i.value for i in Impl],
        default=argparse.SUPPRESS,
        help="eager implementation of the op (default auto)",
    )


def add_output(parser: argparse.ArgumentParser, *, required: bool, help: str) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("-o", "--output", metavar="FILE", required=required, help=help)
    group.add_argument("--force", action="store_true", help="overwrite output files that exist")


def _flag_kwargs(table: str, f: dataclasses.Field) -> tuple[str, dict[str, Any]]:
    """The flag and ``add_argument`` keywords of a settings field, read from its type and metadata."""
    name, kind = "--" + f.name.replace("_", "-"), str(f.type)
    kwargs: dict[str, Any] = {"dest": f"{table}.{f.name}", "default": argparse.SUPPRESS, "help": f.metadata["help"]}
    if kind == "bool":
        if f.default is True:
            return "--no-" + f.name.replace("_", "-"), {**kwargs, "action": "store_false"}
        return name, {**kwargs, "action": "store_true"}
    if f.metadata.get("off"):
        kwargs["help"] += f" (default {f.default if f.default is not None else 'off'}; 'off': not checked)"
        return name, {**kwargs, "type": number_or_off, "metavar": "X"}
    if f.default is not None and f.default is not dataclasses.MISSING:
        kwargs["help"] += f" (default {f.default})"
    if kind.startswith("tuple[int"):
        return name, {**kwargs, "type": positive_int, "nargs": "+", "metavar": "N"}
    if kind.startswith("int"):  # ranges are checked with the settings, naming the key
        return name, {**kwargs, "type": int}
    if kind.startswith("float"):
        return name, {**kwargs, "type": float}
    return name, {**kwargs, "type": str}


def add_table_flags(parser: argparse.ArgumentParser, table: str, title: str) -> None:
    """One flag per key of a settings table (``[check]``, ``[bench]``)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(TABLES[table]):
        flag, kwargs = _flag_kwargs(table, f)
        group.add_argument(flag, **kwargs)
