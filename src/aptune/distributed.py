"""Data-parallel support: identical pruning decisions on every rank, and DDP after shape changes.

Under ``torch.distributed`` every rank sees a different slice of the batch, so the per-channel
activation and gradient sums of the salience hooks differ between ranks. During tuning they are
all-reduced (activations summed, gradients averaged as DDP averages them) before any score is
computed, which makes every rank's scores, keep-sets and masks equal to those of one process that
saw the whole global batch. The calibration pass before tuning scores every micro-batch on its own
rank and sums the scores over ranks once, which equals one process scoring the same micro-batches.
A checksum of the kept blocks is compared across ranks at every pruning event.

DistributedDataParallel registers every parameter's shape when it is built; after in-place surgery
or rank growth its gradient buckets no longer fit. `rebuild_ddp_` rebuilds the reducer of the
*same* DDP object (the steps torch itself runs when a DDP module is unpickled), so a training loop
that holds the wrapper keeps working. FSDP is not supported: it shards flattened parameters, which
cannot change shape in place.
"""

from __future__ import annotations

import gc
import hashlib

import torch
import torch.distributed as dist

from aptune.errors import ConfigError

__all__ = [
    "all_reduce_gradients_",
    "all_reduce_salience_",
    "all_reduce_salience_stats_",
    "calibration_share",
    "check_same_on_all_ranks",
    "close_process_group",
    "exclude_from_ddp_",
    "is_distributed",
    "rebuild_ddp_",
]


def is_distributed() -> bool:
    """Whether a process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def close_process_group() -> None:
    """Wait for every rank, then shut the default process group down (no-op when none is active).

    For entry points that own the process (the CLI): a gloo group left to the interpreter's exit
    can abort the process while its worker threads are still being torn down.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def calibration_share(total: int, world_size: int, rank: int) -> int:
    """This process's number of calibration examples when ``world_size`` processes share ``total``.

    The shares differ by at most one and sum to ``total``; since the salience statistics are summed
    over the processes, a data-parallel calibration pass sees as many examples as one process does.

    Raises:
        ConfigError: ``total`` is below ``world_size``, which would leave a process with none.
    """
    if total < world_size:
        raise ConfigError(
            f"calibration_samples={total} is fewer than the {world_size} processes, so some would "
            f"calibrate on nothing: set calibration_samples to at least {world_size}"
        )
    return total // world_size + (1 if rank < total % world_size else 0)


def all_reduce_salience_stats_(collector) -> None:
    """Reduce the salience statistics of every site over all ranks (in place; no-op in one process).

    Activation sums and counts are summed. Gradient sums are averaged: each rank's loss is the
    mean over its own slice, so its gradients are ``world_size`` times its share of the global
    batch's (DDP averages the parameter gradients for the same reason).
    """
    if not is_distributed() or not collector.stats:
        return
    keys = sorted(collector.stats, key=repr)
    parts = []
    for key in keys:
        stats = collector.stats[key]
        counts = torch.tensor([float(stats.tokens), float(stats.backward_calls)], device=stats.act_abs.device)
        parts += [stats.act_abs, stats.grad_abs, stats.act_sum, counts]
    # one collective for all sites: concatenate, reduce, split back
    flat = torch.cat([p.float().reshape(-1) for p in parts])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    world = dist.get_world_size()
    offset = 0
    for key in keys:
        stats = collector.stats[key]
        for name in ("act_abs", "grad_abs", "act_sum"):
            tensor = getattr(stats, name)
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            if name == "grad_abs":
                tensor.div_(world)
            offset += tensor.numel()
        stats.tokens = int(flat[offset].item())
        stats.backward_calls = int(flat[offset + 1].item())
        offset += 2


def all_reduce_salience_(salience):
    """A `aptune.scores.Salience` summed over all ranks (the same object in one process).

    The calibration pass sums one score per micro-batch on every rank and reduces the totals once,
    so its result is that of one process scoring the same micro-batches in turn.
    """
    if not is_distributed():
        return salience
    parts = [t for t in (*salience.heads, *salience.neurons, salience.hidden) if t is not None]
    if not parts:
        return salience
    # gloo reduces CPU tensors, NCCL only those on the rank's GPU
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    flat = torch.cat([p.float().reshape(-1) for p in parts]).to(device or parts[0].device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    reduced = iter(flat.split([p.numel() for p in parts]))

    def back(tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        return next(reduced).view_as(tensor).to(device=tensor.device, dtype=tensor.dtype)

    heads = [back(t) for t in salience.heads]
    neurons = [back(t) for t in salience.neurons]
    return salience._replace(heads=heads, neurons=neurons, hidden=back(salience.hidden))


def check_same_on_all_ranks(tensors: list[torch.Tensor], what: str) -> str:
    """Checksum of ``tensors``; raises if another rank has a different one.

    Returns:
        The hex checksum (also in one process, for logging).
    """
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    checksum = digest.hexdigest()[:16]
    if is_distributed():
        gathered: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, checksum)
        if len(set(gathered)) != 1:
            raise RuntimeError(f"ranks disagree on {what}: checksums {gathered}")
    return checksum


def rebuild_ddp_(wrapper) -> bool:
    """Rebuild the gradient reducer of a DDP wrapper after its module's parameters changed shape.

    Returns:
        True when ``wrapper`` was a DDP module and was rebuilt.
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(wrapper, DistributedDataParallel):
        return False
    # The old reducer (and the logger that refers to it) hold the parameters' gradient accumulators,
    # which remember the old shapes; they must be gone before the new reducer asks for accumulators.
    wrapper.reducer = None
    wrapper.logger = None
    gc.collect()
    parameters, expect_sparse_gradient = wrapper._build_params_for_reducer()
    mapping = wrapper._build_debug_param_to_name_mapping(parameters)
    wrapper._ddp_init_helper(parameters, expect_sparse_gradient, mapping, wrapper.static_graph)
    return True


def exclude_from_ddp_(model: torch.nn.Module, prefix: str) -> list[str]:
    """Keep the parameters under ``prefix`` out of DDP's reducer (call before the model is wrapped).

    The distillation transform is used in the loss, outside the model's forward, which DDP's
    reducer cannot track; its gradients are averaged by `all_reduce_gradients_` instead.

    Returns:
        The names of the excluded parameters.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = [name for name, _ in model.named_parameters() if name.startswith(prefix)]
    if names:
        existing = list(getattr(model, "_ddp_params_and_buffers_to_ignore", []))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, existing + names)
    return names


def all_reduce_gradients_(parameters) -> None:
    """Average the gradients of ``parameters`` over all ranks (no-op in one process)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad.div_(world)
