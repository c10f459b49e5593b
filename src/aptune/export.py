"""Export a pruned, tuned model as a HuggingFace folder anyone can load; load it back safely.

`export` merges every adapter into its weight (``W + s * B @ A``), drops the distillation transform
and the masks, and writes, atomically (a temporary folder renamed into place):

* ``model.safetensors`` with the stock parameter names,
* ``config.json``: the original config plus ``aptune_plan`` (versioned: every tensor's shape, the
  head-count attributes of each attention module, a per-layer summary, the sha256 of
  ``model.safetensors``) and ``auto_map`` pointing at
* ``modeling_aptune.py``, a self-contained loader (torch + transformers only),
* the tokenizer files when a tokenizer is given.

`load` reads such a folder with aptune's own copy of the loader classes (never code found in the
folder), after checking the plan against the safetensors header and the weights against their
recorded sha256. `reexport` writes an exported folder again in another dtype.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from aptune.adapter import AptLinear
from aptune.atomic import replace_dir_atomic
from aptune.errors import ExportError
from aptune.formats.hf_stock import stock_export_config
from aptune.hub import modeling_aptune
from aptune.hub.modeling_aptune import PLAN_FORMAT_VERSION, PLAN_KEY, READABLE_PLAN_VERSIONS

__all__ = ["export", "load", "merged_state_dict", "reexport"]

WEIGHTS_FILE = "model.safetensors"
HASH_KEY = "weights_sha256"  # sha256 of model.safetensors, recorded in the plan

_HUB_FILE = Path(modeling_aptune.__file__)
_AUTO_CLASS_BY_SUFFIX = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("ForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    ("Model", "AutoModel"),
)


def merged_state_dict(model: nn.Module, skip_prefixes: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """State dict with stock names, adapters merged in, and ``skip_prefixes`` left out.

    Tied parameters appear once (under their first name).
    """
    adapters = {name: module for name, module in model.named_modules() if isinstance(module, AptLinear)}
    merged: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if any(name.startswith(p) for p in skip_prefixes):
                continue
            module_path, _, attr = name.rpartition(".")
            if attr in ("lora_A", "lora_B") and module_path in adapters:
                continue
            if module_path.endswith(".base_layer") and module_path[: -len(".base_layer")] in adapters:
                owner = adapters[module_path[: -len(".base_layer")]]
                stock_name = module_path[: -len(".base_layer")] + "." + attr
                value = tensor.detach()
                if attr == "weight" and not owner.merged:
                    value = value + owner.get_delta_weight().to(value.dtype)
            else:
                stock_name, value = name, tensor.detach()
            if isinstance(tensor, nn.Parameter):
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
            merged[stock_name] = value.clone().contiguous()
    return merged


def _auto_class(class_name: str) -> str:
    for suffix, auto in _AUTO_CLASS_BY_SUFFIX:
        if class_name.endswith(suffix):
            return auto
    raise ExportError(f"cannot export {class_name}: no Auto class is known for it")


def build_plan(model: nn.Module, controller, state: dict[str, torch.Tensor]) -> dict:
    """The versioned per-layer plan stored in the exported config."""
    layout = controller.layout
    attributes, zero_attention = {}, {}
    units = controller.structure()["units"]
    for i, site in enumerate(layout.attention):
        module = model.get_submodule(site.module)
        attributes[site.module] = {name: getattr(module, name) for name in site.count_attrs}
        if units[i] == 0:
            zero_attention[site.module] = site.zero_kind
    summary = controller.layer_summary()
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "family": layout.family,
        "hidden_size": layout.hidden_size,
        "heads_per_layer": summary["heads_per_layer"],
        "ffn_per_layer": summary["ffn_per_layer"],
        "density": controller.density(),
        "shapes": {name: list(t.shape) for name, t in state.items()},
        "attributes": attributes,
        "zero_attention": zero_attention,
        "patches": list(layout.patches),
    }


def export(model: nn.Module, controller, out_dir: str | Path, *, tokenizer=None) -> nn.Module:
    """Merge adapters and write a loadable HuggingFace folder; return the loaded small model.

    The live ``model`` is not modified (training may continue).

    Args:
        model: The model prepared with `aptune.prepare_`.
        controller: Its `AptController`.
        out_dir: Target folder (replaced atomically if it exists).
        tokenizer: Saved alongside when given.

    Returns:
        The exported model, loaded back with `load` (a plain ``PreTrainedModel`` subclass).

    Raises:
        ExportError: the model class has no exportable counterpart.
    """
    from aptune.controller import DISTILL_MODULE_NAME

    if any(
        m is not None and not bool(((m == 0) | (m == 1)).all())
        for m in [*controller.state.heads, *controller.state.neurons, controller.state.hidden]
    ):
        raise ExportError(
            "the model is inside a soft-mask window (masks between 0 and 1); export after the "
            "pruning event or at the end of training"
        )
    class_name = type(model).__name__
    apt_class = "Apt" + class_name
    if apt_class not in modeling_aptune.__all__:
        raise ExportError(
            f"cannot export {class_name}; exportable classes: {sorted(modeling_aptune._BASES.values())}"
        )
    state = merged_state_dict(model, skip_prefixes=(DISTILL_MODULE_NAME + ".",))
    plan = build_plan(model, controller, state)
    config = stock_export_config(model, controller, plan) if controller.config.layout == "uniform" else None
    if config is None:
        config = model.config.to_dict()
        config[PLAN_KEY] = plan
        config["auto_map"] = {_auto_class(class_name): f"modeling_aptune.{apt_class}"}
        config["architectures"] = [apt_class]
    _write_folder(Path(out_dir), state, config, tokenizer=tokenizer)
    return load(out_dir, device=next(model.parameters()).device)


def reexport(source: str | Path, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Write a folder written by `export` again, optionally with its weights cast to ``dtype``.

    The plan, the tokenizer and every other file of ``source`` are kept; the weights and their
    content hash are written anew.

    Args:
        source: An exported folder (checked as `load` checks it).
        out_dir: Target folder (replaced atomically if it exists).
        dtype: The dtype of the written weights (default: as in ``source``).

    Returns:
        The written model, loaded back with `load`.

    Raises:
        ExportError: ``source`` is not an intact aptune export.
    """
    source = Path(source)
    model = load(source, dtype=dtype)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config[PLAN_KEY]["format_version"] = PLAN_FORMAT_VERSION
    state = model.state_dict()
    state = {name: state[name].contiguous() for name in config[PLAN_KEY]["shapes"]}
    rewritten = {"model.safetensors", "config.json", "modeling_aptune.py"}
    others = [item for item in source.iterdir() if item.is_file() and item.name not in rewritten]
    _write_folder(Path(out_dir), state, config, copy_files=others)
    return load(out_dir)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_folder(
    out_dir: Path, state: dict[str, torch.Tensor], config: dict, *, tokenizer=None, copy_files=()
) -> None:
    """Write weights, config (with the weights' content hash in the plan), loader and extra files."""

    def fill(folder: Path) -> None:
        weights = folder / WEIGHTS_FILE
        save_file(state, str(weights), metadata={"format": "pt"})
        config[PLAN_KEY][HASH_KEY] = _sha256(weights)
        (folder / "config.json").write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        if "auto_map" in config:  # stock (uniform-layout) folders need no loader file
            shutil.copyfile(_HUB_FILE, folder / "modeling_aptune.py")
        for item in copy_files:
            shutil.copyfile(item, folder / Path(item).name)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))

    replace_dir_atomic(out_dir, fill)


