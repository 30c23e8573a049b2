"""Gradient storage kept from one optimizer step to the next for the gradients a backward writes
in place.

Two backwards write a leaf's gradient straight into ``.grad`` instead of handing autograd a
tensor: the fused chunked LM head's decoder (:mod:`objkit.blocks.lm_head`, one process and DDP) and the
embedding lookups (:class:`objkit.train.memory.GradIntoEmbedding`, one process). Both call
:func:`grad_into`, which makes ``.grad`` on a step's first backward. The step frees every
``.grad`` after the optimizer step (:class:`GradPool`, point 9 of :mod:`objkit.train.step`) (``set_to_none``: a parameter that gets no gradient in a step
keeps ``.grad = None``, so AdamW leaves it, its moments and its weight decay alone that step).
For XLM-R's 250,002 × 768 tied embedding, a fresh ``.grad`` is 768 MB of new pages every step:
on CPU (where objkit mmaps blocks from 1 MiB, :func:`objkit.distributed.device.return_freed_host_memory`)
the kernel faults in and zeroes each page, then ``zeros_like`` writes them again, and freeing it
unmaps them (measured: 0.36 s for a fresh zeroed 250,002 × 768 fp32 buffer against 0.07 s to
zero one that is kept, one thread).

:func:`release_grads` replaces ``optimizer.zero_grad(set_to_none=True)``: every ``.grad``
becomes ``None`` as before, but the storage of the gradients :func:`grad_into` made is kept
aside for that parameter, and :func:`grad_into` hands it back, zeroed, the next time the
parameter's gradient is written in place. What a step computes is unchanged (the buffer holds
exact zeros before the first write, like ``zeros_like``), and so is what AdamW sees (``None``
for a parameter without a gradient in the step). Nothing of it is in a checkpoint: a resumed
run draws fresh buffers on its first step and the same bits follow. Gradients autograd makes
itself (every other parameter) are not kept: autograd allocates a parameter's gradient in its
backward kernel whether or not ``.grad`` exists, and would only add it into a kept buffer.

Memory: the kept buffers are the size of the gradients they were, alive between steps (the
dry run's static "gradients" already counts them); :func:`drop_spare_grads` frees them. Code
that keeps a reference to such a ``.grad`` past the optimizer step (a callback logging it)
must keep a copy: the tensor is written again by the next step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.utils.weak import WeakIdKeyDictionary

# parameter -> the storage of its last in-place gradient, waiting for the next step's first write
_spare: WeakIdKeyDictionary = WeakIdKeyDictionary()
# parameters whose current .grad was made by grad_into (kept by release_grads)
_written_in_place: WeakIdKeyDictionary = WeakIdKeyDictionary()


def grad_into(param: torch.Tensor) -> torch.Tensor:
    """``param.grad``, made as zeros on a step's first backward: the buffer a backward that writes
    a leaf's gradient in place (the fused head's decoder, :class:`objkit.train.memory.GradIntoEmbedding`)
    adds into instead of handing autograd a gradient. The storage kept by :func:`release_grads`
    from the parameter's previous step is reused (zeroed) where there is one."""
    if param.grad is None:
        spare = _spare.pop(param, None)
        if (spare is not None and spare.shape == param.shape and spare.dtype == param.dtype
                and spare.device == param.device and spare.layout == param.layout):
            param.grad = spare.zero_()
        else:
            param.grad = torch.zeros_like(param)
        _written_in_place[param] = True
    return param.grad


def release_grads(params: Iterable[torch.Tensor], keep: bool = True) -> int:
    """Set every ``.grad`` of ``params`` to ``None`` (``optimizer.zero_grad(set_to_none=True)``),
    keeping the storage of those :func:`grad_into` made for the parameter's next step
    (``keep=False``: free it, as ``zero_grad`` does). Returns the bytes kept."""
    kept = 0
    for param in params:
        grad = param.grad
        if grad is None:
            continue
        if keep and _written_in_place.pop(param, False):
            _spare[param] = grad
            kept += grad.numel() * grad.element_size()
        else:
            _written_in_place.pop(param, None)
            _spare.pop(param, None)
        param.grad = None
    return kept


class GradPool:
    """The step's gradient release (:class:`objkit.train.step.TrainStep`, point 9): every ``.grad``
    becomes ``None``, the storage of those written in place kept for the next step (``keep``;
    ``keep = False`` frees it as ``optimizer.zero_grad(set_to_none=True)`` does)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep

    def release(self, params: Iterable[torch.Tensor]) -> int:
        """:func:`release_grads` of ``params``: the bytes kept."""
        return release_grads(params, self.keep)


def drop_spare_grads(params: Iterable[torch.Tensor] | None = None) -> None:
    """Free the kept gradient storage of ``params`` (default: of every parameter)."""
    if params is None:
        _spare.clear()
        return
    for param in params:
        _spare.pop(param, None)


def spare_grad_bytes(params: Iterable[torch.Tensor]) -> int:
    """Bytes of gradient storage kept for ``params`` between steps."""
    return sum(s.numel() * s.element_size() for p in params if (s := _spare.get(p)) is not None)


__all__ = ["GradPool", "drop_spare_grads", "grad_into", "release_grads", "spare_grad_bytes"]
