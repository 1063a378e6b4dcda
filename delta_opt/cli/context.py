"""What every subcommand needs: its parsed flags, the config file, the console, and MODEL."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .console import Console
from .models import LoadedModel, load_model
from .settings import ConfigFile, build, dump, overrides, read_config

__all__ = ["Context"]


@dataclass
class Context:
    """One command run.

    Attributes:
        args: the parsed namespace (flags for config keys are named ``"<table>.<key>"``).
        console: where output goes (``--quiet`` aware).
        config: the config file's tables (read once, on first use).
    """

    args: argparse.Namespace
    console: Console
    _config: ConfigFile | None = field(default=None, repr=False)

    @property
    def command(self) -> str:
        return self.args.command_name

    @property
    def config(self) -> ConfigFile:
        if self._config is None:
            self._config = read_config(getattr(self.args, "config", None))
        return self._config

    def settings(self, table: str) -> Any:
        """The effective settings of ``table``: defaults < config file < flags."""
        return build(table, self.config, overrides(self.args, table))

    def dump_requested(self, tables: dict[str, Any]) -> bool:
        """Print the effective config when ``--dump-config`` was given; True if it was."""
        fmt = getattr(self.args, "dump_config", None)
        if fmt is None:
            return False
        source = "built-in defaults"
        if self.config.path is not None:
            source += f" < {self.config.path}"
        source += " < flags"
        print(dump(tables, fmt, source=source), end="" if fmt == "toml" else "\n")
        return True

    def load_model(self, *, allow_onnx: bool = False) -> LoadedModel:
        """MODEL (the positional argument) with its example inputs, as the flags and config say."""
        args = self.args
        with self.console.step(f"loading {args.model or 'the embedded default model'}"):
            loaded = load_model(
                args.model,
                self.settings("inputs"),
                inputs_file=getattr(args, "inputs_file", None),
                text_file=getattr(args, "text_file", None),
                device=getattr(args, "device", "cpu"),
                allow_onnx=allow_onnx,
                command=f"delta-opt {self.command}",
                verbose=self.console.verbose,
                explicit=overrides(args, "inputs").keys(),
            )
        for note in loaded.notes:
            self.console.note(note)
        return loaded

    def output_path(self) -> Path | None:
        out = getattr(self.args, "output", None)
        return None if out is None else Path(out)
