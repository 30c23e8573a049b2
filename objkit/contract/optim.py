"""The plugin kinds ``optimizer`` and ``schedule`` (plugin API 1.2): what an optimizer or a
learning-rate schedule plugin implements. The kinds only: the built-in plugins are
``objkit_plugins.adamw`` (``adamw``) and ``objkit_plugins.schedules`` (``linear``,
``constant``, ``cosine``), registered through the ``objkit`` entry points like a third party's.

A recipe names them: ``[train.optimizer] name = "adamw"`` (the table's other keys go to the
optimizer's ``Config``) and ``train.schedule = "linear"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from objkit.contract.interfaces import Plugin


class Optimizer(Plugin, ABC):
    """Plugin kind ``optimizer``: builds a ``torch.optim.Optimizer`` over the trained parameters. (API 1.2)"""

    @classmethod
    @abstractmethod
    def build(cls, params: list[torch.nn.Parameter], lr: float, config: Any) -> torch.optim.Optimizer:
        """The optimizer at peak learning rate ``lr`` (the schedule scales it) with the validated ``config``."""


class Schedule(Plugin, ABC):
    """Plugin kind ``schedule``: a ``torch.optim.lr_scheduler.LRScheduler`` stepped once per
    optimizer step (also on skipped steps). Its ``state_dict`` goes into checkpoints. (API 1.2)"""

    @classmethod
    @abstractmethod
    def build(cls, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
              config: Any) -> torch.optim.lr_scheduler.LRScheduler:
        """The schedule over ``total_steps`` optimizer steps, the first ``warmup_steps`` warming up."""
