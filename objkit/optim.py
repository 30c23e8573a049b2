"""Optimizers and learning-rate schedules as plugins (kinds ``optimizer`` and ``schedule``).

A recipe names them: ``[train.optimizer] name = "adamw"`` (the table's other keys go to the
optimizer's ``Config``) and ``train.schedule = "linear"``. Built in: ``adamw`` (torch's AdamW,
the fused kernel where torch has one), and the schedules ``linear`` (warmup, then linear decay
to 0 at ``train.steps``: BERT's, RoBERTa's, XLM-R's), ``constant`` (warmup, then constant) and
``cosine`` (warmup, then half a cosine to 0), all from transformers. A third party adds others
through the ``objkit`` entry points like any plugin.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import Field

from objkit.hookspecs import PLUGIN_API_VERSION, hookimpl
from objkit.interfaces import Plugin, PluginConfig


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


class AdamWConfig(PluginConfig):
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)


def adamw_kernel(params: list[torch.Tensor]) -> dict[str, bool]:
    """AdamW's implementation: ``fused=True`` where torch has the fused kernel for every parameter
    (CUDA, and CPU since torch 2.4), else torch's default.

    On CPU torch's default is a Python loop over parameters of about ten elementwise kernels
    each, with full-size temporaries (``sqrt``, ``div``: 1 GB each for XLM-R large's embedding);
    the fused kernel makes one pass over each parameter and its state. Measured by
    ``benchmarks/run.py`` (the optimizer was a third of an MLM step of the XLM-R-base shape)."""
    if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params):
        return {"fused": True}
    return {}


class AdamW(Optimizer):
    """Decoupled weight decay Adam (Loshchilov & Hutter, 2019), torch's implementation; defaults
    are RoBERTa's / XLM-R's (betas 0.9, 0.98; eps 1e-6; weight decay 0.01 on every parameter)."""

    name: ClassVar[str] = "adamw"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config: ClassVar[type[AdamWConfig]] = AdamWConfig

    @classmethod
    def build(cls, params: list[torch.nn.Parameter], lr: float, config: AdamWConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, betas=config.betas, eps=config.eps,
                                 weight_decay=config.weight_decay, **adamw_kernel(params))


class _TransformersSchedule(Schedule):
    """A schedule transformers already has, built by ``transformers.get_scheduler(hf_name, ...)``."""

    hf_name: ClassVar[str]
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION

    @classmethod
    def build(cls, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
              config: Any) -> torch.optim.lr_scheduler.LRScheduler:
        from transformers import get_scheduler

        return get_scheduler(cls.hf_name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


class Linear(_TransformersSchedule):
    """Linear warmup to the peak, then linear decay to 0 at the last step."""

    name: ClassVar[str] = "linear"
    hf_name: ClassVar[str] = "linear"


class Constant(_TransformersSchedule):
    """Linear warmup to the peak, then constant."""

    name: ClassVar[str] = "constant"
    hf_name: ClassVar[str] = "constant_with_warmup"


class Cosine(_TransformersSchedule):
    """Linear warmup to the peak, then half a cosine down to 0 at the last step."""

    name: ClassVar[str] = "cosine"
    hf_name: ClassVar[str] = "cosine"


@hookimpl
def objkit_plugins() -> list[type]:
    return [AdamW, Linear, Constant, Cosine]
