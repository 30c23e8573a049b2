"""Collectives objkit uses, each a no-op with one process: gathers (with gradients, for
in-batch negatives across ranks), sums, object exchange, and agreement on flags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from objkit.contract.interfaces import WorldInfo

AllGather = Callable[[torch.Tensor], list[torch.Tensor]]
"""``all_gather(local)`` -> the same-shaped tensor from every rank, in rank order."""


def dist_all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``torch.distributed.all_gather`` of a same-shaped tensor: every rank's, in rank order
    (an :data:`AllGather`; call it only when ``world_size > 1``)."""
    import torch.distributed as dist

    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


class _GatheredWithGrad(torch.autograd.Function):
    """``rows`` -> the gathered rows (computed already); backward sums the gathered rows'
    gradient over ranks and returns this rank's slice, so each rank's rows get the gradient of
    every rank's loss (what ``torch.distributed.nn.all_gather`` does)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, gathered: torch.Tensor, offset: int, all_gather: AllGather) -> torch.Tensor:
        ctx.offset, ctx.count, ctx.all_gather = offset, rows.shape[0], all_gather
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        total = torch.stack(ctx.all_gather(grad.contiguous())).sum(dim=0)
        return total[ctx.offset : ctx.offset + ctx.count], None, None, None


def gather_rows(
    rows: torch.Tensor, all_gather: AllGather | None = None, *, rank: int | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's ``rows [n_r, ...]`` in rank order; ``n_r`` may differ per rank
    (sizes are all-gathered first, rows padded to the largest, gathered, trimmed). Returns the
    rows and the per-rank counts (this rank's rows start at ``sum(counts[:rank])``).

    ``all_gather`` defaults to :func:`dist_all_gather` (``torch.distributed``); tests pass a
    fake one to simulate ranks. Without ``rank`` the result carries no gradient (keys from a
    momentum encoder). With ``rank`` (this process's rank) the result is differentiable with
    respect to ``rows``, and the gradient is complete: the backward pass all-gathers the
    gradient of the whole gathered tensor and sums it, so this rank's rows receive the
    gradient of every rank's loss (every rank must then run its backward pass, as DDP does).
    With DDP's gradient averaging and objkit's loss scaling this gives the gradient of one
    process holding the whole global batch (in-batch negatives across ranks)."""
    gather = all_gather or dist_all_gather
    with torch.no_grad():
        size = torch.tensor([rows.shape[0]], dtype=torch.long, device=rows.device)
        sizes = [int(s.item()) for s in gather(size)]
        padded = rows.detach().new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows.detach()
        parts = [part[:n] for part, n in zip(gather(padded), sizes, strict=True)]
        if rank is not None:
            parts[rank] = rows.detach()
        gathered = torch.cat(parts, dim=0)
    if rank is not None and rows.requires_grad:
        gathered = _GatheredWithGrad.apply(rows, gathered, sum(sizes[:rank]), gather)
    return gathered, sizes


def all_reduce_sum(tensor: torch.Tensor, world: WorldInfo) -> torch.Tensor:
    """Element-wise sum over ranks (the tensor itself with one process)."""
    if world.world_size > 1:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


def all_gather_objects(obj: Any, world: WorldInfo, group: Any = None) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``group``: a process group other than the default)."""
    if world.world_size <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world.world_size
    dist.all_gather_object(out, obj, group=group)
    return out


def broadcast_from_main(obj: Any, world: WorldInfo) -> Any:
    """Rank 0's picklable ``obj`` on every rank (what the other ranks pass is ignored)."""
    if world.world_size <= 1:
        return obj
    import torch.distributed as dist

    box = [obj if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(world: WorldInfo, *flags: bool, device: torch.device | None = None) -> list[bool]:
    """Each flag OR-ed over all ranks (one small all-reduce on ``device``; none with a single
    process), so every rank skips the same updates and stops after the same step."""
    if world.world_size <= 1:
        return [bool(f) for f in flags]
    import torch.distributed as dist

    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor([float(bool(f)) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


__all__ = ["AllGather", "agree", "all_gather_objects", "all_reduce_sum", "broadcast_from_main", "dist_all_gather",
           "gather_rows"]
