"""Checks that an `AptConfig` asks only for what a model's run will have, and the notes it earns.

`aptune.prepare_` calls the checks before it changes the model, so a run that cannot work stops
with one `ConfigError` naming the option and the setting that makes it work.
"""

from __future__ import annotations

from collections.abc import Sequence

from aptune.config import AptConfig
from aptune.errors import ConfigError

__all__ = ["check_initial_teacher", "check_tuning_window_options", "hidden_stay_note"]

# Options that act on the pruning events during tuning: (field, what it does there).
_TUNING_WINDOW_OPTIONS = (
    (
        "distill",
        "distils from the model as it was before each pruning window during tuning "
        "(distill_teacher='events')",
    ),
    ("hidden_damage_curve", "acts on the pruning during tuning"),
    ("tuning_damage_curves", "acts on the pruning during tuning"),
)


_INITIAL_TEACHER_FIX = ", or distil from the unpruned model (distill_teacher='initial')"


def check_tuning_window_options(config: AptConfig, is_decoder: bool) -> None:
    """Raise one clear `ConfigError` when an option needs what this model's run will not have.

    ``tuning_damage_curves`` needs damage curves and the pruning before tuning;
    ``hidden_damage_curve`` needs the calibration batches of that pruning; these and ``distill``
    need pruning left for the events during tuning (a pretune density above the target). A run
    that prunes nothing (``target_density`` 1) needs none of it.

    Args:
        config: The run's configuration.
        is_decoder: Whether the model is a decoder LM (the family defaults differ).

    Raises:
        ConfigError: Naming the option and the setting that makes it work.
    """
    if config.keep_copy_heads and not is_decoder:
        raise ConfigError(
            f"AptConfig.keep_copy_heads={config.keep_copy_heads!r} protects the heads that copy from the "
            "context in causal LMs, and this model is not one; drop it (CLI --keep-copy-heads)"
        )
    if config.target_density >= 1.0:
        return
    pretune = config.pretune_target(is_decoder)
    if config.tuning_damage_curves and (config.damage_curve_points(is_decoder) == 0 or pretune is None):
        raise ConfigError(
            "AptConfig.tuning_damage_curves=True needs damage curves and pruning before tuning for this "
            "model; set damage_curves (e.g. 4) and pretune_prune=true, or drop tuning_damage_curves"
        )
    if config.uniform_heads == "measured" and pretune is None:
        raise ConfigError(
            "AptConfig.uniform_heads='measured' chooses the units per layer at the pruning before "
            "tuning, which this model does not run; set pretune_prune=true, or use 'salience'"
        )
    if config.hidden_damage_curve and pretune is None:
        raise ConfigError(
            "AptConfig.hidden_damage_curve=True measures its curves on batches of the calibration pass "
            "before tuning, which this model does not run; set pretune_prune=true and pretune_density "
            "above target_density, or drop hidden_damage_curve"
        )
    if pretune is None or pretune > config.target_density:
        return
    for option, role in _TUNING_WINDOW_OPTIONS:
        if option == "distill" and config.distill_teacher == "initial":
            continue  # its one teacher is the model before the pruning before tuning
        if getattr(config, option):
            raise ConfigError(
                f"AptConfig.{option}=True {role}, and pretune_density {pretune:g} leaves no pruning for "
                "tuning (it is the target density); set pretune_density above target_density "
                f"(e.g. 1 - (1 - target_density) / 2) or drop {option}"
                + (_INITIAL_TEACHER_FIX if option == "distill" else "")
            )


def check_initial_teacher(config: AptConfig, trainable_heads: Sequence[str]) -> None:
    """Refuse to distil predictions from the model before tuning when its task head is untrained.

    ``distill_teacher="initial"`` teaches with the model as prepared; a task head trained from
    scratch (a classifier, QA outputs) predicts noise there. A pretrained output layer (the LM head
    of a causal or seq2seq LM) is what makes that teacher's predictions worth matching.

    Raises:
        ConfigError: naming the head and the settings that work.
    """
    if not (config.distill and config.distill_teacher == "initial" and config.alpha_pred > 0):
        return
    if trainable_heads:
        raise ConfigError(
            f"AptConfig.distill_teacher='initial' distils the predictions of the model before tuning, and "
            f"this model's task head ({', '.join(trainable_heads)}) starts untrained, so they are noise; "
            "use distill_teacher='events' or set alpha_pred=0 (hidden states only)"
        )


def hidden_stay_note(pretune_density: float) -> str:
    """Why no hidden dimension leaves in a run that prunes everything before tuning, and the fix.

    The pruning before tuning keeps the hidden dimensions whenever damage curves rank the heads and
    neurons or the hidden salience is ``"norm_weighted"``; they leave only at the events during
    tuning, and a pretune density equal to the target leaves those events nothing to remove.
    """
    return (
        "hidden dimensions stay: the pruning before tuning keeps them and "
        f"pretune_density {pretune_density:g} (the target) leaves no pruning for tuning; "
        "set pretune_density above target_density "
        "(e.g. 1 - (1 - target_density) / 2) to prune them during tuning"
    )
