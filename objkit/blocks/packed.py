"""Unpadded packed attention: several documents in one row, each attending only within itself.

A *document* is what an objective would otherwise give a row of its own: a sentence ``<s> s </s>``
(``mlm`` with ``packing = "documents"``), a translation pair ``<s> src </s> tgt </s>`` (``tlm``).
:func:`pack_documents` takes a batch collated one document per row (right-padded, masked exactly
as the unpacked objective masks it) and lays the documents end to end in as few rows as fit
``capacity`` tokens, first-fit by decreasing length. Each token keeps its id, label, token type
and position id -- positions restart at every document, as they would in its own row -- and
``document_ids`` says which document of its row it belongs to (1, 2, ...; 0: padding). Attention
is block-diagonal (document masking, as ModernBERT trains and FlashAttention's varlen kernels
compute it), so every token sees exactly what it saw in its own padded row and the loss is the
unpacked loss: only the padding is gone.

The encoder runs such rows through :meth:`objkit.Encoder.forward_documents` (API 1.6): by default
the ``[B, L, L]`` mask of :func:`document_attention_mask` through its ``forward`` (API 1.5 masks;
SDPA on any device), or a varlen kernel where the encoder has one (:class:`objkit.MaskedLMEncoder`
on CUDA with FlashAttention-2, ``train.packed_attention``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from objkit.contract.defaults import document_attention_mask

if TYPE_CHECKING:
    from objkit.contract.encoder import EncoderRunOptions

IGNORE_INDEX = -100

FILL = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "position_ids": None, "token_type_ids": 0}
"""The batch keys :func:`pack_documents` moves, with the value of a padded slot (None: given)."""


def pack_documents(batch: dict[str, torch.Tensor], capacity: int, *, pad_id: int, first_position: int,
                   pad_position: int) -> dict[str, torch.Tensor]:
    """Pack a batch collated one document per row (``input_ids``, a right-padded ``[N, L]``
    ``attention_mask``, and optionally ``labels``, ``position_ids``, ``token_type_ids``) into rows
    of at most ``capacity`` tokens; see the module docstring. Positions, when the batch has none,
    are those the encoder would give each row alone (``first_position + i``; padding
    ``pad_position``). Returns the same keys over the packed rows, plus ``document_ids``."""
    unknown = sorted(set(batch) - set(FILL))
    if unknown:
        raise ValueError(f"pack_documents does not know how to pack the batch keys {unknown}")
    mask = batch["attention_mask"]
    if mask.dim() != 2:
        raise ValueError("pack_documents needs a [N, L] padding attention_mask (one document per row)")
    lengths = mask.sum(dim=1).tolist()
    if any(n > capacity for n in lengths):
        raise ValueError(f"a document of {max(lengths)} tokens does not fit rows of {capacity}")
    rows: list[int] = []  # tokens used in each packed row
    place = [(0, 0, 0)] * len(lengths)  # (row, offset, document number in the row) of each document
    count: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):  # first fit, decreasing length
        if lengths[i] == 0:
            continue
        row = next((r for r, used in enumerate(rows) if used + lengths[i] <= capacity), len(rows))
        if row == len(rows):
            rows.append(0)
            count.append(0)
        count[row] += 1
        place[i] = (row, rows[row], count[row])
        rows[row] += lengths[i]
    width = max(rows, default=0)
    real = mask.bool()
    doc, col = real.nonzero(as_tuple=True)  # every real token: its document and column
    where = torch.tensor(place, dtype=torch.long).reshape(-1, 3)
    dst_row, dst_col = where[doc, 0], where[doc, 1] + col
    positions = batch.get("position_ids")
    if positions is None:
        positions = torch.where(real, first_position + mask.cumsum(dim=1) - 1, pad_position)
    source = {**batch, "position_ids": positions, "document_ids": where[:, 2:3].expand_as(mask)}
    fill = {**FILL, "input_ids": pad_id, "position_ids": pad_position, "document_ids": 0}
    out = {}
    for key, value in source.items():
        packed = torch.full((len(rows), width), fill[key], dtype=value.dtype)
        packed[dst_row, dst_col] = value[doc, col]
        out[key] = packed
    return out


def document_lengths(document_ids: torch.Tensor) -> torch.Tensor:
    """The length of every document of packed rows, row by row and in order (``[D]``): what
    varlen kernels take as cumulative sequence lengths (``cu_seqlens``)."""
    width = document_ids.shape[1] + 1
    flat = document_ids + width * torch.arange(document_ids.shape[0], device=document_ids.device)[:, None]
    flat = flat[document_ids > 0]
    return torch.unique_consecutive(flat, return_counts=True)[1]


def flash_varlen_available(options: EncoderRunOptions) -> bool:
    """Whether FlashAttention-2's varlen kernel can run packed rows: CUDA, the ``flash-attn``
    package as transformers finds it, and half precision (the kernel takes bf16 / fp16 only)."""
    if options.packed_attention == "mask" or options.precision not in ("bf16", "fp16") \
            or not torch.cuda.is_available():
        return False
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


@contextlib.contextmanager
def attention_implementation(body: nn.Module, name: str) -> Iterator[None]:
    """Run ``body``'s attention with transformers' ``name`` kernel inside (its config's
    ``_attn_implementation``, read on every call), then put the previous one back."""
    config = body.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous
