"""Masked language modelling (Devlin et al., 2019) as XLM-R trains it (Conneau et al., 2020).

Monolingual text is packed into blocks of whole sentences (``<s> a </s> b </s> ...``, at most
``max_length`` tokens, one language per block); 15% of tokens are selected (80% ``<mask>``,
10% random, 10% kept) and predicted. The LM head runs on the selected positions only.

``packing`` (the layout of a row): ``complete`` (default, as above: sentences share a block and
attend to each other), ``none`` (one sentence a row, ``<s> s </s>``, padded to the longest of
the micro-batch: fairseq's ``eos`` mode), or ``documents``: the rows of ``none``, masked exactly as
``none`` masks them, then packed into rows of ``max_length`` tokens, each sentence attending only
within itself with its own positions (:func:`objkit.pack_documents`): the loss of ``none`` without
its padding. ``train.batch_size`` counts sentences for ``none`` and ``documents``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field

from objkit import (
    PLUGIN_API_VERSION,
    BuildContext,
    MaskingConfig,
    Objective,
    ObjectiveOutput,
    StepContext,
    derive_seed,
    example_seeds,
    hookimpl,
    mask_tokens,
    masked_lm_output,
    masked_units,
    pack_documents,
    pack_sentences,
    pad_sequences,
    sentence_rows,
)


class MLMConfig(MaskingConfig):
    """Masking rates (defaults: BERT / XLM-R) and the row layout."""

    packing: Literal["complete", "none", "documents"] = Field(
        "complete", description="complete: sentences share blocks of max_length and attend to each other (XLM-R); "
        "none: one sentence a row, padded; documents: those sentences packed into rows, each attending only within "
        "itself (the loss of none without the padding; kernel: train.packed_attention)"
    )


class MaskedLM(Objective):
    name: ClassVar[str] = "mlm"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[MLMConfig]] = MLMConfig
    data_kind = "text"

    def __init__(self, config: MLMConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: MLMConfig = config
        self.vocab = ctx.vocab
        self.bos_id = ctx.vocab.bos_id
        self.eos_id = ctx.vocab.eos_id
        self.max_length = ctx.max_length
        self.first_position = ctx.encoder.first_position_id
        self.pad_position = ctx.encoder.pad_position_id

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        if self.config.packing == "complete":
            return pack_sentences(dataset, self.max_length, self.bos_id, self.eos_id)
        return sentence_rows(dataset, self.max_length, self.bos_id, self.eos_id)

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], self.vocab.pad_id)
        seeds = [derive_seed(seed, "mask") for seed in example_seeds(examples, generator)]
        masked, labels = mask_tokens(input_ids, self.vocab, generator, self.config, seeds=seeds)
        batch = {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
        if self.config.packing != "documents":
            return batch
        return pack_documents(batch, self.max_length, pad_id=self.vocab.pad_id, first_position=self.first_position,
                              pad_position=self.pad_position)

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return masked_units(batch)

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        return masked_lm_output(ctx.encoder, batch)


@hookimpl
def objkit_plugins() -> list[type]:
    return [MaskedLM]
