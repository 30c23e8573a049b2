"""The parallel strategy of a run: one process, DDP or FSDP2 (:mod:`objkit.distributed.fsdp`).

``torchrun --standalone --nproc_per_node N -m objkit run RECIPE -o DIR`` starts N processes;
each joins the process group (NCCL on CUDA, gloo on CPU) and trains the same replicated (DDP)
or sharded (FSDP2, ``train.parallelism = "fsdp"``) model on its slice of every step's global
batch. With one process nothing here touches ``torch.distributed``.

A :class:`ParallelStrategy` owns everything that differs between these layouts: the forward
pass through the wrapped module, gradient synchronisation, the gradient norm, agreement
between ranks on flags (a non-finite step, a stop request), full weights for evaluation, and
the gather / load of checkpoints. The step (:mod:`objkit.train.step`, which names the points it is
called at) and the trainer call only it.

**One module, one forward per objective.** DDP and FSDP only see what happens inside the
wrapped module's ``forward``: DDP's reducer learns there which parameters a backward pass
will reach, FSDP gathers sharded weights there. Objectives call their encoder in several
ways (``encoder(...)``, ``encoder.lm_logits(...)``, a truncated ``encoder(..., up_to_layer=L)``),
so :class:`StepModule` wraps the encoder *and* every objective's trainable modules (XLCO's
projection, a learnable temperature), and its ``forward`` runs whole
``Objective.compute`` calls. Every use of a trained parameter therefore happens inside the
wrapper's forward, and its gradient hooks fire.

**One gradient synchronisation per optimizer step.** The composite runs one backward pass
per objective and micro-batch; all but the step's last backward run under DDP's
``no_sync()`` (FSDP: ``set_requires_gradient_sync(False)``), so gradients accumulate locally
and are all-reduced (reduce-scattered) once, in the last backward. Which backward is last
comes from :meth:`objkit.Objective.has_loss`, asked before the step's first forward (an
objective filling its queue produces no backward at all).

**Unused parameters, declared.** A backward of XLCO reaches neither the LM head nor the
blocks past its ``layer``; the last backward of a step may be XLCO's, and DDP then must not
wait for those gradients. Objectives declare it (``Objective.uses_all_parameters`` is
False), and DDP is built with ``find_unused_parameters=True`` only when some objective does,
or when several objectives run and one owns trainable modules the others never touch.
DDP then marks such parameters ready itself and, since it tracks which parameters were used
in the ``no_sync`` backward passes of the step, still all-reduces the gradients that MLM or TLM
accumulated in them. No ``0 * loss`` touches unused parameters. FSDP2 needs nothing: it
reduce-scatters the accumulated gradients of groups the last backward did not reach.

**Gradients are sums over ranks.** DDP and FSDP average gradients over ranks; the composite
multiplies each loss by the world size and divides it by the step's global unit count, so
the gradient is exactly that of one process computing the whole global batch.

**FSDP2.** ``fully_shard`` is applied to each block of the encoder
(:meth:`objkit.Encoder.shard_units`), then to :class:`StepModule`; objectives then shard
their momentum copies block by block in the same way (:meth:`objkit.Objective.shard`), so
the EMA pairs local shards of equal shape and never gathers weights. The model is built
replicated and then sharded (one fp32 copy of the weights must fit on each device; the
optimizer state, gradients and training-time weights are sharded). fp16 with a gradient scaler is
refused under FSDP (use bf16). Checkpoints and the export gather full tensors to rank 0 and
have the same format as with DDP; only the optimizer state is keyed by parameter name.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from objkit.distributed.collectives import agree, all_reduce_sum
from objkit.distributed.group import barrier
from objkit.contract.errors import UserError
from objkit.contract.interfaces import Encoder, Objective, ObjectiveOutput, StepContext, WorldInfo


class StepModule(nn.Module):
    """What DDP / FSDP wrap: the encoder and every objective's trainable modules. ``forward``
    runs ``Objective.compute`` for each ``(objective, batch)`` task, so that every use of a
    trained parameter happens inside the wrapper's forward (see the module docstring)."""

    def __init__(self, encoder: Encoder, objectives: Sequence[Objective]) -> None:
        super().__init__()
        self.encoder = encoder
        heads = {
            f"{objective.instance_name}__{key}".replace(".", "_"): module
            for objective in objectives
            for key, module in objective.trainable_modules().items()
        }
        self.heads = nn.ModuleDict(heads)

    def forward(
        self, tasks: Sequence[tuple[Objective, dict[str, torch.Tensor]]], ctx: StepContext,
        before_compute: Callable[[Objective], None] | None = None,
    ) -> list[tuple[torch.Tensor, int, dict[str, float]]]:
        """``before_compute``: called with each objective before its ``compute``, inside the
        wrapped forward (the step's ``before_compute`` point, :mod:`objkit.train.step`)."""
        # plain tuples: DDP finds the loss tensors in them (it does not look into dataclasses
        # when it wraps outputs for unused-parameter detection)
        outputs = []
        for objective, batch in tasks:
            if before_compute is not None:
                before_compute(objective)
            out = objective.compute(batch, ctx)
            outputs.append((out.loss, out.sample_size, out.metrics))
        return outputs


