"""The parser: light imports, help for every command, usage errors as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from delta_opt.cli.main import build_parser, main

from .helpers import ROOT

COMMANDS = [["inspect"], ["optimize"], ["export", "onnx"], ["export", "trt"], ["check"], ["bench"]]


def test_help_imports_neither_transformers_nor_onnx():
    # A fresh interpreter: the test process itself has imported everything by now.
    code = (
        "import sys\n"
        "from delta_opt.cli.main import main\n"
        f"for argv in ([], *{COMMANDS!r}):\n"
        "    try:\n"
        "        main([*argv, '--help'])\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = sorted(m for m in ('transformers', 'onnx', 'onnxruntime', 'onnxscript', 'matplotlib', 'triton') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:]
    for command in ("inspect", "optimize", "export", "check", "bench", "--dump-config", "exit codes"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["inspect", "--window", "0"], "argument --window: expected an integer >= 1; got 0"),
        (["check", "--min-sqnr-db", "lots"], "expected a number or 'off'"),
        (["export", "pdf"], "invalid choice: 'pdf'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["inspect", "--impl", "fast"], "invalid choice: 'fast'"),
        (["check", "--dump-config", "yaml"], "invalid choice: 'yaml'"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, phrase):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and "--help" in err


def test_every_config_key_has_a_flag():
    """What the config file can say, a flag can override."""
    from delta_opt.cli.settings import TABLES, _keys

    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    dests = {action.dest for sub in (subparsers["check"], subparsers["bench"]) for action in sub._actions}
    for table in ("attention", "inputs", "check"):
        for key in _keys(table):
            if (table, key) == ("attention", "layer_plans"):
                continue  # per-layer, per-head plans: a nested table, config file only (README)
            assert f"{table}.{key}" in dests, (table, key)
    for key in _keys("bench"):
        assert f"bench.{key}" in dests, key
    assert set(TABLES) == {"attention", "inputs", "check", "bench"}


def test_console_script_points_at_main():
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["delta-opt"].partition(":")
    assert getattr(importlib.import_module(module), attr) is main
