"""Errors the command line turns into one line on stderr and an exit code (never a traceback)."""

from __future__ import annotations

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "CliError", "MissingDependency", "require"]

EXIT_OK = 0
EXIT_FAILED = 1  # `check`: a threshold was not met
EXIT_BAD_INPUT = 2  # bad input or setup: missing file, unknown key, unsupported model, missing package


class CliError(Exception):
    """Bad input or setup; the message is the whole story (one line, exit code 2)."""

    exit_code = EXIT_BAD_INPUT


class MissingDependency(CliError):
    """An optional package a subcommand needs is not installed; the message says what to install."""


def require(module: str, *, needed_for: str, install: str) -> None:
    """Raise :class:`MissingDependency` unless ``module`` can be imported (checked without importing it)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a broken installation
        found = False
    if not found:
        raise MissingDependency(f"{needed_for} needs {module}, which is not installed: {install}")
