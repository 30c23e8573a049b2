"""BERT-style token masking (Devlin et al., 2019), as used by XLM-R's MLM and XLM's TLM.

Select ``mask_prob`` of the maskable positions; of those, replace ``replace_prob`` with
``<mask>``, ``random_prob`` with a random non-special token, keep the rest. Padding is never
selected; special tokens (``<s>``, ``</s>``) are not either unless ``mask_specials`` is set.

Differences from the reference (fairseq's ``MaskTokensDataset``, used by XLM-R and InfoXLM):
selection is one Bernoulli(``mask_prob``) draw per token (at least one per sequence), not an
exact count of ``int(mask_prob * length + U(0, 1))`` positions; and the reference selects among
all positions of the unpadded item, ``<s>`` and ``</s>`` included -- ``mask_specials = true``
reproduces that (about 12% of InfoXLM's XLCO ``<s>`` vectors are read at a ``<mask>``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pydantic import Field

from objkit.contract.interfaces import Encoder, ObjectiveOutput, PluginConfig, VocabInfo
from objkit.blocks.lm_head import IGNORE_INDEX, lm_head_loss  # IGNORE_INDEX: the labels' "not predicted"


class MaskingConfig(PluginConfig):
    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of tokens selected for prediction")
    replace_prob: float = Field(0.8, ge=0, le=1, description="selected tokens replaced by <mask>")
    random_prob: float = Field(0.1, ge=0, le=1, description="selected tokens replaced by a random token")
    mask_specials: bool = Field(
        False, description="special tokens (<s>, </s>) may be selected too, as in the reference (padding never)"
    )


def mask_tokens(
    input_ids: torch.Tensor,
    vocab: VocabInfo,
    generator: torch.Generator,
    config: MaskingConfig = MaskingConfig(),
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_input_ids, labels)``; labels are ``-100`` where nothing is predicted.

    Selection is exact-rate per sequence in expectation (Bernoulli per maskable token), with at
    least one selected token per sequence that has a maskable token, so every sequence
    contributes to the loss.

    Every row draws its random numbers from its own generator seeded by ``seeds[row]`` (one per
    row; drawn from ``generator`` when not given), over its unpadded length only: a row is
    masked the same way whatever batch, padding or rank it is collated in. Pass per-sample
    seeds (:mod:`objkit.blocks.seeding`) to make masking a function of the sample alone.
    """
    if config.replace_prob + config.random_prob > 1:
        raise ValueError("replace_prob + random_prob must be <= 1")
    rows, width = input_ids.shape
    if seeds is None:
        seeds = torch.randint(0, 2**63 - 1, (rows,), generator=generator).tolist()
    if len(seeds) != rows:
        raise ValueError(f"mask_tokens: {len(seeds)} seeds for {rows} rows")
    lengths = (input_ids != vocab.pad_id).sum(dim=-1).tolist()  # right-padded rows
    if config.mask_specials:
        maskable = torch.arange(width)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    else:
        maskable = ~torch.isin(input_ids, torch.tensor(vocab.special_ids, dtype=input_ids.dtype))
    draws = torch.full((rows, width), 2.0)  # > any probability: padding is never selected
    action = torch.ones((rows, width))
    generators = []
    for row, (seed, length) in enumerate(zip(seeds, lengths, strict=True)):
        g = torch.Generator().manual_seed(int(seed))
        draws[row, :length] = torch.rand(length, generator=g)
        action[row, :length] = torch.rand(length, generator=g)
        generators.append(g)
    selected = (draws < config.mask_prob) & maskable
    # guarantee one prediction per sequence: pick the maskable position with the lowest draw
    none_selected = ~selected.any(dim=-1) & maskable.any(dim=-1)
    if none_selected.any():
        first = torch.where(maskable, draws, torch.full_like(draws, 2.0)).argmin(dim=-1)
        picked = none_selected.nonzero(as_tuple=True)[0]
        selected[picked, first[picked]] = True

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    to_mask = selected & (action < config.replace_prob)
    to_random = selected & (action >= config.replace_prob) & (action < config.replace_prob + config.random_prob)

    masked = input_ids.clone()
    masked[to_mask] = vocab.mask_id
    counts = to_random.sum(dim=-1).tolist()
    if sum(counts):
        candidates = _regular_tokens(vocab)
        picks = [torch.randint(len(candidates), (n,), generator=g) for n, g in zip(counts, generators) if n]
        masked[to_random] = candidates[torch.cat(picks)].to(input_ids.dtype)  # row-major, like the mask
    return masked, labels


