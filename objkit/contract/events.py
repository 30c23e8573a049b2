"""Trainer events: the ``callback`` plugin kind and the dispatcher the trainer fires.

The trainer fires, in this order, on every rank:

* ``on_fit_start(state)`` once, after resuming (``state.step`` is where training starts);
* per optimizer step: ``on_log(state, record)`` when ``train.log_every`` says so (the record
  written to ``metrics.jsonl``: step, lr, losses, tok/s), then ``on_step_end(state, stats)``
  (the step's own values: ``grad_norm``, ``<objective>/loss`` sums..., as 0-dim device tensors
  where the step left them there: reading one waits for the device, so read them in ``on_log``'s
  record, which is reduced and on the host, unless a value is needed every step), during which periodic
  evaluation may report ``on_eval(state, results)``, then ``on_checkpoint(state, path)`` after
  a checkpoint (``path`` is None on ranks other than 0, which do not write);
* ``on_fit_end(state)`` once, also when training stops early or fails (then ``state.error``
  holds the exception).

objkit's own reporting is built on these events: the progress bar, ``metrics.jsonl`` and
TensorBoard (:mod:`objkit.train.reporting`) and periodic evaluation (``[eval]``). A recipe adds a
third party's callback with a ``[callbacks.NAME]`` table (``plugin = "..."`` when NAME is not the
plugin's name; the other keys go to its ``Config``). Callbacks observe: they must not change the
model, the optimizer or the data, so a recipe's ``callbacks`` may change between a run and its
resumption.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from objkit.contract.interfaces import Encoder, Plugin, PluginConfig, WorldInfo


@dataclass
class FitState:
    """What callbacks see of the run (the trainer updates it in place). (API 1.2)"""

    run_dir: Path
    total_steps: int
    world: WorldInfo
    encoder: Encoder
    tokenizer: Any
    step: int = 0
    """Completed optimizer steps."""
    stopped_by: str | None = None
    """The signal that ended the run early, once known."""
    error: BaseException | None = None
    """Set for ``on_fit_end`` when training failed."""
    device: torch.device | None = None
    """The device the encoder trains on. (API 1.6)"""
    _report_eval: Callable[[dict[str, float]], None] | None = field(default=None, repr=False)
    _full_weights: Callable[[str], contextlib.AbstractContextManager[Any]] | None = field(default=None, repr=False)

    def full_weights(self, on: Literal["every_rank", "main"] = "every_rank") -> contextlib.AbstractContextManager[Any]:
        """The encoder with its full weights, under any parallel strategy: a context every rank
        must enter together (a collective under FSDP), e.g. from ``on_step_end``. (API 1.6)

        ``"every_rank"``: the training encoder itself, on every rank, its FSDP shards gathered for
        the block (resharded after); ``"main"``: a full copy on rank 0 (the training encoder itself
        without FSDP), None on the other ranks, which wait at the block's end until rank 0 is done.
        Read-only either way: evaluate, save, copy; never train it. Run under
        ``torch.inference_mode()`` or ``no_grad`` for what needs no gradients."""
        if self._full_weights is None:
            return contextlib.nullcontext(self.encoder if on == "every_rank" or self.world.is_main else None)
        return self._full_weights(on)

    def report_eval(self, results: dict[str, float]) -> None:
        """Send evaluation results to every callback's ``on_eval`` (and so to the metrics)."""
        if self._report_eval is not None and results:
            self._report_eval(results)


class Callback(Plugin):
    """A trainer callback (plugin kind ``callback``): override the events you need. Built with
    its validated ``Config`` only; runs on every rank (``state.world.is_main`` for rank 0). (API 1.2)"""

    Config: ClassVar[type[PluginConfig]] = PluginConfig

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config

    def on_fit_start(self, state: FitState) -> None:
        """Training starts (or resumes) at ``state.step``."""

    def on_log(self, state: FitState, record: dict[str, float]) -> None:
        """A metrics record (``step``, ``lr``, ``<objective>/loss``, ``tok/s``...), reduced over ranks."""

    def on_step_end(self, state: FitState, stats: dict[str, float | torch.Tensor]) -> None:
        """An optimizer step finished; ``state.step`` counts it. ``stats`` may hold 0-dim device
        tensors (reading one is a host synchronisation)."""

    def on_eval(self, state: FitState, results: dict[str, float]) -> None:
        """Evaluation results (``eval/<set>/acc``...) at ``state.step``."""

    def on_checkpoint(self, state: FitState, path: Path | None) -> None:
        """A checkpoint of ``state.step`` was written (``path``; None on ranks other than 0). With
        ``train.checkpoint_async`` it comes when the checkpoint is complete: at the next checkpoint
        or the end of training, ``state.step`` then later than the step in ``path``'s name."""

    def on_fit_end(self, state: FitState) -> None:
        """Training ended: finished, stopped by a signal (``state.stopped_by``) or failed (``state.error``)."""


class Events:
    """Fires each event on every callback, in order (objkit's built-ins first, then the recipe's)."""

    def __init__(self, callbacks: Sequence[Callback], state: FitState) -> None:
        self.callbacks = list(callbacks)
        self.state = state
        state._report_eval = self.eval

    def fit_start(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(self.state)

    def log(self, record: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_log(self.state, record)

    def step_end(self, stats: dict[str, float | torch.Tensor]) -> None:
        for cb in self.callbacks:
            cb.on_step_end(self.state, stats)

    def eval(self, results: dict[str, float]) -> None:
        for cb in self.callbacks:
            cb.on_eval(self.state, results)

    def checkpoint(self, path: Path | None) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(self.state, path)

    def fit_end(self) -> None:
        """Every callback's ``on_fit_end``, even when one of them fails (the first error is raised)."""
        first: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.on_fit_end(self.state)
            except BaseException as exc:  # noqa: BLE001 -- close the others, then re-raise
                first = first or exc
        if first is not None:
            raise first
