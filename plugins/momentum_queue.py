"""``momentum_queue``: MoCo's queue of negative keys (He et al., CVPR 2020), as InfoXLM uses it.

A ring buffer of ``size`` keys × d (reference: 131,072), fp32 whatever the autocast dtype,
written in place with slice assignment -- the cost of an enqueue depends on the number of
keys written, never on ``size`` (no ``torch.cat`` of the buffer). Keys are gathered from
all ranks before the write, so every rank holds the same queue; ranks may contribute
different numbers of keys (sizes are all-gathered, keys padded to the largest, gathered,
trimmed). With one process no ``torch.distributed`` call is made. The gather function is
an attribute (``store.all_gather``) so tests can substitute a fake world.

``ready`` (with ``fill_before_start = true``, the reference behaviour) is False until
``size`` keys have been written; the objective then skips its loss and only enqueues.
``negatives()`` returns the filled part only.

Writes are staged: keys passed to :meth:`enqueue` are written on the next call to
:meth:`negatives`, :meth:`flush` or :meth:`state_dict`. A tensor returned by ``negatives``
is thus never modified in place before the backward pass of the loss built from it, which
lets the loss use a view of the buffer instead of the reference's per-step
``queue.clone()`` (400 MB for base).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from objkit import (
    PLUGIN_API_VERSION,
    AllGather,
    NegativeStore,
    PluginConfig,
    WorldInfo,
    dist_all_gather,
    gather_rows,
    hookimpl,
)


class MomentumQueueConfig(PluginConfig):
    size: int = Field(131_072, gt=0, description="keys kept (reference: 131,072)")
    fill_before_start: bool = Field(True, description="no loss until the queue is full (reference)")


class MomentumQueue(NegativeStore):
    name: ClassVar[str] = "momentum_queue"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[MomentumQueueConfig]] = MomentumQueueConfig
    accepts_gathered_keys: ClassVar[bool] = True

    def __init__(self, config: MomentumQueueConfig, dim: int, device: torch.device, world: WorldInfo) -> None:
        super().__init__(config, dim, device, world)
        self.config: MomentumQueueConfig = config
        self.size = config.size
        self.buffer = torch.zeros(self.size, dim, dtype=torch.float32, device=device)
        self.pointer = 0
        self.filled = 0  # keys ever written (the reference's enqueue_cnt)
        self._staged: list[torch.Tensor] = []
        self._staged_count = 0
        self.all_gather: AllGather | None = dist_all_gather if world.world_size > 1 else None

    # ----------------------------------------------------------------- NegativeStore API
    @property
    def ready(self) -> bool:
        if not self.config.fill_before_start:
            return True
        return self.filled + self._staged_count >= self.size

    def negatives(self, current_keys: torch.Tensor,
                  gathered: tuple[torch.Tensor, list[int]] | None = None) -> torch.Tensor:
        self.flush()
        return self.buffer[: min(self.filled, self.size)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, gathered: tuple[torch.Tensor, list[int]] | None = None) -> None:
        if gathered is not None:  # every rank's keys, gathered once by the objective
            keys = gathered[0]
        keys = keys.detach().to(torch.float32)
        if gathered is None and self.all_gather is not None:
            keys = gather_rows(keys, self.all_gather)[0]
        self._staged.append(keys)
        self._staged_count += keys.shape[0]

    @torch.no_grad()
    def flush(self) -> None:
        """Write staged keys into the ring buffer."""
        staged, self._staged, self._staged_count = self._staged, [], 0
        for keys in staged:
            self._write(keys)

    def _write(self, keys: torch.Tensor) -> None:
        count = keys.shape[0]
        if count >= self.size:  # more keys than slots: the newest ``size`` survive
            keys, skipped = keys[-self.size :], count - self.size
            self.pointer = (self.pointer + skipped) % self.size
            self.filled += skipped
            count = self.size
        head = min(count, self.size - self.pointer)
        self.buffer[self.pointer : self.pointer + head] = keys[:head]
        if count > head:
            self.buffer[: count - head] = keys[head:]
        self.pointer = (self.pointer + count) % self.size
        self.filled += count

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {"buffer": self.buffer, "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        buffer = state["buffer"]
        if tuple(buffer.shape) != tuple(self.buffer.shape):
            raise ValueError(
                f"momentum_queue: saved queue is {tuple(buffer.shape)}, configured {tuple(self.buffer.shape)}"
            )
        self._staged, self._staged_count = [], 0
        self.buffer.copy_(buffer)
        self.pointer = int(state["pointer"])
        self.filled = int(state["filled"])

    def nbytes(self) -> int:
        return self.size * self.dim * 4


@hookimpl
def objkit_plugins() -> list[type]:
    return [MomentumQueue]
