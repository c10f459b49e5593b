"""Save and restore an `AptController` so that a pruned run resumes exactly where it stopped.

A checkpoint of a pruned model cannot be loaded into a freshly prepared (full-size) model: the shapes
differ. The controller state records which blocks are left (their original indices), the adapter
ranks, masks, salience EMA, adapter importance, the teacher snapshot, the schedule position and the
controller's RNG. `load_controller_state` re-applies the surgery and rank growth to a freshly
prepared model, so that the Trainer (or a custom loop) can then load weights and optimizer state of
the checkpoint as usual.

Files (written atomically into the checkpoint folder): ``aptune_state.json`` (everything small) and
``aptune_state.safetensors`` (tensors: ids, masks, scores, teacher snapshot). Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from aptune.config import AptConfig
from aptune.errors import ConfigError

__all__ = [
    "STATE_JSON",
    "STATE_TENSORS",
    "has_controller_state",
    "last_complete_checkpoint",
    "load_controller_state",
    "save_controller_state",
]

STATE_JSON = "aptune_state.json"
STATE_TENSORS = "aptune_state.safetensors"
STATE_VERSION = 1


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def has_controller_state(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved controller state."""
    folder = Path(folder)
    return (folder / STATE_JSON).is_file() and (folder / STATE_TENSORS).is_file()


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder whose save finished.

    The Trainer writes a checkpoint folder in place; aptune writes its controller state last, so a
    folder without it was interrupted while saving and is skipped.
    """
    folders = []
    for path in Path(output_dir).glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and suffix.isdigit():
            folders.append((int(suffix), path))
    for _, path in sorted(folders, reverse=True):
        if has_controller_state(path) and (path / "trainer_state.json").is_file():
            return path
    return None


def save_controller_state(controller, folder: str | Path) -> None:
    """Write the controller state into ``folder`` (tensors first, then the JSON that refers to them)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {"hidden_ids": controller.ids.hidden}
    state, scores = controller.state, controller.scores
    named_lists = {
        "unit_ids": controller.ids.units,
        "neuron_ids": controller.ids.neurons,
        "mask.heads": state.heads,
        "mask.neurons": state.neurons,
        "score.heads": scores.heads,
        "score.neurons": scores.neurons,
    }
    for prefix, values in named_lists.items():
        # one tensor per site; None (an all-ones mask, no score yet) is simply not stored
        tensors.update({f"{prefix}.{i}": v for i, v in enumerate(values) if v is not None})
    for name, value in (("mask.hidden", state.hidden), ("score.hidden", scores.hidden)):
        if value is not None:
            tensors[name] = value
    if controller.transform is not None:
        tensors["transform_out_ids"] = controller._transform_out_ids
    teacher_names, teacher_shared = [], []
    if controller.teacher is not None:
        # tensors the teacher still shares with the model are stored by name, not twice
        live = {name: p.data.data_ptr() for name, p in controller.model.named_parameters()}
        tensors["teacher_hidden_ids"] = controller.teacher.hidden_ids
        for name, tensor in controller.teacher.tensors.items():
            if live.get(name) == tensor.data_ptr():
                teacher_shared.append(name)
            else:
                tensors[f"teacher.{name}"] = tensor
                teacher_names.append(name)
    tensors["generator_state"] = controller.generator.get_state()
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    meta = {
        "version": STATE_VERSION,
        "config": controller.config.to_dict(),
        "step_count": controller.step_count,
        "total_steps": controller.schedule.total_steps if controller.schedule else None,
        "ranks": controller.ranks(),
        "adapter_importance": controller.adapter_importance,
        "score_updates": scores.updates,
        "pretuned": controller._pretuned,
        "c0": controller._c0,
        "n0": controller._n0,
        "teacher_names": teacher_names,
        "teacher_shared": teacher_shared,
        "events": [{k: v for k, v in e.items() if k != "scores"} for e in controller.events],
        "teacher_seconds": controller.teacher_seconds,
    }
    _atomic(folder / STATE_TENSORS, lambda tmp: save_file(tensors, tmp))
    _atomic(
        folder / STATE_JSON, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    )


def _config_difference(saved: dict, current: AptConfig) -> list[str]:
    now = current.to_dict()
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


