"""Real long texts present on every machine: Python standard-library sources.

They are read through ``inspect`` (wherever this interpreter keeps its library), never from a
hard-coded path. Code with long docstrings is a fair long-context test: identifiers defined
thousands of tokens earlier are used again later.
"""

from __future__ import annotations

import importlib
import inspect

__all__ = ["STDLIB_TEXTS", "stdlib_text"]

# Two large, stable modules (about 22K tokens each with the SmolLM2 tokenizer).
STDLIB_TEXTS = ("argparse", "difflib")


def stdlib_text(module: str) -> str:
    """The source text of the standard-library ``module`` (e.g. ``"argparse"``)."""
    if not isinstance(module, str) or not module:
        raise ValueError(f"module must be a module name; got {module!r}")
    try:
        return inspect.getsource(importlib.import_module(module))
    except (ImportError, OSError, TypeError) as e:
        raise ValueError(f"cannot read the source of module {module!r}: {e}") from None
