"""The built-in optimizer ``adamw``: torch's AdamW, the fused kernel where torch has one.

A recipe names it (the default) with ``[train.optimizer] name = "adamw"``; the table's other
keys are :class:`AdamWConfig`'s. Written against the public API only, like a third party's
optimizer plugin (docs/plugin-api.md, kind ``optimizer``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from objkit import PLUGIN_API_VERSION, Optimizer, PluginConfig, hookimpl


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
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[AdamWConfig]] = AdamWConfig

    @classmethod
    def build(cls, params: list[torch.nn.Parameter], lr: float, config: AdamWConfig) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=lr, betas=config.betas, eps=config.eps,
                                 weight_decay=config.weight_decay, **adamw_kernel(params))


@hookimpl
def objkit_plugins() -> list[type]:
    return [AdamW]