@torch.no_grad()
def load_controller_state(controller, folder: str | Path, optimizer=None) -> None:
    """Rebuild the saved structure on a freshly prepared model and restore the controller state.

    Call it before the model weights and the optimizer state of the checkpoint are loaded.

    Raises:
        ConfigError: the folder has no controller state, was written by another config, or the
            model was already changed by pruning.
    """
    from aptune.distill import Teacher
    from aptune.surgery import grow_adapter_, prune_hidden_, prune_neurons_, prune_units_, slice_linear_

    folder = Path(folder)
    if not has_controller_state(folder):
        raise ConfigError(
            f"{folder} holds no aptune controller state ({STATE_JSON}); it was not written by an aptune run "
            "or its save was interrupted: resume from an earlier checkpoint"
        )
    meta = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    if meta.get("version") != STATE_VERSION:
        raise ConfigError(f"{folder}: controller state version {meta.get('version')!r} is not supported")
    differences = _config_difference(meta["config"], controller.config)
    if differences:
        raise ConfigError(
            f"{folder} was written by a run with a different AptConfig "
            f"(differs in: {', '.join(differences)}); "
            "resume with the same config or start a new run"
        )
    if controller.step_count != 0 or controller.structure() != controller.original:
        raise ConfigError("load the controller state into a freshly prepared model, before any training step")
    tensors = load_file(str(folder / STATE_TENSORS))
    if meta["total_steps"] is not None:
        controller.set_total_steps(meta["total_steps"])
    layout = controller.layout
    # re-apply the surgery: original ids -> positions in the full model
    for i in range(len(layout.attention)):
        keep = tensors[f"unit_ids.{i}"].long()
        if keep.numel() != controller._num_units(i):
            prune_units_(controller.model, layout, i, keep, optimizer)
        controller.ids.units[i] = keep.clone()
    for i in range(len(layout.ffn)):
        keep = tensors[f"neuron_ids.{i}"].long()
        if keep.numel() != controller._num_neurons(i):
            prune_neurons_(controller.model, layout, i, keep, optimizer)
        controller.ids.neurons[i] = keep.clone()
    hidden = tensors["hidden_ids"].long()
    if hidden.numel() != layout.hidden_size:
        extra = [controller.transform] if controller.transform is not None else []
        prune_hidden_(controller.model, layout, hidden, optimizer, extra_readers=extra)
    controller.ids.hidden = hidden.clone()
    if controller.transform is not None and "transform_out_ids" in tensors:
        out_ids = tensors["transform_out_ids"].long()
        if out_ids.numel() != controller.transform.out_features:
            slice_linear_(controller.transform, rows=out_ids, optimizer=optimizer)
        controller._transform_out_ids = out_ids.clone()
    for path, rank in meta["ranks"].items():
        grow_adapter_(controller.adapters[path], rank, optimizer)
    device = controller._device()
    state = controller.state
    state.heads = [
        tensors[f"mask.heads.{i}"].to(device) if f"mask.heads.{i}" in tensors else None
        for i in range(len(layout.attention))
    ]
    state.neurons = [
        tensors[f"mask.neurons.{i}"].to(device) if f"mask.neurons.{i}" in tensors else None
        for i in range(len(layout.ffn))
    ]
    state.hidden = tensors["mask.hidden"].to(device) if "mask.hidden" in tensors else None
    scores = controller.scores
    scores.heads = [tensors.get(f"score.heads.{i}") for i in range(len(layout.attention))]
    scores.neurons = [tensors.get(f"score.neurons.{i}") for i in range(len(layout.ffn))]
    scores.hidden = tensors.get("score.hidden")
    scores.updates = meta["score_updates"]
    controller.adapter_importance = dict(meta["adapter_importance"])
    controller._pretuned = meta["pretuned"]
    controller._c0 = meta["c0"]
    controller._n0 = meta["n0"]
    controller.step_count = meta["step_count"]
    controller.events = list(meta["events"])
    controller.teacher_seconds = meta.get("teacher_seconds", 0.0)
    controller.generator.set_state(tensors["generator_state"])
    if meta["teacher_names"] or meta["teacher_shared"]:
        teacher = Teacher.__new__(Teacher)
        teacher.tensors = {name: tensors[f"teacher.{name}"].to(device) for name in meta["teacher_names"]}
        # shared tensors: the model's own (the checkpoint's weights are copied into them in place)
        for name in meta["teacher_shared"]:
            teacher.tensors[name] = controller.model.get_parameter(name).data
        teacher.hidden_ids = tensors["teacher_hidden_ids"].long()
        controller.teacher = teacher
    controller.state.collector.reset()
    controller.state.collector.active = controller._collecting(controller.step_count + 1)
