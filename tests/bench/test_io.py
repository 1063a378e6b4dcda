"""Result files: atomic, never over an existing file unless asked, readable like any new file."""

from __future__ import annotations

import os

import pytest

from delta_opt.bench.io import atomic_write_bytes, new_file_mode, write_json


def test_written_file_has_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "r.json", {"a": 1})
        assert new_file_mode() == 0o644
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    finally:
        os.umask(old)


def test_refuses_to_overwrite_and_leaves_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "x.bin", b"one")
    with pytest.raises(FileExistsError, match="pass force=True"):
        atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"one"
    atomic_write_bytes(path, b"two", force=True)
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
