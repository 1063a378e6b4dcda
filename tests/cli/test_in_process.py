"""Commands run in this process through ``main()`` (no interpreter start-up): output details."""

from __future__ import annotations

import json

from delta_opt.cli.main import main

from .helpers import TEST_CONFIG


def test_check_says_when_nothing_sparse_is_measured(tmp_path, capsys, monkeypatch):
    # Default parameters (window 2048) at 64 tokens: the op is exactly dense. The check passes,
    # and says that it measured nothing of the sparse approximation.
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--seq-len", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["outputs"][0]["metrics"]["sqnr_db"] == "inf" or report["outputs"][0]["metrics"]["sqnr_db"] > 100
    assert any("compute exactly dense attention" in n for n in report["notes"])
    assert any("random-init" in n for n in report["notes"])


def test_inspect_table_shows_kept_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "delta-opt.toml").write_text(TEST_CONFIG)
    assert main(["inspect", "--dense-layers", "1"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.0.self_attn" in out and "converted" in out
    assert "dense_layers contains 1" in out
    assert "1 converted, 1 kept dense" in out


def test_optimize_refusals(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv, phrase in [
        (["optimize"], "-o/--output FILE.pt2 is required"),
        (["optimize", "-o", "model.onnx"], "the program is written as a .pt2 file"),
        (["optimize", "-o", "a.pt2", "--report", "a.pt2"], "--report must differ from -o"),
        (["optimize", "-o", "a.pt2", "--max-seq-len", "64"], "--max-seq-len applies with --dynamic"),
        (["optimize", "cli_no_such_module:build", "-o", "a.pt2"], "cannot import 'cli_no_such_module'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err, (argv, err)
    assert list(tmp_path.iterdir()) == []  # nothing written on the way


def test_check_refuses_to_overwrite_its_report_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.json").write_text("keep me")
    assert main(["check", "-o", "report.json"]) == 2
    err = capsys.readouterr().err
    assert "report 'report.json' exists; pass --force to overwrite it" in err
    assert "loading" not in err  # refused before the model was loaded
    assert (tmp_path / "report.json").read_text() == "keep me"
