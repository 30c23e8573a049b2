"""The built-in learning-rate schedules, all from transformers: ``linear`` (warmup, then linear
decay to 0 at ``train.steps``: BERT's, RoBERTa's, XLM-R's; the default), ``constant`` (warmup,
then constant) and ``cosine`` (warmup, then half a cosine to 0).

A recipe names one with ``train.schedule = "NAME"``. Written against the public API only, like
a third party's schedule plugin (docs/plugin-api.md, kind ``schedule``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from objkit import PLUGIN_API_VERSION, Schedule, hookimpl


class _TransformersSchedule(Schedule):
    """A schedule transformers already has, built by ``transformers.get_scheduler(hf_name, ...)``."""

    hf_name: ClassVar[str]
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API

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
    return [Linear, Constant, Cosine]
