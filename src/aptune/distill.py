"""Efficient self-distillation (paper section 4.4, apt-method.md section 6).

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
  with the nearest alive student layer (apt-method.md 6.2).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from aptune.adapter import AptLinear

__all__ = [
    "DistillTransform",
    "LayerDistillLoss",
    "PredictionDistillLoss",
    "Teacher",
    "nearest_alive_candidates",
    "rms_normalise",
    "sample_teacher_layers",
]


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
    teacher's width at each new snapshot.
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
