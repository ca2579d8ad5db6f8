"""Atomic writes: a reader sees the old file or the new one, never half of one, and no temp file is left."""

from __future__ import annotations

import os
import stat

import pytest

from rayscale.files import replacing, write_text_atomic
from rayscale.results import write_json_atomic


def test_write_creates_parents_and_replaces_the_file(tmp_path):
    path = tmp_path / "a" / "b" / "state.json"
    write_text_atomic(path, "old\n")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(path.parent) == ["state.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = write_text_atomic(tmp_path / "summary.csv", "old\n")
    with pytest.raises(RuntimeError):
        with replacing(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["summary.csv"]


def test_files_get_the_mode_a_plain_write_gives(tmp_path):
    old = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "report.md", "# report\n")
        data = write_json_atomic(tmp_path / "bench.json", {"points": []})
    finally:
        os.umask(old)
    for path in (text, data):  # not mkstemp's private 0600: results and reports are for sharing
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
