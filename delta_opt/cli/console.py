"""What the commands print: tables and results on stdout, progress on stderr, ``--quiet`` silences both.

Rich (the ``cli`` extra) draws the tables and a spinner for long steps on a terminal; without rich,
or when stderr is not a terminal (CI logs), steps are plain lines and tables plain columns.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Any, Iterator, Sequence

__all__ = ["Console"]


class Console:
    """Output of one command run.

    Args:
        quiet: print nothing but errors and output asked for explicitly (:meth:`json`).
        verbose: also print :meth:`detail` lines.
    """

    def __init__(self, *, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet = quiet
        self.verbose = verbose and not quiet
        try:
            from rich.console import Console as RichConsole
        except ImportError:
            self._out = self._err = None
        else:
            # No markup: shapes like "[1,4,512,16]" and module paths are data, not styles. Outside a
            # terminal rich would assume 80 columns; CI logs are wider.
            width = None if sys.stdout.isatty() else 140
            self._out = RichConsole(markup=False, highlight=False, width=width)
            self._err = RichConsole(stderr=True, markup=False, highlight=False)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Show ``text`` while a long step runs (spinner on a terminal, one line otherwise)."""
        if self.quiet:
            yield
            return
        start = time.perf_counter()
        if self._err is not None and self._err.is_terminal:
            with self._err.status(text):
                yield
            self._err.print(f"✓ {text} ({time.perf_counter() - start:.1f} s)")
        else:
            print(f"delta-opt: {text} ...", file=sys.stderr, flush=True)
            yield

    def line(self, text: str = "") -> None:
        """A result line on stdout."""
        if self.quiet:
            return
        if self._out is not None:
            self._out.print(text, soft_wrap=True)
        else:
            print(text)

    def note(self, text: str) -> None:
        """A remark on stderr (warnings about the result, where files went)."""
        if not self.quiet:
            print(f"delta-opt: {text}", file=sys.stderr, flush=True)

    def detail(self, text: str) -> None:
        if self.verbose:
            print(f"delta-opt: {text}", file=sys.stderr, flush=True)

    def json(self, data: Any) -> None:
        """JSON on stdout, also under ``--quiet`` (the user asked for it)."""
        print(json.dumps(data, indent=2, default=str))

    def table(
        self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, caption: str | None = None
    ) -> None:
        """A table on stdout."""
        if self.quiet:
            return
        cells = [[str(c) for c in row] for row in rows]
        if self._out is not None:
            from rich.table import Table

            table = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
            for column in columns:
                table.add_column(column, overflow="fold")
            for row in cells:
                table.add_row(*row)
            self._out.print(table)
            return
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if caption:
            print(caption)
