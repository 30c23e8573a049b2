"""Low-precision weights in the step, fp32 master weights in the optimizer (``train.param_dtype``).

Under bf16 autocast with fp32 weights, every matmul of every forward (and the recomputed
forward of activation checkpointing) first casts its fp32 weight to bf16: a copy of the whole
model per micro-batch, 13% of GPU time in the H200 profile of an XLM-R-base step
(docs/results/performance.md, "Measured on a GPU"). :class:`MasterWeights` keeps the model's trained parameters *in* the
low-precision dtype, so autocast has nothing to cast (it casts a tensor only when its dtype
differs: the ops it runs in fp32, layer norm and softmax, still upcast), and keeps an fp32
**master copy** of each of them for the optimizer, whose moments are then fp32 too:

1. after a backward, each parameter's gradient is added in fp32 into its master's ``.grad``
   (:meth:`MasterWeights.accumulate_grads`) and the low-precision ``.grad`` is released (the
   grad pool keeps the storage of those written in place, :mod:`objkit.blocks.grad_pool`);
2. the optimizer (clipping, the non-finite check) works on the masters as it would on fp32
   weights;
3. after the update the model's weights are rounded from the masters
   (:meth:`MasterWeights.copy_to_model`).

An update smaller than the weight's bf16 resolution (``lr = 1e-4`` on a weight of 0.5: bf16's
step there is 2**-8 ≈ 0.004) is not lost: it accumulates in the master until the rounded weight
moves. A parameter without a gradient in a step keeps ``.grad = None`` on its master, so AdamW
leaves it alone as before. With ``dtype = torch.float32`` the masters are exact copies and the
step computes what the plain fp32 step computes (``tests/test_master_weights.py``): that is how
this path is tested on a CPU, where bf16 matmuls are slow.

What reads the trained weights for something else than the forward reads the masters:
:func:`master_of` maps a parameter to its master (the momentum encoders' EMA,
:class:`objkit.blocks.momentum.MomentumTracker`, so that the key encoder stays an fp32 average
of the fp32 weights); checkpoints and the export hold the masters (:meth:`MasterWeights.swapped_in`),
so a resumed run continues bit for bit and an exported model is fp32.

Memory per parameter: 2 bytes for the bf16 weight on top of fp32 weights, gradients and moments
(the fp32 gradient lives on the master), and a bf16 gradient while a backward runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from objkit.blocks.grad_pool import release_grads

# model parameter -> its fp32 master (while a MasterWeights that made it is alive)
_masters: WeakIdKeyDictionary = WeakIdKeyDictionary()


def master_of(param: torch.Tensor) -> torch.Tensor:
    """The fp32 master of a parameter kept in low precision by :class:`MasterWeights`, else the
    parameter itself."""
    return _masters.get(param, param)


class MasterWeights:
    """fp32 master copies of ``params``, whose data become ``dtype`` (module docstring).

    Build it before the parameters are wrapped (DDP lays out its buckets in the parameters'
    dtype) and build the optimizer over :attr:`masters`."""

    def __init__(self, params: Sequence[nn.Parameter], dtype: torch.dtype) -> None:
        if len({id(p) for p in params}) != len(params):
            raise ValueError("MasterWeights: a parameter is listed twice")
        self.params = list(params)
        self.masters: list[nn.Parameter] = []
        for param in self.params:
            if not param.is_floating_point():
                raise ValueError(f"MasterWeights: a {param.dtype} parameter has no master weights")
            master = nn.Parameter(param.detach().to(torch.float32, copy=True))
            self.masters.append(master)
            with torch.no_grad():
                param.data = param.data.to(dtype)
            _masters[param] = master
        self._spare: list[torch.Tensor | None] = [None] * len(self.params)

    def master_for(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What the optimizer updates in place of ``params``, in their order (the strategy's): the
        master of each parameter given to this object, the parameter itself for the others (kept
        in their own dtype and trained as they are)."""
        return [_masters.get(param, param) for param in params]

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Add every parameter's ``.grad`` into its master's, in fp32, and release it."""
        for i, (param, master) in enumerate(zip(self.params, self.masters, strict=True)):
            grad = param.grad
            if grad is None:
                continue
            if master.grad is None:
                spare, self._spare[i] = self._spare[i], None
                master.grad = spare.copy_(grad) if spare is not None else grad.to(torch.float32, copy=True)
            else:
                master.grad.add_(grad)
        release_grads(self.params, keep=True)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Round the model's weights from the masters (after an update, after a load)."""
        torch._foreach_copy_([p.data for p in self.params], [m.data for m in self.masters])

    def keep_grad_storage(self) -> None:
        """Keep the masters' gradient storage for the next step's first :meth:`accumulate_grads`
        (called before the step releases them: no fresh page-faulted fp32 gradient every step)."""
        for i, master in enumerate(self.masters):
            if master.grad is not None:
                self._spare[i] = master.grad

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the model's parameters hold their fp32 masters (the same storage:
        what is loaded into them lands in the masters); afterwards the low-precision weights are
        rounded from the masters again. For checkpoints, loads and the export."""
        kept = [p.data for p in self.params]
        for param, master in zip(self.params, self.masters, strict=True):
            param.data = master.data
        try:
            yield
        finally:
            for param, data in zip(self.params, kept, strict=True):
                param.data = data
            self.copy_to_model()


__all__ = ["MasterWeights", "master_of"]
