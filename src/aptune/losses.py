"""Causal-LM loss computed in blocks of tokens, so the full vocabulary logits never exist at once.

For a small decoder with a large vocabulary (SmolLM2-135M: 49,152 words, width 576) the logits of a
training step and their gradient dominate its memory. `chunked_causal_lm_loss` projects the final
hidden states onto the vocabulary one block of tokens at a time; each block is wrapped in
`torch.utils.checkpoint`, so only the block's hidden states are kept for the backward pass and its
logits are recomputed there. The value and the gradients equal those of the Hugging Face causal-LM
loss (labels shifted by one, ``-100`` ignored, mean over the counted tokens, or sum divided by
``num_items_in_batch`` under gradient accumulation).

`chunked_lm_forward` runs a causal LM's decoder without its output projection and returns that loss;
an overridden ``compute_loss`` of a plain `transformers.Trainer` can call it, so that a baseline run
(e.g. peft LoRA) uses the same loss and memory as aptune. `chunked_lm_eval` is its evaluation side:
the loss and the per-token losses that `aptune.tasks.compute_perplexity` reads, block by block
without a gradient, so an evaluation never holds the ``[tokens, vocabulary]`` logits either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aptune.errors import ConfigError

__all__ = [
    "IGNORE_INDEX",
    "causal_lm_decoder_output",
    "causal_lm_hidden_and_head",
    "chunked_causal_lm_distill",
    "chunked_causal_lm_loss",
    "chunked_lm_eval",
    "chunked_lm_forward",
    "chunked_token_nll",
    "is_causal_lm",
]

IGNORE_INDEX = -100

# Wrappers for data parallelism: they hold the model as ``.module`` and must see its forward.
_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def _block_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets):
    # (tokens, d) @ (d, vocab) -> (tokens, vocab), in float32 as the HF loss upcasts the logits
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: nn.Module,
    labels: torch.Tensor,
    chunk_size: int = 1024,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """The causal-LM cross-entropy, with the logits computed ``chunk_size`` tokens at a time.

    Args:
        hidden_states: Final hidden states (after the last norm), shape ``(batch, seq, d_model)``.
        lm_head: The output projection (an ``nn.Linear``-like module with ``weight`` of shape
            ``(vocab, d_model)`` and optional ``bias``; an adapter-wrapped head is called as a module).
        labels: Token ids, shape ``(batch, seq)``; position ``t`` predicts ``labels[t + 1]``;
            ``-100`` is ignored.
        chunk_size: Tokens per block (after flattening batch and sequence).
        num_items_in_batch: Divide the summed loss by this (the Trainer's count over all
            accumulated micro-batches) instead of by this batch's counted tokens.

    Returns:
        The scalar loss (float32). With no counted token it is 0 (connected to the graph).

    Raises:
        ConfigError: ``chunk_size`` is not a positive int.
        ValueError: ``labels`` does not match ``hidden_states`` in batch and sequence.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be an int >= 1 (tokens per logits block)")
    if labels.shape != hidden_states.shape[:-1]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match hidden states {tuple(hidden_states.shape)}"
        )
    # shift: position t predicts token t + 1
    # (batch, seq - 1, d) -> (tokens, d) and (batch, seq - 1) -> (tokens,)
    hidden = hidden_states[:, :-1, :].reshape(-1, hidden_states.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    plain = type(lm_head) is nn.Linear
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        block = hidden[start : start + chunk_size]
        block_targets = targets[start : start + chunk_size]
        if not bool((block_targets != IGNORE_INDEX).any()):
            continue
        if plain:
            part = checkpoint(
                _block_loss_sum, block, lm_head.weight, lm_head.bias, block_targets, use_reentrant=False
            )
        else:
            part = checkpoint(_module_block_loss_sum, lm_head, block, block_targets, use_reentrant=False)
        total = total + part
    if num_items_in_batch is not None:
        count = torch.as_tensor(num_items_in_batch, device=total.device, dtype=torch.float32)
    else:
        count = (targets != IGNORE_INDEX).sum().float()
    if float(count) == 0:
        return total + 0.0 * hidden.sum()
    return total / count


def chunked_causal_lm_distill(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    student_head: nn.Module,
    teacher_head: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    valid: torch.Tensor | None,
    chunk_size: int,
    temperature: float = 1.0,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal-LM cross-entropy and the token-level distillation KL, in blocks of tokens.

    Each block's student logits serve both terms and are recomputed in the backward pass
    (`torch.utils.checkpoint`); the teacher's logits are computed per block without a gradient. So
    neither model's ``[tokens, vocabulary]`` logits exist at once.

    Args:
        student_hidden: The student's final hidden states, ``(batch, seq, d_student)``.
        teacher_hidden: The teacher's final hidden states, ``(batch, seq, d_teacher)``.
        student_head: The student's output projection.
        teacher_head: Maps a block of teacher hidden states ``(tokens, d_teacher)`` to logits.
        labels: Token ids ``(batch, seq)``; position ``t`` predicts ``labels[t + 1]``; ``-100`` ignored.
        valid: Boolean ``(batch, seq)`` positions whose predictions the KL compares (None: all).
        chunk_size: Tokens per block.
        temperature: Softmax temperature ``tau`` of the KL.
        num_items_in_batch: See `chunked_causal_lm_loss` (the cross-entropy only).

    Returns:
        ``(cross_entropy, kl)``: the values of `chunked_causal_lm_loss` and of
        `aptune.distill.PredictionDistillLoss` (mean over valid positions, times ``tau**2``).

    Raises:
        ConfigError: ``chunk_size`` is not a positive int.
        ValueError: the shapes disagree.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be an int >= 1 (tokens per logits block)")
    batch, seq = labels.shape
    if student_hidden.shape[:2] != (batch, seq) or teacher_hidden.shape[:2] != (batch, seq):
        raise ValueError(
            f"hidden states {tuple(student_hidden.shape)} / {tuple(teacher_hidden.shape)} do not match "
            f"labels {tuple(labels.shape)}"
        )
    # position t predicts labels[t + 1]; the last position has no target
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX).to(student_hidden.device)
    if valid is None:
        valid = torch.ones(batch, seq, dtype=torch.bool, device=student_hidden.device)
    # (batch, seq, d) -> (tokens, d); (batch, seq) -> (tokens,)
    s_rows = student_hidden.reshape(batch * seq, -1)
    t_rows = teacher_hidden.reshape(batch * seq, -1)
    flat_targets, flat_valid = targets.reshape(-1), valid.to(student_hidden.device).reshape(-1)
    tau = float(temperature)

    def block_sums(s_block, t_block, block_targets, block_valid):
        logits = student_head(s_block).float()  # (block, vocab)
        ce = F.cross_entropy(logits, block_targets, ignore_index=IGNORE_INDEX, reduction="sum")
        with torch.no_grad():
            log_p_t = F.log_softmax(teacher_head(t_block).float() / tau, dim=-1)
        log_p_s = F.log_softmax(logits / tau, dim=-1)
        per_token = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (block,)
        return ce, (per_token * block_valid).sum()

    ce_total = s_rows.new_zeros((), dtype=torch.float32)
    kl_total = s_rows.new_zeros((), dtype=torch.float32)
    for start in range(0, s_rows.shape[0], chunk_size):
        stop = start + chunk_size
        block_valid = flat_valid[start:stop]
        block_targets = flat_targets[start:stop]
        if not bool(block_valid.any()) and not bool((block_targets != IGNORE_INDEX).any()):
            continue
        ce, kl = checkpoint(
            block_sums,
            s_rows[start:stop],
            t_rows[start:stop],
            block_targets,
            block_valid.float(),
            use_reentrant=False,
        )
        ce_total, kl_total = ce_total + ce, kl_total + kl
    if num_items_in_batch is not None:
        count = torch.as_tensor(num_items_in_batch, device=ce_total.device, dtype=torch.float32)
    else:
        count = (flat_targets != IGNORE_INDEX).sum().float()
    ce_loss = ce_total / count if float(count) > 0 else ce_total + 0.0 * s_rows.sum()
    kl_loss = kl_total / flat_valid.sum().clamp_min(1).float() * tau**2
    return ce_loss, kl_loss


def _module_block_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face ``*ForCausalLM`` (the models the chunked loss serves)."""
    return type(model).__name__.endswith("ForCausalLM")


def causal_lm_hidden_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the output projection of a Hugging Face causal LM.

    Args:
        model: A ``*ForCausalLM`` model (possibly wrapped by peft, whose ``base_model.model`` is used).

    Returns:
        ``(decoder, lm_head)``: calling ``decoder(input_ids=..., attention_mask=...)`` returns the
        final hidden states as ``last_hidden_state``.

    Raises:
        ValueError: the model has no decoder or no output embeddings.
    """
    inner = model
    while isinstance(inner, _WRAPPERS):  # DistributedDataParallel / DataParallel hold it as .module
        inner = inner.module
    # peft: PeftModel.base_model (LoraModel).model is the transformers model
    while not hasattr(inner, "get_output_embeddings") and hasattr(inner, "base_model"):
        inner = inner.base_model
    if hasattr(inner, "model") and not hasattr(inner, "get_decoder") and hasattr(inner.model, "get_decoder"):
        inner = inner.model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    decoder = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if head is None or decoder is None:
        raise ValueError(f"{type(model).__name__} is not a causal LM with a decoder and an output projection")
    return decoder, head


def causal_lm_decoder_output(model: nn.Module, kwargs: dict, **options) -> object:
    """The output of a causal LM's decoder stack (``last_hidden_state``, ...), without its logits.

    A bare (or peft-wrapped) model runs its decoder directly. A model wrapped for data parallelism
    runs through the wrapper, so that the wrapper sees the forward and synchronises the gradients:
    it is asked for the logits of no position (``logits_to_keep`` empty), and the decoder's output
    is taken from a forward hook.

    Args:
        model: A Hugging Face causal LM, possibly wrapped by peft or by ``DistributedDataParallel``.
        kwargs: The decoder inputs (no labels).
        **options: Further decoder options (e.g. ``output_hidden_states=True``).

    Returns:
        The decoder's ``BaseModelOutputWithPast``.
    """
    decoder, _ = causal_lm_hidden_and_head(model)
    if not isinstance(model, _WRAPPERS):
        return decoder(**kwargs, use_cache=False, **options)
    captured = []
    handle = decoder.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        device = next(decoder.parameters()).device
        model(
            **kwargs,
            use_cache=False,
            logits_to_keep=torch.empty(0, dtype=torch.long, device=device),
            **options,
        )
    finally:
        handle.remove()
    return captured[-1]


def chunked_lm_forward(
    model: nn.Module, inputs: dict, chunk_size: int, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Run a causal LM's decoder on ``inputs`` and return the chunked loss against ``inputs["labels"]``.

    Args:
        model: A Hugging Face causal LM (see `causal_lm_hidden_and_head`).
        inputs: The batch; ``labels`` is required, other keys go to the decoder.
        chunk_size: Tokens per logits block.
        num_items_in_batch: See `chunked_causal_lm_loss`.

    Returns:
        The scalar loss.
    """
    _, head = causal_lm_hidden_and_head(model)
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    hidden = causal_lm_decoder_output(model, kwargs).last_hidden_state
    return chunked_causal_lm_loss(hidden, head, inputs["labels"], chunk_size, num_items_in_batch)


@torch.no_grad()
def chunked_token_nll(
    hidden_states: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Per-token causal-LM losses, the logits computed ``chunk_size`` tokens at a time, no gradient.

    The layout is `aptune.tasks.token_nll`'s: position ``t`` holds the loss of predicting
    ``labels[:, t + 1]``; positions whose next label is ``-100``, and the last position, hold 0.

    Args:
        hidden_states: Final hidden states, shape ``(batch, seq, d_model)``.
        lm_head: The output projection.
        labels: Token ids, shape ``(batch, seq)``, ``-100`` where no loss is taken.
        chunk_size: Tokens per block.

    Returns:
        ``(batch, seq)`` float32 losses.

    Raises:
        ConfigError: ``chunk_size`` is not a positive int.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size!r} must be an int >= 1 (tokens per logits block)")
    batch, seq = labels.shape
    # (batch, seq - 1, d) -> (tokens, d) and (batch, seq - 1) -> (tokens,)
    hidden = hidden_states[:, :-1, :].reshape(-1, hidden_states.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    losses = hidden.new_zeros(targets.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = lm_head(hidden[start : start + chunk_size]).float()  # (block, vocab)
        block_targets = targets[start : start + chunk_size]
        losses[start : start + chunk_size] = F.cross_entropy(
            logits, block_targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
    # (tokens,) -> (batch, seq - 1) -> (batch, seq): the last position has no target
    return F.pad(losses.view(batch, seq - 1), (0, 1))


@torch.no_grad()
def chunked_lm_eval(model: nn.Module, inputs: dict, chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation of a causal LM on a batch without the full logits: ``(loss, per-token losses)``.

    Args:
        model: A Hugging Face causal LM (see `causal_lm_hidden_and_head`).
        inputs: The batch; ``labels`` is required, other keys go to the decoder.
        chunk_size: Tokens per logits block.

    Returns:
        The mean loss over the counted tokens (the model's own loss; 0 with none) and the
        ``(batch, seq)`` per-token losses of `chunked_token_nll`.
    """
    decoder, head = causal_lm_hidden_and_head(model)
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    hidden = decoder(**kwargs, use_cache=False).last_hidden_state
    labels = inputs["labels"]
    nll = chunked_token_nll(hidden, head, labels, chunk_size)
    counted = (labels[:, 1:] != IGNORE_INDEX).sum()
    loss = nll.sum() / counted.clamp(min=1).to(nll.device, torch.float32)
    return loss, nll
