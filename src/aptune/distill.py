"""Efficient self-distillation (paper section 4.4).

The teacher is a snapshot of the model's *own* state: it keeps references to the tensors the model
held when the snapshot was taken. Surgery replaces each Parameter's tensor with a smaller one, so the
frozen backbone tensors the teacher refers to stay intact without a copy; only the trainable tensors
(adapters, task head) are cloned, because the optimizer changes them in place. The teacher runs
through `torch.func.functional_call` under ``no_grad`` with masks and salience switched off, so it
keeps the structure the model had at the snapshot while the student shrinks.

Losses are pure modules computed in float32:

* `PredictionDistillLoss`: ``KL(p_teacher || p_student)`` at temperature ``tau``, times ``tau**2`` and a
  constant factor (the authors' code uses 10 for classification);
* `LayerDistillLoss`: MSE between ``Tr(H_student)`` and ``H_teacher`` for sampled teacher layers,
  with the nearest alive student layer.

`SelfDistiller` holds the teacher snapshot and the transform ``Tr`` and mixes these losses with the
task loss. It is handed everything it needs (the weight ``mu``, the layers still alive, the positions
that count) and never asks the controller.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from aptune.adapter import AptLinear
from aptune.config import AptConfig
from aptune.surgery import grow_adapter_, slice_linear_

__all__ = [
    "DISTILL_MODULE_NAME",
    "DistillTransform",
    "LayerDistillLoss",
    "LossParts",
    "PredictionDistillLoss",
    "SelfDistiller",
    "Teacher",
    "nearest_alive_candidates",
    "rms_normalise",
    "sample_teacher_layers",
    "valid_positions",
]

DISTILL_MODULE_NAME = "aptune_distill"
"""Attribute name under which `aptune.prepare_` registers the `DistillTransform` on the model."""

_PREDICTION_FIELDS = ("logits", "start_logits", "end_logits")
_TARGET_FIELDS = ("labels", "start_positions", "end_positions")


class PredictionDistillLoss(nn.Module):
    """Temperature-scaled KL divergence from teacher to student predictions.

    Args:
        temperature: Softmax temperature ``tau``.
        scale: Constant factor applied after ``tau**2``.

    Forward args:
        student_logits, teacher_logits: ``(..., classes)``.
        valid: Optional boolean ``(...)`` mask of positions that count (e.g. non-padding tokens).

    Returns:
        Scalar loss: mean over counted positions of ``sum_c p_t (log p_t - log p_s)``.
    """

    def __init__(self, temperature: float = 2.0 / 3.0, scale: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.scale = float(scale)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        tau = self.temperature
        log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
        log_p_t = F.log_softmax(teacher_logits.float() / tau, dim=-1)
        per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...)
        if valid is not None:
            valid = valid.to(per_position.dtype)
            per_position = per_position * valid
            count = valid.sum().clamp_min(1.0)
        else:
            count = torch.tensor(float(per_position.numel()), device=per_position.device)
        return per_position.sum() / count * (tau**2) * self.scale


class DistillTransform(AptLinear):
    """``Tr``: student hidden states -> teacher hidden width; frozen identity plus a trainable LoRA.

    Its input columns shrink with the student's hidden dimensions, its output rows follow the
    teacher's width at each new snapshot. With ``AptConfig.distill_rank_growth`` its rank grows with
    the adapters' (`aptune.AptController.grow_transform_`), output-preserving like adapter growth.
    """

    def __init__(self, width: int, rank: int = 8, scaling: float = 2.0, device=None, dtype=None) -> None:
        base = nn.Linear(width, width, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            base.weight.copy_(torch.eye(width, device=device, dtype=dtype))
        super().__init__(base, rank=rank, scaling=scaling)


def sample_teacher_layers(num_layers: int, count: int, generator: torch.Generator | None = None) -> list[int]:
    """One layer drawn uniformly from each of ``count`` consecutive blocks of the layer stack."""
    count = max(1, min(count, num_layers))
    bounds = torch.linspace(0, num_layers, count + 1).round().long().tolist()
    layers = []
    for lo, hi in itertools.pairwise(bounds):
        hi = max(hi, lo + 1)
        layers.append(lo + int(torch.randint(hi - lo, (1,), generator=generator)))
    return layers


def nearest_alive_candidates(layer: int, alive: Sequence[bool], mode: str = "nearest") -> list[int]:
    """Student layers a teacher layer may be matched with.

    ``"nearest"`` (the authors' default): the same index if alive, else the nearest alive layer below
    and the nearest alive above (the caller keeps the one with the smaller loss). ``"same"``: the same
    index or nothing.
    """
    if 0 <= layer < len(alive) and alive[layer]:
        return [layer]
    if mode == "same":
        return []
    below = next((i for i in range(layer - 1, -1, -1) if alive[i]), None)
    above = next((i for i in range(layer + 1, len(alive)) if alive[i]), None)
    return [i for i in (below, above) if i is not None]


def rms_normalise(states: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``states / sqrt(mean(states**2, -1) + eps)`` in float32 (the authors' seq2seq layer loss)."""
    states = states.float()
    return states * torch.rsqrt(states.pow(2).mean(-1, keepdim=True) + eps)


class LayerDistillLoss(nn.Module):
    """Sum over teacher layers of ``MSE(Tr(H_student[phi(i)]), H_teacher[i])`` (mean reduction).

    With ``normalise=True`` both sides are RMS-normalised per token first, as the authors'
    seq2seq (T5) code does: the residual stream of a pre-norm encoder-decoder grows large and would
    otherwise dominate the loss by its scale.
    """

    def forward(
        self,
        student_states: Sequence[torch.Tensor],
        teacher_states: Sequence[torch.Tensor],
        teacher_layers: Sequence[int],
        alive: Sequence[bool],
        transform: nn.Module,
        mode: str = "nearest",
        normalise: bool = False,
    ) -> torch.Tensor:
        def prepare(states: torch.Tensor) -> torch.Tensor:
            return rms_normalise(states) if normalise else states.float()

        total = None
        for layer in teacher_layers:
            target = prepare(teacher_states[layer])
            losses = [
                F.mse_loss(prepare(transform(student_states[j])), target)
                for j in nearest_alive_candidates(layer, alive, mode)
            ]
            if not losses:
                continue
            best = torch.stack(losses).min()
            total = best if total is None else total + best
        if total is None:
            return student_states[0].new_zeros((), dtype=torch.float32)
        return total


class Teacher:
    """A frozen snapshot of the model's own tensors, run with `functional_call`.

    Args:
        model: The student model at snapshot time.
        hidden_ids: Original ids of the hidden dimensions the model has at snapshot time.

    Attributes:
        tensors: Parameter name -> tensor (references for frozen, clones for trainable ones).
    """

    def __init__(self, model: nn.Module, hidden_ids: torch.Tensor, skip_prefixes: Sequence[str] = ()) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        for name, param in model.named_parameters():
            if any(name.startswith(p) for p in skip_prefixes):
                continue
            self.tensors[name] = param.detach().clone() if param.requires_grad else param.data
        self.hidden_ids = hidden_ids.clone()

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], hidden_ids: torch.Tensor) -> Teacher:
        """A teacher holding ``tensors`` (a restored snapshot)."""
        teacher = cls.__new__(cls)
        teacher.tensors = tensors
        teacher.hidden_ids = hidden_ids.clone()
        return teacher

    def extra_bytes(self, model: nn.Module) -> int:
        """Bytes the snapshot keeps alive that the student no longer shares.

        These are the cloned trainable tensors plus every frozen tensor that surgery has since
        replaced in the student (the teacher's reference keeps the old, larger tensor alive).
        """
        live = {p.data.data_ptr() for p in model.parameters()}
        return sum(t.numel() * t.element_size() for t in self.tensors.values() if t.data_ptr() not in live)

    @torch.no_grad()
    def forward(self, model: nn.Module, inputs: dict) -> object:
        """Teacher outputs (with hidden states) for ``inputs``; dropout off."""
        was_training = model.training
        model.eval()
        try:
            kwargs = {**inputs, "output_hidden_states": True}
            return functional_call(model, self.tensors, args=(), kwargs=kwargs, strict=False)
        finally:
            model.train(was_training)

    def module_tensors(self, model: nn.Module, module_name: str) -> dict[str, torch.Tensor]:
        """The snapshot's tensors of the submodule ``module_name``, keyed relative to it.

        Tied parameters (a causal LM's output projection sharing the embedding) are found under the
        name the snapshot stored them by.
        """
        canonical: dict[int, str] = {}
        prefix = f"{module_name}."
        tensors = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            first = canonical.setdefault(id(param), name)
            if name.startswith(prefix) and first in self.tensors:
                tensors[name[len(prefix) :]] = self.tensors[first]
        return tensors

    @torch.no_grad()
    def forward_module(self, model: nn.Module, module_name: str, *args, **kwargs) -> object:
        """Run the submodule ``module_name`` of ``model`` with the snapshot's tensors; dropout off."""
        module = model.get_submodule(module_name)
        was_training = module.training
        module.eval()
        try:
            tensors = self.module_tensors(model, module_name)
            return functional_call(module, tensors, args=args, kwargs=kwargs, strict=False)
        finally:
            module.train(was_training)


