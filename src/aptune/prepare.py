"""`prepare_`: make a model ready for APT in place and hand back its `AptController`."""

from __future__ import annotations

from torch import nn

from aptune.adapter import attach_adapter
from aptune.arch import build_layout
from aptune.config import AptConfig
from aptune.controller import AptController
from aptune.distill import DISTILL_MODULE_NAME, DistillTransform
from aptune.errors import ModelError
from aptune.hub.modeling_aptune import apply_patches_
from aptune.masks import install_masks
from aptune.option_checks import check_initial_teacher, check_tuning_window_options

__all__ = ["prepare_"]


def prepare_(
    model: nn.Module, config: AptConfig | None = None, *, total_steps: int | None = None
) -> AptController:
    """Make ``model`` ready for APT in place and return its controller.

    Applies the family's structural patches (T5: every self-attention gets its own relative
    position table, see `aptune.arch.t5`), attaches adapters to the configured roles (default: q, v
    and FFN-up for encoders; q and v for LLaMA-family decoders; q, v and the first FFN input for
    T5), freezes every other backbone parameter, keeps the task head trainable (a deliberate
    deviation from the authors' code, which never trains RoBERTa's ``out_proj``), installs masks and
    salience hooks, and (with distillation on) registers the distillation transform as
    ``model.aptune_distill`` so that any optimizer built afterwards trains it.

    Args:
        model: A HuggingFace model of a supported family.
        config: The APT configuration (default ``AptConfig()``).
        total_steps: Number of optimizer steps of the run, if known now (else call
            ``controller.set_total_steps`` before training).

    Returns:
        The `AptController` that owns masks, scores, schedules and surgery.

    Raises:
        UnsupportedModelError: the model family or task head is not supported.
        ModelError: the model was already prepared.
        ConfigError: an option needs what this model's run will not have (the model is untouched).

    Example:
        >>> controller = aptune.prepare_(model, aptune.AptConfig(target_density=0.4), total_steps=1000)
        >>> for batch in loader:
        ...     model(**batch).loss.backward(); optimizer.step()
        ...     controller.step(optimizer); optimizer.zero_grad()
    """
    config = config or AptConfig()
    if getattr(model, "_aptune_controller", None) is not None:
        raise ModelError(
            "this model was already prepared by aptune; reuse its controller (model._aptune_controller)"
        )
    layout = build_layout(model)
    check_tuning_window_options(config, layout.is_decoder)  # before anything changes the model
    check_initial_teacher(config, layout.trainable_heads)
    apply_patches_(model, layout.patches)
    for param in model.parameters():
        param.requires_grad_(False)
    controller = AptController(model, config, layout)
    roles = config.adapter_targets or layout.default_adapter_roles
    for role in roles:
        for path in layout.role_paths(role):
            controller.adapters[path] = attach_adapter(model, path, config.initial_rank, config.lora_scaling)
    for path in layout.trainable_heads:
        for param in model.get_submodule(path).parameters():
            param.requires_grad_(True)
    install_masks(model, layout, controller.state)
    controller.initial_adapter_params = controller.adapter_parameter_count()
    if config.distill and config.target_density < 1.0:
        weight = next(model.parameters())
        transform = DistillTransform(
            layout.hidden_size, rank=config.initial_rank, scaling=config.lora_scaling, device=weight.device
        )
        model.add_module(DISTILL_MODULE_NAME, transform)
        controller.distiller.attach_transform(transform)
    model._aptune_controller = controller
    if total_steps is not None:
        controller.set_total_steps(total_steps)
    return controller
