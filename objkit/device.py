"""Where and in what precision a run computes: the device, autocast, CPU thread counts.

One :func:`resolve_device` serves ``train.device`` (training, one device per torchrun rank)
and the evaluators' ``--device``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from objkit.errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None, *, key: str = "--device",
                   local_rank: int | None = None) -> torch.device:
    """``auto``/None -> CUDA when available, else CPU; ``cuda`` without a GPU is a
    :class:`UserError` naming ``key``. ``local_rank`` (training under torchrun): a CUDA device
    gets that index and becomes this process's current device."""
    if isinstance(spec, torch.device):
        device = spec
    elif spec in (None, "auto"):
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if str(spec).startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"{key}: cuda requested but no CUDA device is available (got {str(spec)!r}; use cpu)")
        try:
            device = torch.device(spec)
        except RuntimeError as err:
            raise UserError(f"{key}: not a device (auto, cpu, cuda; got {str(spec)!r})") from err
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def training_device(spec: str, rank: int) -> torch.device:
    """``train.device`` of this torchrun process: CUDA device ``LOCAL_RANK`` (default ``rank``)."""
    return resolve_device(spec, key="train.device", local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision``: fp32 on CPU (bf16 matmul is slow there); bf16 on CUDA when ``auto``
    and supported."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if precision in AUTOCAST_DTYPES and device.type != "cuda":
        raise UserError(f"train.precision: {precision} needs a CUDA device; use fp32 on CPU (got {precision!r})")
    return precision


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Mixed precision keeps fp32 master weights; only the forward runs in bf16/fp16."""
    if precision not in AUTOCAST_DTYPES:
        return contextlib.nullcontext
    dtype = AUTOCAST_DTYPES[precision]
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def thread_counts() -> dict[str, int]:
    """CPU threads of this process's torch kernels. On CPU they split reductions (matmul, sums)
    differently, so runs with other counts differ in the last bits (recorded, compared on resume)."""
    return {"torch": torch.get_num_threads()}
