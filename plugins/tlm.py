"""Translation language modelling (Conneau & Lample, XLM, NeurIPS 2019).

A translation pair becomes one sequence ``<s> src </s> tgt </s>`` (truncated to
``max_length``, the longer side first) and is masked like MLM, so a masked word can be
predicted from its translation. XLM-R / InfoXLM style by default: one position range and no
language embeddings. XLM style as options: ``reset_positions`` (the target's positions
restart at the first position) and ``language_embeddings`` (the token-type embedding carries
a language id from ``languages``; the table grows to fit, new rows N(0, 0.02)).

``random_order``: the reference (microsoft/unilm ``infoxlm``, ``tools/para2bin.py``) writes
every pair in both orders, so an en-xx corpus does not always show English first. With
``random_order = true`` each pair is laid out ``<s> tgt </s> src </s>`` (language ids
swapped too) when a seeded per-example bit says so: a function of the pair's
``sample_seed``, like the masks, so the same on any number of ranks. Off by default (the
pair's own order); the InfoXLM and XLM-Align paper recipes turn it on.

Layout differences from the reference, stated: objkit packs ``<s> src </s> tgt </s>`` with
one joint budget of ``max_length`` (the longer side trimmed first); the reference's TLM
sequences are ``<s> <s> src </s> <s> tgt </s>`` with 254 tokens per side. Masking is a
Bernoulli draw per token (see :mod:`objkit.blocks.masking`), not an exact count.

``packing = "documents"``: the pairs of a micro-batch, laid out and masked exactly as above, are
packed into rows of ``max_length`` tokens; each pair is one document (its two sides see each
other, no pair sees another) with its own positions and token types (:func:`objkit.pack_documents`):
the loss of one pair a row without the padding. Default ``none``: one pair a row.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field, model_validator

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
    pad_sequences,
    sample_uniform,
)


class TLMConfig(MaskingConfig):
    reset_positions: bool = Field(False, description="XLM: target positions restart at the first position")
    language_embeddings: bool = Field(False, description="XLM: add a per-language embedding (token types)")
    languages: list[str] = Field(default_factory=list, description="language ids for language_embeddings")
    random_order: bool = Field(
        False, description="a seeded per-example bit puts the target side first (reference: both orders)"
    )
    packing: Literal["none", "documents"] = Field(
        "none", description="none: one pair a row, padded; documents: the pairs packed into rows of max_length, each "
        "attending only within itself (the loss of none without the padding; kernel: train.packed_attention)"
    )

    @model_validator(mode="after")
    def _languages_given(self) -> TLMConfig:
        if self.language_embeddings and not self.languages:
            raise ValueError("language_embeddings = true needs the list of languages")
        return self


def truncate_pair(src: list[int], tgt: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Trim the longer side first until ``len(src) + len(tgt) <= budget``."""
    src, tgt = list(src), list(tgt)
    while len(src) + len(tgt) > budget:
        if len(src) >= len(tgt):
            src.pop()
        else:
            tgt.pop()
    return src, tgt


class TranslationLM(Objective):
    name: ClassVar[str] = "tlm"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[TLMConfig]] = TLMConfig
    data_kind = "parallel"

    def __init__(self, config: TLMConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: TLMConfig = config
        self.vocab = ctx.vocab
        self.bos_id = ctx.vocab.bos_id
        self.eos_id = ctx.vocab.eos_id
        self.max_length = ctx.max_length
        self.first_position = ctx.encoder.first_position_id  # XLM-R counts from pad id + 1, BERT from 0
        self.pad_position = ctx.encoder.pad_position_id
        self.language_ids = {lang: i for i, lang in enumerate(config.languages)}
        if config.language_embeddings:
            ctx.encoder.resize_token_types(len(config.languages))

    @classmethod
    def check_languages(cls, config: TLMConfig, source: str, languages: list[str]) -> list[str]:
        if not config.language_embeddings:
            return []
        unknown = [lang for lang in dict.fromkeys(languages) if lang not in config.languages]
        if not unknown:
            return []
        return [f"languages: data.{source} has language {', '.join(map(repr, unknown))}, not in {config.languages} "
                "(language_embeddings needs an id for every language it reads)"]

    @classmethod
    def modifies_encoder(cls, config: TLMConfig) -> bool:
        return config.language_embeddings

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        kwargs = {"desc": "tlm pairs"} if isinstance(dataset, datasets.Dataset) else {}  # streaming: no desc
        return dataset.map(self._layout, remove_columns=["src_ids", "tgt_ids"], **kwargs)

    def _layout(self, row: dict[str, Any]) -> dict[str, Any]:
        src, tgt = truncate_pair(row["src_ids"], row["tgt_ids"], self.max_length - 3)
        return {
            "input_ids": [self.bos_id, *src, self.eos_id, *tgt, self.eos_id],
            "src_len": len(src) + 2,  # <s> src </s>
        }

    def ordered(self, examples: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
        """``examples`` with the sides swapped where the per-example order bit says so
        (``random_order``; otherwise unchanged): ``input_ids``, ``src_len`` and the languages."""
        if not self.config.random_order:
            return examples
        out = []
        for example, seed in zip(examples, seeds, strict=True):
            if sample_uniform(seed, "order") < 0.5:
                out.append(example)
                continue
            ids, cut = example["input_ids"], example["src_len"]
            src, tgt = ids[1 : cut - 1], ids[cut:-1]
            out.append({**example, "input_ids": [ids[0], *tgt, ids[cut - 1], *src, ids[-1]], "src_len": len(tgt) + 2,
                        "src_lang": example.get("tgt_lang"), "tgt_lang": example.get("src_lang")})  # fmt: skip
        return out

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        example_seed = example_seeds(examples, generator)
        examples = self.ordered(examples, example_seed)
        input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], self.vocab.pad_id)
        seeds = [derive_seed(seed, "mask") for seed in example_seed]
        masked, labels = mask_tokens(input_ids, self.vocab, generator, self.config, seeds=seeds)
        batch = {"input_ids": masked, "attention_mask": attention_mask, "labels": labels}
        src_part = torch.arange(input_ids.shape[1]) < torch.tensor([e["src_len"] for e in examples])[:, None]
        if self.config.reset_positions:
            tgt_offset = torch.tensor([e["src_len"] for e in examples])[:, None]
            positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            positions = torch.where(src_part, positions, positions - tgt_offset)
            batch["position_ids"] = torch.where(attention_mask.bool(), positions + self.first_position, self.pad_position)
        if self.config.language_embeddings:
            src_lang = torch.tensor([self.language_ids[e["src_lang"]] for e in examples])[:, None]
            tgt_lang = torch.tensor([self.language_ids[e["tgt_lang"]] for e in examples])[:, None]
            batch["token_type_ids"] = torch.where(src_part, src_lang, tgt_lang) * attention_mask
        if self.config.packing == "documents":
            batch = pack_documents(batch, self.max_length, pad_id=self.vocab.pad_id, first_position=self.first_position,
                                   pad_position=self.pad_position)
        return batch

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return masked_units(batch)

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        return masked_lm_output(ctx.encoder, batch)


@hookimpl
def objkit_plugins() -> list[type]:
    return [TranslationLM]
