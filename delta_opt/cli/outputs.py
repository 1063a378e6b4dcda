"""Output files: refused before any work when they exist (unless ``--force``), written atomically.

Every writer goes through a temporary file in the target's folder and ``os.replace``, so a
reader never sees a half-written file and an interrupted run leaves the old file (or none).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..bench.io import atomic_write_bytes, new_file_mode, write_json
from .errors import CliError

__all__ = ["claim", "write_json_file", "write_text_file", "write_via"]


def claim(path: str | Path | None, *, force: bool, what: str = "output") -> Path | None:
    """Check up front that ``path`` may be written: it does not exist, or ``force``; not a folder.

    Returns the path (None stays None). Raises :class:`CliError` otherwise.
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise CliError(f"{what} {str(path)!r} is a folder; give a file name")
    if path.exists() and not force:
        raise CliError(f"{what} {str(path)!r} exists; pass --force to overwrite it")
    if path.parent != Path("") and path.parent.exists() and not path.parent.is_dir():
        raise CliError(f"{what} {str(path)!r}: {str(path.parent)!r} is not a folder")
    return path


def _refused(e: FileExistsError, path: Path, what: str) -> CliError:
    # Someone created the file between claim() and the write: still never overwritten.
    return CliError(f"{what} {str(path)!r} appeared while this command ran; not overwritten (pass --force)")


def write_json_file(path: Path, data: Any, *, force: bool, what: str = "output") -> None:
    try:
        write_json(path, data, force=force)
    except FileExistsError as e:
        raise _refused(e, path, what) from None


def write_text_file(path: Path, text: str, *, force: bool, what: str = "output") -> None:
    try:
        atomic_write_bytes(path, text.encode(), force=force)
    except FileExistsError as e:
        raise _refused(e, path, what) from None


@contextlib.contextmanager
def _temporary_sibling(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.fchmod(fd, new_file_mode())
    os.close(fd)
    try:
        yield Path(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_via(path: Path, writer: Callable[[Path], Any], *, force: bool, what: str = "output") -> Any:
    """Call ``writer(tmp)`` to write a temporary sibling of ``path``, then rename it to ``path``.

    For writers that want a file name (``torch.export.save``, ``savefig``). Returns what
    ``writer`` returned.
    """
    with _temporary_sibling(path) as tmp:
        result = writer(tmp)
        if path.exists() and not force:
            raise CliError(f"{what} {str(path)!r} appeared while this command ran; not overwritten (pass --force)")
        os.replace(tmp, path)
    return result
