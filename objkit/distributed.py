"""Data parallelism on ``torch.distributed``, launched by ``torchrun``: DDP or FSDP2, and collectives.

``torchrun --standalone --nproc_per_node N -m objkit run RECIPE -o DIR`` starts N processes;
each joins the process group (NCCL on CUDA, gloo on CPU) and trains the same replicated (DDP)
or sharded (FSDP2, ``train.parallelism = "fsdp"``) model on its slice of every step's global
batch. With one process nothing here touches ``torch.distributed``.

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
import copy
import os
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from objkit.errors import UserError
from objkit.interfaces import Encoder, Objective, ObjectiveOutput, StepContext, WorldInfo
from objkit.processes import die_with_launcher

AllGather = Callable[[torch.Tensor], list[torch.Tensor]]
"""``all_gather(local)`` -> the same-shaped tensor from every rank, in rank order."""


# ----------------------------------------------------------------------------- process group
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


# ----------------------------------------------------------------------------- collectives
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


# ----------------------------------------------------------------------------- the wrapped module
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
        # called with each objective before its compute (objkit.memory: per-objective activation
        # checkpointing, train.activation_checkpointing = [names])
        self.before_compute: Callable[[Objective], None] | None = None

    def forward(
        self, tasks: Sequence[tuple[Objective, dict[str, torch.Tensor]]], ctx: StepContext
    ) -> list[tuple[torch.Tensor, int, dict[str, float]]]:
        # plain tuples: DDP finds the loss tensors in them (it does not look into dataclasses
        # when it wraps outputs for unused-parameter detection)
        outputs = []
        for objective, batch in tasks:
            if self.before_compute is not None:
                self.before_compute(objective)
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


class Replicas:
    """One process: objectives run directly, nothing is synchronised. The base of
    :class:`DDPReplicas` and :class:`FSDPReplicas`, which the trainer and composite use alike."""

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

    def forward(self, tasks: Sequence[tuple[Objective, dict[str, torch.Tensor]]], ctx: StepContext) -> list[ObjectiveOutput]:
        return [ObjectiveOutput(loss, size, metrics) for loss, size, metrics in self.wrapped(tasks, ctx)]

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        """Context for a forward + backward: ``enabled=False`` accumulates gradients locally."""
        return contextlib.nullcontext()

    def no_backward(self) -> None:
        """Called after a forward pass that no backward pass follows."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor, self.world)

    def full_parameters(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which ``encoder.body()`` can be called directly (evaluation); every rank enters it."""
        return contextlib.nullcontext()

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


class DDPReplicas(Replicas):
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


def _fully_shard() -> Callable[..., Any]:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    return fully_shard


def _meta_copy(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` on the meta device (no memory), ties preserved."""
    memo: dict[int, Any] = {}
    for param in module.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=param.requires_grad)
    for buffer in module.buffers():
        memo[id(buffer)] = torch.empty_like(buffer, device="meta")
    return copy.deepcopy(module, memo)


def _set_submodule_tensor(module: nn.Module, name: str, value: nn.Parameter) -> None:
    owner, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(owner) if owner else module, leaf, value)


def _materialize(template: nn.Module, buffers_from: nn.Module) -> nn.Module:
    """A CPU module shaped like the meta ``template``: uninitialised weights, tied weights tied
    again, buffers copied from ``buffers_from``."""
    module = copy.deepcopy(template)
    ties: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        ties.setdefault(id(param), []).append(name)
    module.to_empty(device="cpu")
    for names in ties.values():
        first = module.get_parameter(names[0])
        for name in names[1:]:
            _set_submodule_tensor(module, name, first)
    with torch.no_grad():
        for name, buffer in buffers_from.named_buffers():
            module.get_buffer(name).copy_(buffer)
    return module


def _keep_output_capture(module: nn.Module, original: type) -> None:
    """``fully_shard`` gives the module a new class (``FSDP<Name>``); transformers 5 looks up which
    outputs a model can record (hidden states) by class name. Register the new name too."""
    try:
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
    except ImportError:  # transformers 4: hidden states do not depend on the class name
        return
    flags = dict.get(_CAN_RECORD_REGISTRY, str(original))
    if flags:
        _CAN_RECORD_REGISTRY[module] = flags