def needs_find_unused(objectives: Sequence[Objective]) -> bool:
    """DDP's ``find_unused_parameters``: needed when a backward pass may leave a wrapped
    parameter without a gradient -- an objective declares it (truncated encoder, no LM head),
    or several objectives run and one owns trainable modules (unused by the others)."""
    partial = any(not o.uses_all_parameters for o in objectives)
    heads = len(objectives) > 1 and any(o.trainable_modules() for o in objectives)
    return partial or heads


class ParallelStrategy:
    """One process: objectives run through :class:`StepModule`, nothing is synchronised. The
    base of :class:`DDPStrategy` and :class:`objkit.distributed.fsdp.FSDPStrategy`, which the
    trainer and the step engine use alike."""

    mode = "single"

    def __init__(self, encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo) -> None:
        self.encoder = encoder
        self.world = world
        self.module = StepModule(encoder, objectives)

    @property
    def wrapped(self) -> nn.Module:
        """The module forward passes go through."""
        return self.module

    def parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates: the encoder's parameters, then the objectives' trainable ones."""
        return [p for p in self.module.parameters() if p.requires_grad]

    def forward(self, tasks: Sequence[tuple[Objective, dict[str, torch.Tensor]]], ctx: StepContext,
                before_compute: Callable[[Objective], None] | None = None) -> list[ObjectiveOutput]:
        """The step's forward (point 3 of :mod:`objkit.train.step`): every task through :attr:`wrapped`."""
        args = (tasks, ctx) if before_compute is None else (tasks, ctx, before_compute)
        return [ObjectiveOutput(loss, size, metrics) for loss, size, metrics in self.wrapped(*args)]

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for a forward + backward: ``enabled=False`` accumulates gradients locally."""
        return contextlib.nullcontext()

    def no_backward(self) -> None:
        """Called after a forward pass that no backward pass follows."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor, self.world)

    def agree(self, *flags: bool) -> list[bool]:
        """Each flag OR-ed over all ranks (:func:`objkit.distributed.collectives.agree`)."""
        return agree(self.world, *flags)

    def grad_norm(self, params: Sequence[nn.Parameter], clip_norm: float | None) -> torch.Tensor:
        """The total L2 norm of the gradients of ``params`` over all ranks, a 0-dim tensor on
        their device (not read back); with ``clip_norm`` the gradients are clipped to it first
        (``torch.nn.utils.clip_grad_norm_``)."""
        if clip_norm is not None:
            return torch.nn.utils.clip_grad_norm_(params, clip_norm).detach()
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return torch.zeros((), device=params[0].device if params else None)
        return torch.nn.utils.get_total_norm(grads).detach()

    def full_parameters(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which ``encoder.body()`` can be called directly (evaluation); every rank enters it."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def full_weights(self, on: str = "every_rank") -> Iterator[Any]:
        """:meth:`objkit.contract.events.FitState.full_weights` (every rank enters it): ``every_rank``: the
        encoder within :meth:`full_parameters`; ``main``: :meth:`model_for_save`'s full copy on
        rank 0 (None elsewhere), every rank waiting for rank 0 on the way out."""
        if on == "every_rank":
            with self.full_parameters():
                yield self.encoder
            return
        if on != "main":
            raise ValueError(f"full_weights: on must be 'every_rank' or 'main' (got {on!r})")
        model = self.model_for_save()
        try:
            yield model
        finally:
            barrier(self.world)

    # ----------------------------------------------------------------- checkpoints (every rank calls these)
    def model_for_save(self) -> nn.Module | None:
        """A module holding the encoder's full weights, on rank 0 (None elsewhere)."""
        return self.encoder if self.world.is_main else None

    def full_state(self, state: Any) -> Any:
        """An objective state with sharded tensors gathered into full ones (unchanged unless FSDP)."""
        return state

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def model_for_load(self) -> nn.Module:
        """The module a checkpoint's weights are loaded into (then :meth:`finish_model_load`)."""
        return self.encoder

    def finish_model_load(self, loaded: nn.Module) -> None:
        pass

    def load_objective_state(self, objective: Objective, state: dict[str, Any]) -> None:
        objective.load_state_dict(state)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


class DDPStrategy(ParallelStrategy):
    """``DistributedDataParallel`` around :class:`StepModule`: one bucketed all-reduce per step."""

    mode = "ddp"

    def __init__(self, encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo, device: torch.device) -> None:
        super().__init__(encoder, objectives, world)
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        kwargs: dict[str, Any] = {"find_unused_parameters": needs_find_unused(objectives)}
        if device.type == "cuda":
            kwargs["device_ids"] = [device.index]
        # buffers (position ids) are constants: no broadcast before every forward
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
            kwargs["forward_sync_buffers"] = False
        else:
            kwargs["broadcast_buffers"] = False
        self.ddp = DistributedDataParallel(self.module, **kwargs)
        self.find_unused_parameters: bool = kwargs["find_unused_parameters"]

    @property
    def wrapped(self) -> nn.Module:
        return self.ddp

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if enabled else self.ddp.no_sync()


def check_resumable(
    path: Path, trainer_state: dict[str, Any], world: WorldInfo, mode: str, streamed: Sequence[str]
) -> None:
    """Refuse, with a clear message, a checkpoint this process layout cannot resume. Map-style
    data resumes on any number of ranks (its order does not depend on them); streamed data is
    read per rank, and FSDP's optimizer state is keyed by parameter name."""
    saved_world = int(trainer_state.get("world_size", 1))
    saved_mode = trainer_state.get("parallelism", "single")
    if (saved_mode == "fsdp") != (mode == "fsdp"):
        raise UserError(
            f"{path}: written with train.parallelism = {saved_mode!r} on {saved_world} rank(s), resumed with "
            f"{mode!r} on {world.world_size}; the optimizer state of FSDP runs is keyed by parameter name, so "
            "resume FSDP checkpoints with FSDP (several ranks) and others without it"
        )
    if saved_world != world.world_size and streamed:
        raise UserError(
            f"{path}: written by {saved_world} rank(s), resumed by {world.world_size}; the streamed data of "
            f"objectives {', '.join(streamed)} is read per rank (split_dataset_by_node), so its positions do not "
            f"carry over: resume with --nproc_per_node {saved_world}, or use map-style sources (streaming = false), "
            "whose global order does not depend on the number of ranks"
        )


__all__ = ["DDPStrategy", "ParallelStrategy", "StepModule", "check_resumable", "needs_find_unused"]
