"""FSDP2 (``fully_shard``) as a :class:`~objkit.distributed.strategy.ParallelStrategy`: each
encoder block is a unit, then the step module; momentum copies are sharded alike. Checkpoints
and exports gather full tensors to rank 0 (the same format as DDP's); the optimizer state is
keyed by parameter name."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from objkit.distributed.strategy import ParallelStrategy
from objkit.contract.interfaces import Encoder, Objective, WorldInfo


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


class FSDPStrategy(ParallelStrategy):
    """FSDP2 (``fully_shard``): each encoder block, then :class:`StepModule`; momentum copies alike."""

    mode = "fsdp"

    def __init__(self, encoder: Encoder, objectives: Sequence[Objective], world: WorldInfo, device: torch.device,
                 param_dtype: torch.dtype | None = None) -> None:
        """``param_dtype`` (``train.param_dtype = "bf16"``): the encoder's shards stay fp32 (what the
        optimizer, checkpoints and momentum copies see) and are gathered in this dtype for the
        step, gradients reduced in fp32 (FSDP2's ``MixedPrecisionPolicy``); the objectives' own
        modules are units of their own, gathered in fp32 (XLCO's projection computes in fp32)."""
        super().__init__(encoder, objectives, world)
        from torch.distributed.device_mesh import init_device_mesh

        self.template = _meta_copy(encoder)  # for full-weight checkpoints and exports
        self.mesh = init_device_mesh(device.type, (world.world_size,))
        self.device = device
        self.param_dtype = param_dtype
        fully_shard = _fully_shard()
        policy: dict[str, Any] = {}
        if param_dtype is not None:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            policy["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                                       cast_forward_inputs=False)
            encoder_params = {id(p) for p in encoder.parameters()}
            for head in self.module.heads.values():
                if not any(id(p) in encoder_params for p in head.parameters()):  # shared ones: the encoder's policy
                    fully_shard(head, mesh=self.mesh)
        for unit in encoder.shard_units():
            fully_shard(unit, mesh=self.mesh, **policy)
        fully_shard(self.module, mesh=self.mesh, **policy)
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

    def grad_norm(self, params: Sequence[nn.Parameter], clip_norm: float | None) -> torch.Tensor:
        norm = super().grad_norm(params, clip_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor over the shards

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


__all__ = ["FSDPStrategy"]
