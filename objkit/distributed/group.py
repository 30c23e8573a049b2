"""The torchrun process group: joining it, leaving it, waiting for the other ranks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from objkit.interfaces import WorldInfo
from objkit.processes import die_with_launcher


def env_world() -> WorldInfo:
    """Rank and world size as torchrun sets them (``RANK``, ``WORLD_SIZE``), without joining a group."""
    return WorldInfo(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")))


def init_distributed(device: torch.device | None = None, timeout: float | None = None) -> WorldInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1``: NCCL for a CUDA ``device``, else
    gloo; a collective waits at most ``timeout`` seconds (``train.collective_timeout``). The
    process dies with its launcher (:func:`objkit.processes.die_with_launcher`)."""
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
    finally:
        shutdown_distributed()


def shutdown_distributed() -> None:
    """Leave the process group (if this process joined one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
