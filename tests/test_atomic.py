"""`aptune.atomic`: a failed write leaves the old file or folder as it was, and no temporary files."""

import json
import os
import stat
from pathlib import Path

import pytest

from aptune.atomic import (
    atomic_path,
    replace_dir_atomic,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


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


@pytest.fixture
def umask_027():
    """The process umask set to 0o027 for the test (group may read, others nothing)."""
    previous = os.umask(0o027)
    yield
    os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_and_folders_get_the_modes_a_plain_create_gives(tmp_path: Path, umask_027) -> None:
    """Not the 0o600 / 0o700 of a temporary file: a serving engine's user must read an export."""
    written = write_text_atomic(tmp_path / "config.json", "{}")
    assert stat.S_IMODE(written.stat().st_mode) == 0o640
    with atomic_path(tmp_path / "model.safetensors") as tmp:
        Path(tmp).write_bytes(b"weights")
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o640
    folder = replace_dir_atomic(tmp_path / "model", lambda d: (d / "a.txt").write_text("a"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_a_replaced_file_or_folder_keeps_its_own_mode(tmp_path: Path, umask_027) -> None:
    path = tmp_path / "secret.json"
    path.write_text("{}")
    path.chmod(0o600)
    write_json_atomic(path, {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shared = tmp_path / "shared.txt"
    shared.write_text("old")
    shared.chmod(0o664)
    with atomic_path(shared) as tmp:
        Path(tmp).write_text("new")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664
    folder = tmp_path / "model"
    folder.mkdir()
    folder.chmod(0o755)
    replace_dir_atomic(folder, lambda d: (d / "a.txt").write_text("a"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
