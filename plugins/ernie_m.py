"""ERNIE-M's objectives (Ouyang et al., EMNLP 2021): cross-attention masked LM (``camlm``) and
back-translation masked LM (``btmlm``).

Card (which paper, where this departs, what it costs):

* **Paper**: "ERNIE-M: Enhanced Multilingual Representation by Aligning Cross-lingual Semantics
  with Monolingual Corpora" (Ouyang et al., EMNLP 2021), initialised from XLM-R. Only weights and
  fine-tuning scripts were released, so everything below is read from the paper's description.
* **CAMLM** (translation pairs, laid out like TLM: ``<s> src </s> tgt </s>``, masked like MLM).
  An attention mask lets every token of the source attend only to the target and every token of
  the target only to the source, so a masked token must be recovered from the translation.
  *Special tokens* (the paper does not say): ``<s>`` and the first ``</s>`` belong to the
  source side, the last ``</s>`` to the target side; no token attends to itself (its own
  embedding still reaches its hidden state through the residual path). *Two hops*: with the
  paper's mask, layer 2 of a source position reads target states that layer 1 built from the
  source, so "cannot see its own sentence" holds exactly for the first block only.
  ``strict = true`` (not in the paper) closes that path: a seeded per-example bit picks the side
  to predict; only that side is masked, both sides attend only to the other (context) side's
  tokens, so no state ever carries the predicted sentence; each pair then trains one direction.
* **BTMLM** (monolingual sentences, one per example, not packed): ``k`` placeholder ``<mask>``
  tokens are appended, ``<s> sent </s> <mask>*k </s>`` with ``k = round(placeholder_ratio ×
  len(sent))`` (paper: the placeholders stand for the translation; ratio 1.0 by default, a
  choice). Pass 1, under ``torch.no_grad()``: with CAMLM's mask in one direction (placeholders
  read only the sentence, the sentence only itself), the argmax of the LM head over non-special
  tokens fills the placeholders: the pseudo-translation. Pass 2, with gradient: the sentence's
  tokens are masked (15%/80-10-10, the placeholders' predictions never) and predicted from the
  pseudo-translation with CAMLM's mask (``second_pass = "camlm"``; the predicted sentence reads
  only the pseudo side, which reads only itself) or with full attention (``"mlm"``).
  *Departures*: the paper generates a pseudo-translation in a chosen target language (it feeds a
  language signal); XLM-R has no language embeddings, so here the model fills the placeholders
  with whatever it predicts (with an XLM-R initialisation often a copy-like or other-language
  paraphrase); greedy argmax only, no sampling; pass 1 runs in the encoder's current train/eval
  mode (dropout on while training).
* **Settings** the paper leaves open or this code does not reproduce: its two training stages
  (CAMLM + MLM first, then BTMLM + TLM) are two runs here (or one run with all four objectives,
  as ``recipes/ernie_m_base.toml`` does); masking is objkit's per-token Bernoulli draw.
* **Cost**: CAMLM costs what TLM costs plus a ``[B, L, L]`` boolean mask per micro-batch (SDPA
  then cannot use its fused no-mask kernel). BTMLM runs the encoder twice (pass 1 without
  activations kept): about 1.3-1.5× the compute of MLM on the same tokens, and its sequences
  are about twice the sentence.

The mask reaches the encoder as a ``[B, L, L]`` ``attention_mask`` (plugin API, Encoder
contract: the ``xlmr`` and ``bert`` encoders honour it); ``batch["attention_mask"]`` itself
stays the 2-D padding mask, so tokens/s and padding are counted as for TLM.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field

from objkit import (
    IGNORE_INDEX,
    PLUGIN_API_VERSION,
    BuildContext,
    Encoder,
    MaskingConfig,
    Objective,
    ObjectiveOutput,
    StepContext,
    derive_seed,
    example_seeds,
    hookimpl,
    lm_head_loss,
    mask_tokens,
    masked_units,
    pad_sequences,
    sample_uniform,
)

BOTH = -1  # cam_context: every token reads the other side (the paper's mask)


def cross_attention_mask(attention_mask: torch.Tensor, side_ids: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``[B, L, L]`` boolean mask, True where query ``q`` may attend key ``k``.

    ``side_ids`` ``[B, L]``: 0 for the first sentence's positions, 1 for the second's.
    ``context`` ``[B]``: ``-1`` (the paper's CAMLM) -- each side attends only to the other;
    ``0`` or ``1`` -- every position attends only to that side. Padding keys are never attended;
    padding query rows attend to every real key (their output is never read)."""
    real = attention_mask.bool()
    query_side, key_side = side_ids[:, :, None], side_ids[:, None, :]
    to_context = key_side == context[:, None, None]
    allowed = torch.where((context == BOTH)[:, None, None], query_side != key_side, to_context)
    allowed = torch.where(real[:, :, None], allowed, torch.ones_like(allowed)) & real[:, None, :]
    return allowed


