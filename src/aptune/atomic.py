"""Atomic file writes: a reader sees the old content or the new, never a half-written file.

Every writer goes through a temporary file in the destination's own folder (same file system), flushes
and ``fsync``s it, then moves it over the destination with `os.replace`, which is atomic on POSIX and
Windows. On any failure the temporary file is removed and the destination is left as it was.
The result gets the permissions a plain ``open``/``mkdir`` would give it (the process umask applied
to 0o666 / 0o777), or keeps those of the file or folder it replaces; the private mode of a
temporary file never reaches the destination, so an exported model stays readable by the serving
engine's user.

* `write_bytes_atomic`, `write_text_atomic`, `write_json_atomic`: one file.
* `atomic_path`: a temporary path for a writer that wants a file name (safetensors, ONNX, GGUF),
  moved over the destination when the block ends without an error.
* `replace_dir_atomic`: fill a fresh folder through a callback, then swap it in for the destination.

Example:
    >>> from aptune.atomic import write_json_atomic
    >>> write_json_atomic("runs/x/result.json", {"accuracy": 0.97})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "replace_dir_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

PathLike = str | os.PathLike[str]


def _umask() -> int:
    """The process umask (read by setting it and putting it back: Python has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _final_mode(path: Path, *, directory: bool) -> int:
    """The permission bits ``path`` should get: those of what it replaces, or a fresh create's."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return (0o777 if directory else 0o666) & ~_umask()


def write_bytes_atomic(path: PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then `os.replace`).

    Args:
        path: Destination file; its parent folders are created when missing.
        data: The whole new content.
        fsync: Flush the temporary file to disk before the rename (turn off only for scratch files).

    Returns:
        ``path`` as a `Path`.

    Raises:
        OSError: the folder or the file cannot be written; the destination is then unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _final_mode(path, directory=False))  # mkstemp creates it 0o600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text_atomic(path: PathLike, text: str, *, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically (see `write_bytes_atomic`).

    Args:
        path: Destination file.
        text: The whole new content.
        encoding: Text encoding.
        fsync: Flush to disk before the rename.

    Returns:
        ``path`` as a `Path`.

    Raises:
        OSError: the file cannot be written; the destination is then unchanged.
    """
    return write_bytes_atomic(path, text.encode(encoding), fsync=fsync)


def write_json_atomic(
    path: PathLike, data: Any, *, indent: int | None = 1, default: Callable[[Any], Any] | None = None
) -> Path:
    """Serialise ``data`` as JSON (UTF-8, trailing newline) and write it to ``path`` atomically.

    The data are serialised before anything is written, so a value with no JSON form leaves the
    destination untouched.

    Args:
        path: Destination file.
        data: JSON-ready data.
        indent: Indentation passed to `json.dumps` (``None``: one line).
        default: Fallback converter passed to `json.dumps` (e.g. ``str``).

    Returns:
        ``path`` as a `Path`.

    Raises:
        TypeError: ``data`` holds a value with no JSON form (and no ``default``).
        OSError: the file cannot be written.
    """
    text = json.dumps(data, indent=indent, default=default, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary file name next to ``path``; on a clean exit it replaces ``path``.

    For writers that take a file name rather than bytes (``safetensors.torch.save_file``,
    ``torch.onnx.export``, ``gguf.GGUFWriter``). If the block raises, the temporary file is removed
    and ``path`` is left as it was.

    Args:
        path: Destination file (its folder is created).

    Yields:
        The temporary file name to write to.

    Example:
        >>> with atomic_path("out/model.safetensors") as tmp:  # doctest: +SKIP
        ...     save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        mode = _final_mode(path, directory=False)
        yield tmp
        os.chmod(tmp, mode)  # a writer may have replaced the file; set the mode on what it left
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir_atomic(path: PathLike, fill: Callable[[Path], None]) -> Path:
    """Build a folder through ``fill(tmp_dir)`` next to ``path``, then swap it in for ``path``.

    ``fill`` writes into a fresh temporary folder in ``path``'s parent. When it returns, an existing
    ``path`` is moved aside, the new folder is renamed to ``path`` and the old one deleted. A failure
    inside ``fill`` removes the temporary folder and leaves ``path`` untouched. (Swapping a non-empty
    folder takes two renames; between them ``path`` is briefly missing, never half-written.)

    Args:
        path: Destination folder.
        fill: Called with the temporary folder; writes the new content there.

    Returns:
        ``path`` as a `Path`.

    Raises:
        OSError: the folders cannot be created or renamed.
        Exception: whatever ``fill`` raises (after cleaning up).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, _final_mode(path, directory=True))  # mkdtemp creates it 0o700
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.rmdir(old)
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
