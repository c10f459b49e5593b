"""`aptune.atomic`: a failed write leaves the old file or folder as it was, and no temporary files."""

import json
from pathlib import Path

import pytest

from aptune.atomic import replace_dir_atomic, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_file_writes_replace_the_content_and_leave_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    write_text_atomic(path, "text")
    assert path.read_text() == "text"
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failed_json_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_replace_dir_swaps_in_the_new_folder_or_keeps_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "model"
    replace_dir_atomic(target, lambda d: (d / "old.txt").write_text("old"))
    assert [p.name for p in target.iterdir()] == ["old.txt"]

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_dir_atomic(target, broken)
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    replace_dir_atomic(target, lambda d: (d / "new.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