def camlm_output(encoder: Encoder, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
    """Cross-entropy of the LM head at the labelled positions under the cross-attention mask."""
    mask = batch["attention_mask"]  # no cam_context: plain MLM, full attention over real tokens
    if "cam_context" in batch:
        mask = cross_attention_mask(mask, batch["side_ids"], batch["cam_context"])
    hidden = encoder(batch["input_ids"], mask)[-1]
    labels = batch["labels"]
    selected = labels != IGNORE_INDEX
    head = lm_head_loss(encoder, hidden[selected], labels[selected])
    return ObjectiveOutput(loss=head.loss, sample_size=head.rows, metrics={"accuracy": head.accuracy})


def keep_side(input_ids: torch.Tensor, masked: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masking and labels only where ``keep``; elsewhere the original tokens, not predicted."""
    return torch.where(keep, masked, input_ids), torch.where(keep, labels, IGNORE_INDEX)


def side_ids_of(lengths: list[int], cuts: list[int]) -> torch.Tensor:
    """``[B, max(lengths)]``: 0 before each row's cut, 1 from it (padding: 1, masked out anyway)."""
    width = max(lengths)
    return (torch.arange(width)[None, :] >= torch.tensor(cuts)[:, None]).long()


class CAMLMConfig(MaskingConfig):
    strict: bool = Field(
        False, description="not in the paper: predict one side per pair (seeded), both sides read only the other "
                           "side, so no layer sees the predicted sentence")


class CrossAttentionMLM(Objective):
    name: ClassVar[str] = "camlm"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[CAMLMConfig]] = CAMLMConfig
    data_kind = "parallel"

    def __init__(self, config: CAMLMConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: CAMLMConfig = config
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        kwargs = {"desc": "camlm pairs"} if isinstance(dataset, datasets.Dataset) else {}
        return dataset.map(self._layout, remove_columns=["src_ids", "tgt_ids"], **kwargs)

    def _layout(self, row: dict[str, Any]) -> dict[str, Any]:
        src, tgt = list(row["src_ids"]), list(row["tgt_ids"])
        while len(src) + len(tgt) > self.max_length - 3:  # the longer side first, as TLM
            (src if len(src) >= len(tgt) else tgt).pop()
        bos, eos = self.vocab.bos_id, self.vocab.eos_id
        return {"input_ids": [bos, *src, eos, *tgt, eos], "src_len": len(src) + 2}

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        example_seed = example_seeds(examples, generator)
        input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], self.vocab.pad_id)
        seeds = [derive_seed(seed, "mask") for seed in example_seed]
        masked, labels = mask_tokens(input_ids, self.vocab, generator, self.config, seeds=seeds)
        side_ids = side_ids_of([len(e["input_ids"]) for e in examples], [e["src_len"] for e in examples])
        if self.config.strict:  # predict one side, read the other
            predicted = torch.tensor([int(sample_uniform(seed, "camlm side") >= 0.5) for seed in example_seed])
            masked, labels = keep_side(input_ids, masked, labels, side_ids == predicted[:, None])
            context = 1 - predicted
        else:
            context = torch.full((len(examples),), BOTH, dtype=torch.long)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels,
                "side_ids": side_ids, "cam_context": context}

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return masked_units(batch)

    def plan(self) -> dict[str, int | float | str]:
        return {"attention mask bytes per sequence": self.max_length**2}  # [L, L] bool

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        return camlm_output(ctx.encoder, batch)


