"""Writing results: never over an existing file unless asked, and atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "new_file_mode", "write_json"]


def new_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask). ``mkstemp`` makes its
    files 0o600; a result renamed into place would otherwise be private to its writer."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Raises ``FileExistsError`` when ``path`` exists and ``force`` is False.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(path: str | Path, data: Any, *, force: bool = False) -> Path:
    return atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode(), force=force)
