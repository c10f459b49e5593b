"""Save and restore an `AptController` so that a pruned run resumes exactly where it stopped.

A checkpoint of a pruned model cannot be loaded into a freshly prepared (full-size) model: the shapes
differ. `AptController.state_dict` records which blocks are left (their original indices), the
adapter ranks, masks, salience EMA, adapter importance, the teacher snapshot, the schedule position
and the controller's RNG; `AptController.load_state_dict` re-applies the surgery and rank growth to a
freshly prepared model, so that the Trainer (or a custom loop) can then load weights and optimizer
state of the checkpoint as usual. This module only moves that state to and from files.

Files (written atomically into the checkpoint folder): ``aptune_state.json`` (everything small, with
a placeholder for each tensor) and ``aptune_state.safetensors`` (the tensors, keyed by their path in
the state, e.g. ``blocks/units/0``). Nothing is unpickled. A run that keeps a report also saves
its record so far (``aptune_record.json``: steps, events, evaluations, phase times), so that the
report of a resumed run covers the whole run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from aptune.atomic import atomic_path, write_text_atomic
from aptune.errors import ConfigError

__all__ = [
    "RECORD_JSON",
    "STATE_JSON",
    "STATE_TENSORS",
    "has_controller_state",
    "last_complete_checkpoint",
    "load_controller_state",
    "load_run_record",
    "save_controller_state",
    "save_run_record",
]

STATE_JSON = "aptune_state.json"
STATE_TENSORS = "aptune_state.safetensors"
STATE_VERSION = 2
RECORD_JSON = "aptune_record.json"
_TENSOR = "<tensor>"  # placeholder in the JSON for a tensor stored in the safetensors file


def has_controller_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved controller state."""
    folder = Path(folder)
    return (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file()


def last_complete_checkpoint(
    output_dir: str | Path, is_complete: Callable[[Path], bool] = has_controller_state
) -> Path | None:
    """The newest ``checkpoint-N`` folder whose save finished.

    The Trainer writes a checkpoint folder in place; aptune writes its controller state last, so a
    folder without it was interrupted while saving and is skipped. ``is_complete`` names another
    last-written file's check (a callback that saves after the Trainer).
    """
    folders = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit():
            folders.append((int(suffix), path))
    for _, path in sorted(folders, reverse=True):
        if is_complete(path) and (path / "trainer_state.json").is_file():
            return path
    return None


def save_controller_state(controller, folder: str | Path) -> None:
    """Write ``controller.state_dict()`` into ``folder`` (tensors first, then the JSON that refers to them).

    Args:
        controller: The `aptune.AptController` of the run.
        folder: The checkpoint folder (created if missing).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    state = _split(controller.state_dict(), tensors, "")
    meta = {"version": STATE_VERSION, "state": state}
    with atomic_path(folder / STATE_TENSORS) as tmp:
        save_file(tensors, tmp)
    write_text_atomic(folder / STATE_JSON, json.dumps(meta, indent=2))


def load_controller_state(controller, folder: str | Path, optimizer=None) -> None:
    """Read the state saved in ``folder`` and hand it to ``controller.load_state_dict``.

    Call it on a freshly prepared model, before the model weights and the optimizer state of the
    checkpoint are loaded.

    Args:
        controller: The `aptune.AptController` of a freshly prepared model.
        folder: The checkpoint folder.
        optimizer: Optimizer whose state must follow the re-applied surgery, if already created.

    Raises:
        ConfigError: the folder has no controller state or one of another version, was written by
            another config, or the model was already changed by pruning.
    """
    folder = Path(folder)
    if not has_controller_state(folder):
        raise ConfigError(
            f"{folder} holds no aptune controller state ({STATE_JSON}); it was not written by an aptune run "
            "or its save was interrupted: resume from an earlier checkpoint"
        )
    meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    if meta.get("version") != STATE_VERSION:
        raise ConfigError(
            f"{folder}: controller state version {meta.get('version')!r} is not supported "
            f"(this aptune reads version {STATE_VERSION}); start a new run"
        )
    state = _join(meta["state"], load_file(str(folder / STATE_TENSORS)))
    try:
        controller.load_state_dict(state, optimizer)
    except ConfigError as error:
        raise ConfigError(f"{folder}: {error}") from None


def save_run_record(folder: str | Path, record: dict[str, Any]) -> None:
    """Write a run's record so far (a `aptune.report.RunRecorder` dict) into the checkpoint ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / RECORD_JSON, json.dumps(record))


def load_run_record(folder: str | Path) -> dict[str, Any] | None:
    """The record `save_run_record` wrote into ``folder``, or None (a checkpoint saved without one)."""
    path = Path(folder) / RECORD_JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _split(tree: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    # Move every tensor of a nested dict into ``tensors`` under its "/"-joined key path; the rest
    # (JSON-ready) stays where it is.
    if torch.is_tensor(tree):
        tensors[prefix] = tree.detach().cpu().contiguous().clone()
        return _TENSOR
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            if "/" in key:
                raise ValueError(f"state key {key!r} contains '/'")
            out[key] = _split(value, tensors, f"{prefix}/{key}" if prefix else key)
        return out
    return tree


def _join(tree: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    # The inverse of _split.
    if tree == _TENSOR:
        return tensors[prefix]
    if isinstance(tree, dict):
        return {
            key: _join(value, tensors, f"{prefix}/{key}" if prefix else key) for key, value in tree.items()
        }
    return tree
