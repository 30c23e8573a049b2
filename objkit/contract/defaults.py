"""What the contract's default methods call, kept in the contract so that it imports nothing above
it: the frozen copy of a momentum encoder (:meth:`objkit.Encoder.copy_body`), the bucketing sort
keys of prepared rows (:meth:`objkit.Objective.bucket_lengths`), and the tokenizer saved beside a
model (:meth:`objkit.EvalContext.save_pretrained`), the per-document attention mask of packed rows
(:meth:`objkit.Encoder.forward_documents`). Their public homes are unchanged:
:mod:`objkit.blocks.momentum`, :mod:`objkit.data.bucketing`, :mod:`objkit.data.tokenizer` and
:mod:`objkit.blocks.packed` import them from here (and ``objkit.make_momentum_copy``, ``objkit.side_lengths``)."""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import datasets
    import torch
    from torch import nn

log = logging.getLogger("objkit.data.tokenizer")  # where these warnings were logged from before


def make_momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen fp32 deep copy of ``module`` (equal weights; ``requires_grad=False``)."""
    twin = copy.deepcopy(module)
    twin.requires_grad_(False)
    return twin.float()


def _list_lengths(dataset: datasets.Dataset) -> list[np.ndarray]:
    """The length of every row in each list column (token ids) of ``dataset``, as ``int64``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = dataset.with_format("arrow")[:]
    columns = []
    for name in table.column_names:
        column = table.column(name)
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            continue
        lengths = pc.fill_null(pc.list_value_length(column), 0)
        chunks = lengths.chunks if isinstance(lengths, pa.ChunkedArray) else [lengths]
        columns.append(np.concatenate([c.to_numpy(zero_copy_only=False) for c in chunks]).astype(np.int64)
                       if chunks else np.zeros(len(dataset), dtype=np.int64))
    return columns


def example_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Per row, the length of its longest list column (token ids), as ``int64``."""
    columns = _list_lengths(dataset)
    return np.max(columns, axis=0) if columns else np.zeros(len(dataset), dtype=np.int64)


def side_lengths(dataset: datasets.Dataset) -> np.ndarray:
    """Per row ``[longest, shortest]`` of its token lists (``int64``, ``[N, 2]``): the bucketing
    key of an objective that pads each sequence of a row on its own (XLCO's two sides), so
    that rows whose longer sides tie are ordered by their shorter sides too."""
    columns = _list_lengths(dataset)
    if not columns:
        return np.zeros((len(dataset), 2), dtype=np.int64)
    stacked = np.stack(columns, axis=1)
    return np.stack([stacked.max(axis=1), stacked.min(axis=1)], axis=1)


def model_max_tokens(model: Any) -> int | None:
    """Tokens per sequence the position table of ``model`` (a transformers model or its config)
    allows (XLM-R offsets positions by ``pad_token_id + 1``), or None when the config does not say."""
    config = getattr(model, "config", model)
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    offset = (getattr(config, "pad_token_id", None) or 0) + 1 if "roberta" in str(getattr(config, "model_type", "")) else 0
    return max(2, positions - offset)


def save_tokenizer_for(model: Any, tokenizer: Any, out_dir: str | Path) -> None:
    """``tokenizer.save_pretrained(out_dir)`` with ``model_max_length`` no larger than the position
    table of ``model`` (an objkit encoder, a transformers model or its config) allows, so
    ``tokenizer(..., truncation=True)`` in any fine-tuning script (HF ``run_glue`` / ``run_xnli``
    take ``min(max_seq_length, tokenizer.model_max_length)``) never overruns it. The tokenizer
    object itself is left as it was."""
    body = model.body() if hasattr(model, "body") else model
    limit = model_max_tokens(body)
    before = tokenizer.model_max_length
    if limit is None:
        log.warning("tokenizer: the model config has no max_position_embeddings; model_max_length left as is")
    elif before is None or before > limit:
        tokenizer.model_max_length = limit
    try:
        tokenizer.save_pretrained(str(out_dir))
    finally:
        tokenizer.model_max_length = before
    # transformers 5 writes tokenizer.json only: keep the SentencePiece model beside it, which
    # `objkit tokenizer extend` (and the slow tokenizer) need
    for attribute, name in getattr(tokenizer, "vocab_files_names", {}).items():
        source = getattr(tokenizer, attribute, None)
        if isinstance(source, str) and Path(source).is_file() and not (Path(out_dir) / name).exists():
            shutil.copyfile(source, Path(out_dir) / name)


__all__ = ["document_attention_mask", "example_lengths", "make_momentum_copy", "model_max_tokens", "save_tokenizer_for", "side_lengths"]


def document_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """``[B, L, L]`` boolean, True where query ``q`` may attend key ``k``: both in the same
    document of the row. Padding (id 0) attends padding only, so no query row is empty (an
    all-masked row would make SDPA's softmax NaN) and no real token sees a padded slot."""
    return document_ids[:, :, None] == document_ids[:, None, :]
