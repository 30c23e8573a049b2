"""The torchrun process group: joining it, leaving it, waiting for the other ranks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from objkit.contract.interfaces import WorldInfo
from objkit.distributed.processes import die_with_launcher


def env_world() -> WorldInfo:
    """Rank and world size as torchrun sets them (``RANK``, ``WORLD_SIZE``), without joining a group."""
    return WorldInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


def init_distributed(device: torch.device | None = None, timeout: float | None = None) -> WorldInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1``: NCCL for a CUDA ``device``, else
    gloo; a collective waits at most ``timeout`` seconds (``train.collective_timeout``). The
    process dies with its launcher (:func:`objkit.distributed.processes.die_with_launcher`)."""
    world = env_world()
    if world.world_size <= 1:
        return WorldInfo()
    import datetime

    import torch.distributed as dist

    die_with_launcher()
    if not dist.is_initialized():
        on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
        wait = datetime.timedelta(seconds=timeout) if timeout is not None else None
        dist.init_process_group(backend="nccl" if on_cuda else "gloo", timeout=wait)
    return WorldInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


@contextlib.contextmanager
def process_group(device: torch.device | None = None, timeout: float | None = None) -> Iterator[WorldInfo]:
    """The one owner of the torchrun process group: joins it on entry (:func:`init_distributed`;
    nothing to join with one process), yields this process's :class:`WorldInfo`, and leaves it on
    exit, however the block ends. ``objkit run`` trains, evaluates and exports inside it."""
    world = init_distributed(device, timeout)
    try:
        yield world
    except BaseException:
        shutdown_distributed(wait_for_peers=False)  # another rank may be gone: no barrier
        raise
    shutdown_distributed()


# How long the backend's worker threads get the interpreter to themselves once the group is gone.
_DRAIN_SECONDS = 0.1


def shutdown_distributed(wait_for_peers: bool = True) -> None:
    """Leave the process group (if this process joined one). ``wait_for_peers``: a barrier
    first, on a normal exit (not after a fault: a rank that died would hold the others there
    for the collective timeout).

    Why more than ``destroy_process_group``: gloo's worker threads drop each finished
    collective on their own thread, and dropping a tensor that Python has seen takes the GIL.
    Torch's DTensor caches keep the group (and its threads) alive past ``destroy_process_group``,
    so a worker still waiting for the GIL when the interpreter starts to finalize is killed
    there, and C++ aborts the process ("terminate called without an active exception", exit
    -6: a run that finished reported as failed by torchrun; 3 in 190 two-rank FSDP resumes on
    2 CPU cores). The barrier's wait and a short sleep afterwards release the GIL, so the
    workers can finish dropping their last collectives before the process exits. That narrows
    the window rather than closing it: torch offers no way to wait until its workers are idle."""
    import time

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if wait_for_peers:
        dist.barrier()
    dist.destroy_process_group()
    time.sleep(_DRAIN_SECONDS)


def barrier(world: WorldInfo, group: Any = None) -> None:
    """Every rank waits for the others (``group``: a process group other than the default)."""
    if world.world_size > 1:
        import torch.distributed as dist

        dist.barrier(group=group)


@contextlib.contextmanager
def main_process_first(world: WorldInfo) -> Iterator[None]:
    """Rank 0 runs the block first (filling caches: tokenized data), the others after it."""
    if not world.is_main:
        barrier(world)
    yield
    if world.is_main:
        barrier(world)


__all__ = ["barrier", "env_world", "init_distributed", "main_process_first", "process_group", "shutdown_distributed"]