class BTMLMConfig(MaskingConfig):
    placeholder_ratio: float = Field(
        1.0, gt=0.0, le=4.0, description="placeholders appended per sentence token (k = round(ratio × n), at least 1)")
    second_pass: Literal["camlm", "mlm"] = Field(
        "camlm", description="pass 2: the sentence reads only the pseudo-translation (camlm) or everything (mlm)")


class BackTranslationMLM(Objective):
    name: ClassVar[str] = "btmlm"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[BTMLMConfig]] = BTMLMConfig
    data_kind = "text"

    def __init__(self, config: BTMLMConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: BTMLMConfig = config
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        kwargs = {"desc": "btmlm sentences"} if isinstance(dataset, datasets.Dataset) else {}
        dataset = dataset.filter(lambda row: len(row["input_ids"]) > 0, **kwargs)
        return dataset.map(self._layout, **kwargs)

    def _layout(self, row: dict[str, Any]) -> dict[str, Any]:
        sentence = list(row["input_ids"])
        ratio = self.config.placeholder_ratio
        while len(sentence) > 1 and len(sentence) + max(1, round(ratio * len(sentence))) > self.max_length - 3:
            sentence.pop()
        k = max(1, round(ratio * len(sentence)))
        bos, eos, mask = self.vocab.bos_id, self.vocab.eos_id, self.vocab.mask_id
        return {"input_ids": [bos, *sentence, eos, *([mask] * k), eos], "src_len": len(sentence) + 2}

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        example_seed = example_seeds(examples, generator)
        input_ids, attention_mask = pad_sequences([e["input_ids"] for e in examples], self.vocab.pad_id)
        seeds = [derive_seed(seed, "mask") for seed in example_seed]
        masked, labels = mask_tokens(input_ids, self.vocab, generator, self.config, seeds=seeds)
        lengths = [len(e["input_ids"]) for e in examples]
        side_ids = side_ids_of(lengths, [e["src_len"] for e in examples])
        masked, labels = keep_side(input_ids, masked, labels, side_ids == 0)  # predict the sentence only
        placeholders = (side_ids == 1) & (input_ids == self.vocab.mask_id)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels, "side_ids": side_ids,
                "fill_ids": input_ids, "placeholders": placeholders}

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return masked_units(batch)

    def plan(self) -> dict[str, int | float | str]:
        return {"attention mask bytes per sequence": self.max_length**2,
                "encoder passes per micro-batch": "2 (pass 1 without gradient: no activations kept)"}

    def pseudo_translation(self, encoder: Encoder, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Pass 1 (no gradient): the placeholders read the clean sentence only (the sentence only
        itself); the LM head's argmax over non-special tokens fills them. Returns pass 2's ids."""
        rows = batch["input_ids"].shape[0]
        with torch.no_grad():
            own = torch.zeros(rows, dtype=torch.long, device=batch["input_ids"].device)  # context: the sentence
            mask = cross_attention_mask(batch["attention_mask"], batch["side_ids"], own)
            hidden = encoder(batch["fill_ids"], mask)[-1]
            slots = batch["placeholders"]
            logits = encoder.lm_logits(hidden[slots]).float()
            specials = torch.tensor(self.vocab.special_ids, dtype=torch.long, device=logits.device)
            logits[:, specials[specials < logits.shape[1]]] = torch.finfo(logits.dtype).min
            filled = batch["input_ids"].clone()
            filled[slots] = logits.argmax(dim=-1)
        return filled

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        pair = dict(batch, input_ids=self.pseudo_translation(ctx.encoder, batch))
        if self.config.second_pass == "camlm":  # the sentence reads only the pseudo-translation
            pair["cam_context"] = torch.ones_like(batch["side_ids"][:, 0])
        return camlm_output(ctx.encoder, pair)


@hookimpl
def objkit_plugins() -> list[type]:
    return [CrossAttentionMLM, BackTranslationMLM]