@dataclass
class LossParts:
    """The terms of the training loss at one step (floats, for logging)."""

    task: float | None = None
    pred: float | None = None
    layer: float | None = None
    mu: float | None = None


def valid_positions(inputs: Mapping[str, Any], encoder_decoder: bool) -> torch.Tensor | None:
    """Which token positions of the logits count in the prediction loss.

    Args:
        inputs: The model inputs of the batch.
        encoder_decoder: Whether the model is an encoder-decoder (its logits follow the decoder).

    Returns:
        A boolean ``(batch, T)`` mask: the decoder targets for encoder-decoders (the encoder's
        ``attention_mask`` has the source length), the attention mask otherwise; None if unknown.
    """
    if encoder_decoder:
        if inputs.get("decoder_attention_mask") is not None:
            return inputs["decoder_attention_mask"].bool()
        labels = inputs.get("labels")
        return labels != -100 if labels is not None else None
    mask = inputs.get("attention_mask")
    return mask.bool() if mask is not None else None


class SelfDistiller:
    """The teacher snapshot, the transform ``Tr`` and the combined training loss.

    Args:
        config: Loss weights and scales (``alpha_*``, ``kl_scale``, ``token_kl_scale``,
            ``temperature``, ``num_teacher_layers``, ``layer_mapping``).
        transform: The `DistillTransform` registered on the model, or None (no layer loss).
        generator: RNG of the teacher-layer sampling (shared with the controller's rank growth).
        encoder_decoder: Whether the model is an encoder-decoder (normalised layer loss, decoder
            inputs derived from the labels for the teacher).

    Attributes:
        teacher: The current `Teacher`, or None.
        transform_out_ids: Original ids of the hidden dimensions the transform's rows stand for.
        teacher_seconds: Time spent in teacher forwards.
        teacher_peak_bytes: Largest memory the snapshot kept alive beyond the student.
        last_parts: The `LossParts` of the latest `loss`.
    """

    def __init__(
        self,
        config: AptConfig,
        transform: DistillTransform | None,
        generator: torch.Generator,
        encoder_decoder: bool,
    ) -> None:
        self.config = config
        self.transform = transform
        self.generator = generator
        self.encoder_decoder = encoder_decoder
        self.teacher: Teacher | None = None
        self.transform_out_ids = torch.arange(transform.out_features) if transform is not None else None
        self.teacher_seconds = 0.0
        self.teacher_peak_bytes = 0
        self.last_parts = LossParts()
        self._pred_loss = PredictionDistillLoss(config.temperature)
        self._layer_loss = LayerDistillLoss()

    def attach_transform(self, transform: DistillTransform) -> None:
        """Use ``transform`` as ``Tr`` (its rows stand for every hidden dimension of the model now)."""
        self.transform = transform
        self.transform_out_ids = torch.arange(transform.out_features)

    def snapshot_(self, model: nn.Module, hidden_ids: torch.Tensor, optimizer=None) -> bool:
        """Take a teacher snapshot of ``model`` as it is now.

        The transform's output rows follow the teacher's hidden width: the rows of dimensions the
        model no longer has are removed (with their optimizer state).

        Args:
            model: The student.
            hidden_ids: Original ids of the hidden dimensions the model has now.
            optimizer: Optimizer holding the transform's parameters, if any.

        Returns:
            Whether the transform changed shape.
        """
        changed = False
        if self.transform is not None:
            if self.transform.out_features != hidden_ids.numel():
                rows = torch.nonzero(torch.isin(self.transform_out_ids, hidden_ids)).squeeze(1)
                slice_linear_(self.transform, rows=rows, optimizer=optimizer)
                changed = True
            self.transform_out_ids = hidden_ids.clone()
        self.teacher = Teacher(model, hidden_ids, skip_prefixes=(DISTILL_MODULE_NAME + ".",))
        return changed

    def release(self) -> None:
        """Drop the teacher snapshot (distillation is over)."""
        self.teacher = None

    def note_memory(self, model: nn.Module) -> None:
        """Record the memory the snapshot keeps alive now that the student shrank."""
        if self.teacher is not None:
            self.teacher_peak_bytes = max(self.teacher_peak_bytes, self.teacher.extra_bytes(model))

    @contextlib.contextmanager
    def _timed_teacher(self) -> Iterator[Teacher]:
        # the snapshot, with the time spent in it added to teacher_seconds
        if self.teacher is None:
            raise RuntimeError("no teacher snapshot exists yet")
        start = time.perf_counter()
        try:
            yield self.teacher
        finally:
            self.teacher_seconds += time.perf_counter() - start

    def teacher_module_forward(self, model: nn.Module, module_name: str, *args, **kwargs) -> object:
        """Run the teacher's submodule ``module_name`` (the caller turns masks off); timed.

        Raises:
            RuntimeError: no snapshot exists.
        """
        with self._timed_teacher() as teacher:
            return teacher.forward_module(model, module_name, *args, **kwargs)

    def teacher_forward(self, model: nn.Module, inputs: Mapping[str, Any]) -> object:
        """Teacher outputs for the student's ``inputs`` (targets removed; the caller turns masks off).

        Raises:
            RuntimeError: no snapshot exists.
        """
        with self._timed_teacher() as teacher:
            inputs = dict(inputs)
            if self.encoder_decoder and "decoder_input_ids" not in inputs and "labels" in inputs:
                # the student derives its decoder inputs from the labels; the teacher gets none
                inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(
                    labels=inputs["labels"]
                )
            inputs = {k: v for k, v in inputs.items() if k not in _TARGET_FIELDS}
            return teacher.forward(model, inputs)

    @property
    def matches_layers(self) -> bool:
        """Whether the loss has a layer term (a transform and ``alpha_layer`` > 0)."""
        return self.transform is not None and self.config.alpha_layer != 0

    def loss(
        self,
        student_outputs,
        teacher_outputs,
        task_loss: torch.Tensor,
        *,
        mu: float,
        alive: Mapping[str | None, Sequence[bool]],
        valid: torch.Tensor | None = None,
        token_kl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, LossParts]:
        """``mu * (a_pred * L_pred + a_layer * L_layer) + (1 - mu) * L_task``.

        Args:
            student_outputs, teacher_outputs: Model outputs; the teacher's carry hidden states.
            task_loss: The student's task loss.
            mu: Weight of the distillation terms.
            alive: Alive flags per layer, keyed by stack (``"encoder"``, ``"decoder"``) and by None
                for a single stack (see `aptune.blocks.BlockBook.alive_layers`).
            valid: Boolean ``(batch, T)`` mask of the token positions that count (`valid_positions`).
            token_kl: The token-level prediction KL computed elsewhere (in blocks of tokens,
                `aptune.losses.chunked_causal_lm_distill`); it replaces the one from the outputs'
                logits and gets ``token_kl_scale`` here.

        Returns:
            ``(loss, LossParts)``; the parts are also kept as ``last_parts``.
        """
        cfg = self.config
        pred_terms = [] if token_kl is None else [token_kl * cfg.token_kl_scale]
        for name in _PREDICTION_FIELDS:
            s = getattr(student_outputs, name, None)
            t = getattr(teacher_outputs, name, None)
            if s is None or t is None:
                continue
            if s.dim() == 3:  # token-level logits (batch, T, V): only real target positions count
                mask = valid if valid is not None and valid.shape == s.shape[:2] else None
                pred_terms.append(self._pred_loss(s, t, mask) * cfg.token_kl_scale)
            else:  # one prediction per example (classification; QA start/end over positions)
                pred_terms.append(self._pred_loss(s, t) * cfg.kl_scale)
        pred = torch.stack(pred_terms).mean() if pred_terms else task_loss.new_zeros(())
        layer = task_loss.new_zeros(())
        layer_terms = []
        pairs = _hidden_state_pairs(student_outputs, teacher_outputs) if self.matches_layers else []
        for s_states, t_states, stack in pairs:
            layers = sample_teacher_layers(len(t_states) - 1, cfg.num_teacher_layers, self.generator)
            layer_terms.append(
                self._layer_loss(
                    s_states[1:],
                    t_states[1:],
                    layers,
                    alive[stack],
                    self.transform,
                    cfg.layer_mapping,
                    normalise=self.encoder_decoder,
                )
            )
        if layer_terms:
            layer = torch.stack(layer_terms).mean()
        distill = cfg.alpha_pred * pred + cfg.alpha_layer * layer
        loss = mu * distill + (1 - mu) * task_loss.float()
        parts = LossParts(
            task=float(task_loss.detach()), pred=float(pred.detach()), layer=float(layer.detach()), mu=mu
        )
        self.last_parts = parts
        return loss, parts

    def state_dict(self, model: nn.Module) -> dict[str, Any]:
        """Transform rows and rank, teacher snapshot and teacher time.

        Teacher tensors that are still the model's own are listed by name under ``"shared"``
        instead of being stored twice.
        """
        teacher = None
        if self.teacher is not None:
            live = {name: p.data.data_ptr() for name, p in model.named_parameters()}
            shared = [n for n, t in self.teacher.tensors.items() if live.get(n) == t.data_ptr()]
            own = {n: t for n, t in self.teacher.tensors.items() if n not in shared}
            teacher = {"hidden_ids": self.teacher.hidden_ids, "tensors": own, "shared": shared}
        return {
            "transform_out_ids": self.transform_out_ids,
            "transform_rank": self.transform.rank if self.transform is not None else None,
            "teacher": teacher,
            "seconds": self.teacher_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any], model: nn.Module, optimizer=None) -> None:
        """Restore what `state_dict` returned, after the model got its saved shapes.

        Args:
            state: The saved state.
            model: The student (shared teacher tensors are its own parameters).
            optimizer: Optimizer holding the transform's parameters, if any.
        """
        if self.transform is not None and state["transform_out_ids"] is not None:
            out_ids = state["transform_out_ids"].long()
            if out_ids.numel() != self.transform.out_features:
                slice_linear_(self.transform, rows=out_ids, optimizer=optimizer)
            self.transform_out_ids = out_ids.clone()
        if self.transform is not None and state.get("transform_rank") is not None:
            grow_adapter_(self.transform, int(state["transform_rank"]), optimizer)
        self.teacher_seconds = float(state["seconds"])
        saved = state["teacher"]
        if saved is None:  # none at the checkpoint (released, or not taken yet)
            self.teacher = None
            return
        device = next(model.parameters()).device
        tensors = {name: t.to(device) for name, t in saved["tensors"].items()}
        # shared tensors: the model's own (the checkpoint's weights are copied into them in place)
        for name in saved["shared"]:
            tensors[name] = model.get_parameter(name).data
        self.teacher = Teacher.from_tensors(tensors, saved["hidden_ids"].long())


def _hidden_state_pairs(student_outputs, teacher_outputs) -> list[tuple]:
    # (student states, teacher states, stack) per stack; encoder-decoders return their stacks
    # separately and the layer loss averages them
    s_states = getattr(student_outputs, "hidden_states", None)
    t_states = getattr(teacher_outputs, "hidden_states", None)
    if s_states is not None and t_states is not None:
        return [(s_states, t_states, None)]
    pairs = []
    for stack in ("encoder", "decoder"):
        s_states = getattr(student_outputs, f"{stack}_hidden_states", None)
        t_states = getattr(teacher_outputs, f"{stack}_hidden_states", None)
        if s_states is not None and t_states is not None:
            pairs.append((s_states, t_states, stack))
    return pairs
