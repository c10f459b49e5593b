"""Data-parallel support: identical pruning decisions on every rank, and DDP after shape changes.

Under ``torch.distributed`` every rank sees a different slice of the batch, so the per-channel
activation and gradient sums of the salience hooks differ between ranks. They are all-reduced
(summed) before any score is computed, which makes every rank's scores, keep-sets and masks equal to
those of one process that saw the whole global batch. A checksum of the kept blocks is compared
across ranks at every pruning event.

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

__all__ = [
    "all_reduce_gradients_",
    "all_reduce_salience_stats_",
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


def all_reduce_salience_stats_(collector) -> None:
    """Sum the salience statistics of every site over all ranks (in place; no-op in one process)."""
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
    offset = 0
    for key in keys:
        stats = collector.stats[key]
        for name in ("act_abs", "grad_abs", "act_sum"):
            tensor = getattr(stats, name)
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()
        stats.tokens = int(flat[offset].item())
        stats.backward_calls = int(flat[offset + 1].item())
        offset += 2


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
