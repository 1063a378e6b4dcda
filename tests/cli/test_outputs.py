"""Output files: refused up front when they exist, replaced only with force, written atomically."""

from __future__ import annotations

import json

import pytest

from delta_opt.cli.errors import CliError
from delta_opt.cli.outputs import claim, write_json_file, write_via


def test_claim_refuses_existing_files_and_folders(tmp_path):
    existing = tmp_path / "out.json"
    existing.write_text("old")
    with pytest.raises(CliError, match="exists; pass --force"):
        claim(existing, force=False)
    assert claim(existing, force=True) == existing
    with pytest.raises(CliError, match="is a folder"):
        claim(tmp_path, force=True)
    assert claim(None, force=False) is None
    assert claim(tmp_path / "new" / "x.json", force=False) == tmp_path / "new" / "x.json"


def test_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "program.pt2"
    target.write_text("old")

    def writer(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_via(target, writer, force=True)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["program.pt2"]


def test_writer_output_replaces_the_target_in_one_rename(tmp_path):
    target = tmp_path / "sub" / "plot.png"
    seen = []

    def writer(tmp):
        assert tmp.parent == target.parent and tmp != target  # a sibling: same file system, atomic rename
        assert not target.exists()  # nothing visible before the rename
        seen.append(tmp)
        tmp.write_bytes(b"new")

    write_via(target, writer, force=False)
    assert target.read_bytes() == b"new" and not seen[0].exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["plot.png"]


def test_a_file_that_appears_meanwhile_is_not_overwritten(tmp_path):
    target = tmp_path / "report.json"
    with pytest.raises(CliError, match="appeared while this command ran"):
        write_via(target, lambda tmp: target.write_text("someone else's"), force=False)
    assert target.read_text() == "someone else's"
    with pytest.raises(CliError, match="appeared while this command ran"):
        write_json_file(target, {"a": 1}, force=False)
    write_json_file(target, {"a": 1}, force=True)
    assert json.loads(target.read_text()) == {"a": 1}
