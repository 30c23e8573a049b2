"""Pack sentences into training blocks: fairseq's ``--sample-break-mode complete`` as XLM-R uses it.

A block is ``<s> s1 </s> s2 </s> ... sk </s>``: whole sentences only, at most ``max_length``
tokens, one group (language) per block. A sentence longer than ``max_length - 2`` tokens is
truncated and becomes a block of its own. :func:`sentence_rows` is fairseq's ``eos`` mode instead:
one sentence a row, ``<s> s </s>`` (what packed rows with per-document attention are made of,
:mod:`objkit.blocks.packed`).
"""

from __future__ import annotations

from typing import Any

import datasets

BLOCK_FEATURES = datasets.Features(
    {"input_ids": datasets.Sequence(datasets.Value("int32")), "group": datasets.Value("string")}
)


def pack_batch(batch: dict[str, list[Any]], *, max_length: int, bos_id: int, eos_id: int) -> dict[str, list[Any]]:
    """Pack one batch of contiguous rows (``input_ids``, ``group``) into blocks.

    Blocks never span batches; a group change inside the batch closes the current block.
    """
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 (got {max_length})")
    blocks: list[list[int]] = []
    groups: list[str] = []
    current: list[int] = []
    current_group: str | None = None

    def flush() -> None:
        nonlocal current
        if current:
            blocks.append(current)
            groups.append(current_group)  # type: ignore[arg-type]
            current = []

    for ids, group in zip(batch["input_ids"], batch["group"]):
        if not ids:
            continue
        ids = list(ids)
        if group != current_group:
            flush()
            current_group = group
        if len(ids) > max_length - 2:  # overlong: truncated, alone in its block
            flush()
            blocks.append([bos_id, *ids[: max_length - 2], eos_id])
            groups.append(group)
            continue
        if current and len(current) + len(ids) + 1 > max_length:
            flush()
        if not current:
            current = [bos_id]
        current.extend(ids)
        current.append(eos_id)
    flush()
    return {"input_ids": blocks, "group": groups}


def pack_sentences(dataset: datasets.Dataset | datasets.IterableDataset, max_length: int, bos_id: int,
                   eos_id: int, *, batch_size: int = 1000, num_proc: int | None = None
                   ) -> datasets.Dataset | datasets.IterableDataset:
    """Rows ``{"input_ids", "group", ...}`` (sentences, no special tokens) -> blocks
    ``{"input_ids", "group"}`` (see the module docstring). ``batch_size`` rows are packed at a
    time, so a block never joins sentences more than ``batch_size`` rows apart.
    """
    kwargs = {"max_length": max_length, "bos_id": bos_id, "eos_id": eos_id}
    remove = dataset.column_names
    if isinstance(dataset, datasets.IterableDataset):
        if remove is None:
            remove = list(next(iter(dataset.take(1)), {}).keys())
        return dataset.map(pack_batch, batched=True, batch_size=batch_size, fn_kwargs=kwargs,
                           remove_columns=remove, features=BLOCK_FEATURES)
    return dataset.map(pack_batch, batched=True, batch_size=batch_size, fn_kwargs=kwargs, remove_columns=remove,
                       features=BLOCK_FEATURES, num_proc=num_proc, desc="packing sentences")


def _sentence_batch(batch: dict[str, list[Any]], *, max_length: int, bos_id: int, eos_id: int) -> dict[str, list[Any]]:
    rows = [(ids, group) for ids, group in zip(batch["input_ids"], batch["group"]) if len(ids)]
    return {"input_ids": [[bos_id, *list(ids)[: max_length - 2], eos_id] for ids, _ in rows],
            "group": [group for _, group in rows]}


def sentence_rows(dataset: datasets.Dataset | datasets.IterableDataset, max_length: int, bos_id: int, eos_id: int,
                  *, num_proc: int | None = None) -> datasets.Dataset | datasets.IterableDataset:
    """Rows ``{"input_ids", "group", ...}`` (sentences, no special tokens) -> one sentence a row
    ``{"input_ids": <s> s </s>, "group"}``, a sentence longer than ``max_length - 2`` tokens
    truncated, empty ones dropped (fairseq's ``--sample-break-mode eos``)."""
    if max_length < 3:
        raise ValueError(f"max_length must be at least 3 (got {max_length})")
    kwargs = {"max_length": max_length, "bos_id": bos_id, "eos_id": eos_id}
    remove = dataset.column_names
    if isinstance(dataset, datasets.IterableDataset):
        if remove is None:
            remove = list(next(iter(dataset.take(1)), {}).keys())
        return dataset.map(_sentence_batch, batched=True, fn_kwargs=kwargs, remove_columns=remove,
                           features=BLOCK_FEATURES)
    return dataset.map(_sentence_batch, batched=True, fn_kwargs=kwargs, remove_columns=remove,
                       features=BLOCK_FEATURES, num_proc=num_proc, desc="sentences")
