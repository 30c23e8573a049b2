"""BERT-style token masking (Devlin et al., 2019), as used by XLM-R's MLM and XLM's TLM.

Select ``mask_prob`` of the maskable positions; of those, replace ``replace_prob`` with
``<mask>``, ``random_prob`` with a random non-special token, keep the rest. Special tokens
and padding are never selected.
"""

from __future__ import annotations

import torch
from pydantic import Field

from objkit.interfaces import Encoder, ObjectiveOutput, PluginConfig, VocabInfo

IGNORE_INDEX = -100


class MaskingConfig(PluginConfig):
    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of tokens selected for prediction")
    replace_prob: float = Field(0.8, ge=0, le=1, description="selected tokens replaced by <mask>")
    random_prob: float = Field(0.1, ge=0, le=1, description="selected tokens replaced by a random token")


def mask_tokens(
    input_ids: torch.Tensor,
    vocab: VocabInfo,
    generator: torch.Generator,
    config: MaskingConfig = MaskingConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(masked_input_ids, labels)``; labels are ``-100`` where nothing is predicted.

    Selection is exact-rate per sequence in expectation (Bernoulli per maskable token), with at
    least one selected token per sequence that has a maskable token, so every sequence
    contributes to the loss.
    """
    if config.replace_prob + config.random_prob > 1:
        raise ValueError("replace_prob + random_prob must be <= 1")
    special = torch.isin(input_ids, torch.tensor(vocab.special_ids, dtype=input_ids.dtype))
    maskable = ~special
    draws = torch.rand(input_ids.shape, generator=generator)
    selected = (draws < config.mask_prob) & maskable
    # guarantee one prediction per sequence: pick the maskable position with the lowest draw
    none_selected = ~selected.any(dim=-1) & maskable.any(dim=-1)
    if none_selected.any():
        first = torch.where(maskable, draws, torch.full_like(draws, 2.0)).argmin(dim=-1)
        rows = none_selected.nonzero(as_tuple=True)[0]
        selected[rows, first[rows]] = True

    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < config.replace_prob)
    to_random = selected & (action >= config.replace_prob) & (action < config.replace_prob + config.random_prob)

    masked = input_ids.clone()
    masked[to_mask] = vocab.mask_id
    random_tokens = _random_regular_tokens(int(to_random.sum()), vocab, generator).to(input_ids.dtype)
    masked[to_random] = random_tokens
    return masked, labels


def _random_regular_tokens(count: int, vocab: VocabInfo, generator: torch.Generator) -> torch.Tensor:
    """Uniform over the vocabulary minus special tokens."""
    regular = torch.ones(vocab.vocab_size, dtype=torch.bool)
    regular[list(vocab.special_ids)] = False
    candidates = regular.nonzero(as_tuple=True)[0]
    picks = torch.randint(len(candidates), (count,), generator=generator)
    return candidates[picks]


def pad_sequences(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence: ``(input_ids, attention_mask)``."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention[row, : len(seq)] = 1
    return ids, attention


def masked_lm_output(
    encoder: Encoder,
    batch: dict[str, torch.Tensor],
) -> ObjectiveOutput:
    """Cross-entropy of the LM head at the labelled positions only (never full-vocab logits).

    ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (``-100`` = not predicted) and
    optionally ``position_ids`` / ``token_type_ids``.
    """
    hidden = encoder(
        batch["input_ids"],
        batch["attention_mask"],
        position_ids=batch.get("position_ids"),
        token_type_ids=batch.get("token_type_ids"),
    )[-1]
    labels = batch["labels"]
    selected = labels != IGNORE_INDEX
    targets = labels[selected]
    logits = encoder.lm_logits(hidden[selected]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(dim=-1) == targets).float().mean().item() if targets.numel() else 0.0
    return ObjectiveOutput(loss=loss, sample_size=int(targets.numel()), metrics={"accuracy": accuracy})