def _check_plan_against_weights(folder: Path, plan: dict) -> None:
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{weights} is missing; re-export the model")
    mismatched, missing = [], []
    with safe_open(str(weights), framework="pt") as handle:
        keys = set(handle.keys())
        for name, shape in plan["shapes"].items():
            if name not in keys:
                missing.append(name)
                continue
            actual = list(handle.get_slice(name).get_shape())
            if actual != list(shape):
                mismatched.append(f"{name}: plan {shape}, weights {actual}")
    if missing or mismatched:
        details = "; ".join(mismatched[:5] + [f"missing {m}" for m in missing[:5]])
        raise ExportError(
            f"{folder}: the aptune plan in config.json does not match model.safetensors ({details}); "
            "the folder was modified after export: export the model again"
        )


def _check_weights_hash(folder: Path, plan: dict) -> None:
    if plan.get("format_version", 1) < 3:
        return  # written before content hashes were recorded: only the shapes can be checked
    weights = folder / WEIGHTS_FILE
    expected = plan.get(HASH_KEY)
    if not isinstance(expected, str):
        raise ExportError(
            f"{folder}: the aptune plan in config.json has no {HASH_KEY}; export the model again"
        )
    if _sha256(weights) != expected:
        raise ExportError(
            f"{weights} was modified after export (its sha256 differs from the one in config.json); "
            "export the model again"
        )


def load(path: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a folder written by `export` with aptune's own loader classes.

    Args:
        path: The exported folder.
        device: Where to put the model (default CPU).
        dtype: Optional dtype to cast the weights to.

    Returns:
        The model, in eval mode.

    Raises:
        ExportError: not an aptune export, an unknown plan version, a plan that does not match
            the weights, or weights modified after export.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ExportError(f"{folder} is not an exported model folder (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{config_file} is not valid JSON ({exc}); export the model again") from None
    plan = config.get(PLAN_KEY)
    if not isinstance(plan, dict):
        raise ExportError(f"{folder} was not written by aptune.export (config.json has no {PLAN_KEY})")
    if plan.get("format_version") not in READABLE_PLAN_VERSIONS:
        raise ExportError(
            f"{folder}: aptune plan format {plan.get('format_version')!r} is not supported by this aptune "
            f"(reads {', '.join(map(str, READABLE_PLAN_VERSIONS))}); upgrade aptune"
        )
    architectures = config.get("architectures") or []
    name = architectures[0] if architectures else ""
    # stock (uniform-layout) folders name the stock class; aptune loads them with its Apt subclass
    cls = getattr(modeling_aptune, name if name.startswith("Apt") else "Apt" + name, None)
    if cls is None:
        raise ExportError(f"{folder}: architecture {architectures!r} is not one aptune can load")
    _check_plan_against_weights(folder, plan)
    _check_weights_hash(folder, plan)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = cls.from_pretrained(str(folder), **kwargs)
    if device is not None:
        model.to(device)
    return model.eval()