def _regular_tokens(vocab: VocabInfo) -> torch.Tensor:
    """The vocabulary minus special tokens (random replacements are uniform over these)."""
    regular = torch.ones(vocab.vocab_size, dtype=torch.bool)
    regular[list(vocab.special_ids)] = False
    return regular.nonzero(as_tuple=True)[0]


def pad_sequences(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: ``(input_ids, attention_mask)``."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return ids, attention


def padding_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(token slots, padded slots) over every ``*attention_mask`` of a collated batch (XLCO has
    a query and a key mask), with its further length groups (a ``.N`` suffix: ``attention_mask.1``,
    see :func:`length_groups`): logged as ``<objective>/padding``, the padded fraction."""
    slots = padded = 0
    for name, mask in batch.items():
        if name.partition(".")[0].endswith("attention_mask"):
            slots += mask.numel()
            padded += mask.numel() - int(mask.sum())
    return slots, padded


def length_groups(lengths: Sequence[int], max_groups: int) -> list[list[int]]:
    """Split the rows of a batch into ``min(max_groups, len(lengths))`` groups, each to be padded
    to its own longest row, with the fewest token slots in all: the optimal partition is
    contiguous in length order (a row no longer than a group's longest can join it for free),
    found by dynamic programming over the sorted lengths. Returns each group's row indices
    (ascending), groups in increasing length. Always that many groups, even where fewer would
    cost no more slots: the number of encoder passes then depends on the micro-batch size
    only, the same on every rank (FSDP unshards per pass, so ranks must run as many).
    ``max_groups = 1``: every row, in order. Deterministic: a function of ``lengths`` alone."""
    n = len(lengths)
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1 (got {max_groups})")
    if n == 0 or max_groups == 1:
        return [list(range(n))] if n else []
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    sorted_lengths = np.asarray([lengths[i] for i in order], dtype=np.int64)
    k = min(max_groups, n)
    starts = np.arange(n)
    # best[g, j]: fewest slots for the first j sorted rows in exactly g groups; cut[g, j]: where
    # the last of them starts
    infinite = np.iinfo(np.int64).max // 4
    best = np.full((k + 1, n + 1), infinite, dtype=np.int64)
    best[0, 0] = 0
    cut = np.zeros((k + 1, n + 1), dtype=np.int64)
    for g in range(1, k + 1):
        for j in range(g, n + 1):
            costs = best[g - 1, :j] + (j - starts[:j]) * sorted_lengths[j - 1]
            cut[g, j] = int(np.argmin(costs))  # the first minimum: deterministic on ties
            best[g, j] = costs[cut[g, j]]
    groups: list[list[int]] = []
    g, j = k, n
    while g > 0:
        i = int(cut[g, j])
        groups.append(order[i:j])
        g, j = g - 1, i
    return [sorted(group) for group in reversed(groups)]


def masked_units(batch: dict[str, torch.Tensor]) -> int:
    """How many positions ``batch["labels"]`` predicts: the ``sample_size`` of a masked-LM batch."""
    return int((batch["labels"] != IGNORE_INDEX).sum())


def masked_lm_output(
    encoder: Encoder,
    batch: dict[str, torch.Tensor],
) -> ObjectiveOutput:
    """Cross-entropy of the LM head at the labelled positions only (never full-vocab logits),
    through :func:`objkit.lm_head_loss` (chunked when ``train.lm_head_chunk_rows`` is set).

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (``-100`` = not predicted) and
    optionally ``position_ids`` / ``token_type_ids``; packed rows (:func:`objkit.pack_documents`)
    also ``document_ids``, and run through :meth:`~objkit.Encoder.forward_documents` (API 1.6).
    """
    if "document_ids" in batch:
        hidden = encoder.forward_documents(
            batch["input_ids"],
            batch["document_ids"],
            position_ids=batch.get("position_ids"),
            token_type_ids=batch.get("token_type_ids"),
        )[-1]
    else:
        hidden = encoder(
            batch["input_ids"],
            batch["attention_mask"],
            position_ids=batch.get("position_ids"),
            token_type_ids=batch.get("token_type_ids"),
        )[-1]
    labels = batch["labels"]
    selected = labels != IGNORE_INDEX
    head = lm_head_loss(encoder, hidden[selected], labels[selected])  # in chunks if the run asks for it
    return ObjectiveOutput(loss=head.loss, sample_size=head.rows, metrics={"accuracy": head.accuracy})