class FSDPReplicas(Replicas):
    """FSDP2 (``fully_shard``): each encoder block, then :class:`StepModule`; momentum copies alike."""

    mode = "fsdp"

    def __init__(self, encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo, device: torch.device) -> None:
        super().__init__(encoder, objectives, world)
        from torch.distributed.device_mesh import init_device_mesh

        self.template = _meta_copy(encoder)  # for full-weight checkpoints and exports
        self.mesh = init_device_mesh(device.type, (world.world_size,))
        self.device = device
        fully_shard = _fully_shard()
        for unit in encoder.shard_units():
            fully_shard(unit, mesh=self.mesh)
        fully_shard(self.module, mesh=self.mesh)
        for objective in objectives:
            objective.shard(self._shard_frozen)

    def _shard_frozen(self, module: nn.Module, units: Sequence[nn.Module] = ()) -> None:
        """Shard a forward-only module (a momentum copy) like the encoder. A root module keeps
        its weights gathered after a forward that no backward follows; reshard it explicitly."""
        fully_shard = _fully_shard()
        for unit in units:
            fully_shard(unit, mesh=self.mesh)
        original = type(module)
        fully_shard(module, mesh=self.mesh)
        _keep_output_capture(module, original)
        module.register_forward_hook(lambda mod, args, out: mod.reshard())

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager[Any]:
        @contextlib.contextmanager
        def sync() -> Iterator[None]:
            self.module.set_requires_gradient_sync(enabled)
            try:
                yield
            finally:
                self.module.set_requires_gradient_sync(True)

        return sync()

    def no_backward(self) -> None:
        # the root keeps gathered weights after forward for the backward; with none coming,
        # free them (the optimizer updates the shards, a stale gathered copy must not be reused)
        self.module.reshard()

    @contextlib.contextmanager
    def full_parameters(self) -> Iterator[None]:
        self.module.unshard()
        try:
            yield
        finally:
            self.module.reshard()

    def _options(self, **kwargs: Any) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kwargs)

    def model_for_save(self) -> nn.Module | None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        full = get_model_state_dict(self.module, options=self._options(cpu_offload=True))
        if not self.world.is_main:
            return None
        module = _materialize(self.template, self.encoder)
        prefix = "encoder."
        module.load_state_dict({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}, strict=False)
        return module

    def full_state(self, state: Any) -> Any:
        if isinstance(state, dict):
            return {key: self.full_state(value) for key, value in state.items()}
        if isinstance(state, torch.Tensor) and hasattr(state, "full_tensor"):
            return state.full_tensor().cpu()
        return state

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.module, optimizer, options=self._options(cpu_offload=True))

    def model_for_load(self) -> nn.Module:
        return _materialize(self.template, self.encoder)

    def finish_model_load(self, loaded: nn.Module) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        state = {f"encoder.{k}": v for k, v in loaded.state_dict().items()}
        set_model_state_dict(self.module, state, options=self._options(strict=False))

    def load_objective_state(self, objective: Objective, state: dict[str, Any]) -> None:
        objective.load_state_dict(self.shard_like(state, objective.state_dict()))

    def shard_like(self, loaded: Any, current: Any) -> Any:
        """A loaded (full) state, sharded like ``current`` wherever that holds DTensors."""
        if isinstance(loaded, dict) and isinstance(current, dict):
            return {key: self.shard_like(value, current.get(key)) for key, value in loaded.items()}
        if isinstance(loaded, torch.Tensor) and hasattr(current, "device_mesh"):
            try:
                from torch.distributed.tensor import distribute_tensor
            except ImportError:  # torch < 2.5
                from torch.distributed._tensor import distribute_tensor  # type: ignore[no-redef]

            return distribute_tensor(loaded.to(self.device), current.device_mesh, current.placements)
        return loaded

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.module, optimizer, optim_state_dict=state, options=self._options())


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


def parallelize(
    encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo, device: torch.device, mode: str, precision: str
) -> Replicas:
    """The run's :class:`Replicas`: plain with one process, else DDP or FSDP (``train.parallelism``)."""
    if world.world_size <= 1:
        return Replicas(encoder, objectives, world)
    if mode == "fsdp":
        if precision == "fp16":
            raise UserError(
                "train.precision: fp16 (with a gradient scaler) is not supported with parallelism = 'fsdp'; "
                "use bf16 (got 'fp16')"
            )
        return FSDPReplicas(encoder, objectives, world, device)
    return DDPReplicas(encoder, objectives, world, device)


__all__ = [
    "AllGather", "DDPReplicas", "FSDPReplicas", "Replicas", "StepModule", "all_gather_objects", "all_reduce_sum",
    "barrier", "broadcast_from_main", "check_resumable", "dist_all_gather", "env_world", "gather_rows", "init_distributed",
    "main_process_first", "needs_find_unused", "parallelize", "shutdown_distributed",
]
