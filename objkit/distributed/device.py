"""Where and in what precision a run computes: the device, autocast, CPU thread counts.

One :func:`resolve_device` serves ``train.device`` (training, one device per torchrun rank)
and the evaluators' ``--device``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

from objkit.contract.errors import UserError

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


HOST_MMAP_THRESHOLD = 1 << 20
"""Bytes from which host allocations are mmap'd (see :func:`return_freed_host_memory`)."""


def return_freed_host_memory(device: torch.device) -> int | None:
    """On a CPU run with glibc, make allocations of ``HOST_MMAP_THRESHOLD`` bytes and more (every
    tensor of a large model's step but the smallest) mmap'd, so that freeing one returns its
    pages to the system at once.

    glibc's default threshold starts at 128 KiB and rises with every large block freed, up to
    32 MiB: the activations and gradient temporaries of an XLM-R-large step (16-64 MiB each)
    then come from the heap, whose freed fragments a process keeps. Measured on an
    ``infoxlm_large``-shaped step (6 layers, micro-batch 8 × 512, checkpointing, chunked head),
    the peak RSS fell from 11.35 to 10.41 GiB and the resident memory between steps from 7.24
    to 6.19 GiB (``benchmarks/run.py``'s ``large_peak_vs_analytic`` measures the full model).
    ``OBJKIT_MMAP_THRESHOLD`` overrides the threshold in bytes (``0``: leave glibc's own). Returns
    the threshold set, or None (not CPU, not glibc, or turned off)."""
    if device.type != "cpu":
        return None
    threshold = int(os.environ.get("OBJKIT_MMAP_THRESHOLD", HOST_MMAP_THRESHOLD))
    if threshold <= 0:
        return None
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3  # malloc.h's M_MMAP_THRESHOLD
        return threshold if libc.mallopt(m_mmap_threshold, threshold) == 1 else None
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator as it is
        return None
