"""``mrtd`` and ``trtd``: replaced-token detection of XLM-E (Chi et al., ACL 2022), after ELECTRA
(Clark et al., ICLR 2020).

A small generator (a masked LM owned by the objective) fills the masked positions of a
sequence with samples from its output distribution; the discriminator -- the run's encoder,
the model that is exported and fine-tuned -- predicts for every token whether it was replaced.
``mrtd`` (multilingual RTD) reads monolingual text packed like ``mlm``; ``trtd`` (translation
RTD) reads a translation pair laid out like ``tlm`` (``<s> src </s> tgt </s>``, one position
range), so the generator does TLM and a replaced token can be detected from the translation.
Per sequence the loss is XLM-E's ``L_MLM + λ·L_RTD`` (λ = ``disc_weight`` = 50); a recipe
with both objectives on the same encoder trains ``L_MLM + λ·L_MRTD + L_TLM + λ·L_TRTD``.

As in ELECTRA: the generator's token embeddings are the discriminator's (the same tensor, so
both losses train it; the generator's output layer is tied to it too, with a bias of its
own); the generator's own position embeddings; sampling at temperature 1 without gradient
(the discriminator's loss does not reach the generator except through the shared
embeddings); a sample equal to the original token is labelled *original*; the discriminator
head is ``dense(d, d) → GELU → dense(d, 1)``, owned by the objective. Masking (ELECTRA's
``pretrain_helpers.mask``): 15% of tokens selected, 85% of them replaced by ``<mask>`` in the
generator's input and 15% kept, none random; in the discriminator's input every selected
position holds the generator's sample.

Card -- where this departs from the paper, and what it costs:

* **Generator size.** XLM-E reduces the generator's depth, not its width (base: a 4-layer
  generator for the 12-layer discriminator, hidden 768, as we recall the paper -- its text was
  not at hand to check when this was written; ELECTRA-base instead shrinks the width to 1/3). ``generator_depth`` (fraction of the discriminator's
  blocks, default 1/3) and ``generator_width`` (fraction of its hidden size, default 1) set
  it; heads keep the discriminator's head size and the feed-forward is 4× the width. The
  generator is a transformers ``ElectraModel`` whose embeddings are projected to its width
  when it is narrower (ELECTRA's ``embedding_size``). Cost at base: 4 blocks of 7.1M
  parameters (28.4M) plus its head, i.e. about a third more block compute per step than the
  discriminator alone, and the generator's logits over the vocabulary at the masked
  positions (15% of tokens × 250,002) -- the memory that dominates at XLM-R's vocabulary.
* **One generator per objective.** XLM-E trains one generator for MRTD and TRTD; here each
  objective instance owns its own (two 4-layer generators in ``xlm_e_base``; +28M parameters
  and their optimizer state). The embeddings they share with the discriminator are one tensor.
* **Normalisation.** The generator's loss is its cross-entropy summed over the masked tokens
  divided by the *expected* number of masked tokens (``mask_prob`` × the tokens that may be
  masked) instead of the observed count, so ``L_MLM + λ·L_RTD`` is one mean over the same
  units (tokens that may be masked, ``sample_size``) and a step on 2 ranks × B/2 equals a
  step on 1 rank × B. The ratio of observed to expected masked tokens is 1 ± a few percent
  on 512-token blocks, larger on short sequences (at least one token is masked per sequence).
* **Tokens the discriminator is scored on.** Padding never; ``<s>``/``</s>`` only with
  ``mask_specials`` (they are never replaced otherwise, so they would only add trivially
  original tokens to the loss; ELECTRA scores them).
* **Sampling** reads one uniform number per position, drawn in ``collate`` from the example's
  ``sample_seed`` (inverse CDF of the generator's softmax), so samples do not depend on the
  rank or micro-batch an example lands in.
* **Export.** The discriminator is the run's encoder and is exported as such; its masked-LM
  head is not trained by RTD (``uses_all_parameters`` is False) and is exported as initialised.
  The generator and the discriminator head are in every checkpoint (``state_dict``), so a
  resumed run continues exactly.

Metrics: ``gen_loss`` and ``gen_accuracy`` (the generator's MLM on the masked tokens),
``disc_loss``, ``acc_replaced`` and ``acc_original`` (the discriminator's accuracy on the
tokens that were replaced and on the rest), ``disc_auc`` (ELECTRA's: the chance that a replaced
token scores above an original one; 0.5 is chance), ``replaced`` (the fraction of tokens replaced).
"""

from __future__ import annotations

from typing import Any, ClassVar

import datasets
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from objkit import (
    IGNORE_INDEX,
    PLUGIN_API_VERSION,
    BuildContext,
    MaskingConfig,
    Objective,
    ObjectiveOutput,
    StepContext,
    UserError,
    derive_seed,
    example_seeds,
    hookimpl,
    mask_tokens,
    pack_sentences,
    pad_sequences,
)


class RTDConfig(MaskingConfig):
    """ELECTRA's masking (15% selected, 85% ``<mask>``, 15% kept) and XLM-E's loss weight."""

    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of tokens the generator fills")
    replace_prob: float = Field(0.85, ge=0, le=1, description="selected tokens shown as <mask> to the generator")
    random_prob: float = Field(0.0, ge=0, le=1, description="selected tokens shown as a random token")
    disc_weight: float = Field(50.0, gt=0, description="λ: weight of the discriminator's loss (XLM-E, ELECTRA: 50)")
    generator_depth: float = Field(
        1 / 3, gt=0, le=1, description="generator blocks as a fraction of the discriminator's (rounded, at least 1)"
    )
    generator_width: float = Field(
        1.0, gt=0, le=1, description="generator hidden size as a fraction of the discriminator's (whole heads)"
    )
    generator_dropout: float | None = Field(
        None, ge=0, lt=1, description="generator dropout (default: the discriminator's hidden dropout, else 0)"
    )
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the generator (ELECTRA: 1)")


class Generator(nn.Module):
    """A small masked LM whose token embeddings (input and output) are passed in: the
    discriminator's. A transformers ``ElectraModel`` body (own positions, projection to its
    width) and ELECTRA's generator head (dense → GELU → LayerNorm to the embedding size)."""

    def __init__(self, config: Any, device: torch.device) -> None:
        super().__init__()
        from transformers import ElectraModel

        with torch.device(device):
            self.body = ElectraModel(config)
            # token ids never reach the body (inputs_embeds): its own word table is one frozen row
            self.body.embeddings.word_embeddings.requires_grad_(False)
            self.transform = nn.Sequential(
                nn.Linear(config.hidden_size, config.embedding_size), nn.GELU(),
                nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps),
            )
            self.bias = nn.Parameter(torch.zeros(config.vocab_size_out))
        nn.init.normal_(self.transform[0].weight, std=config.initializer_range)
        nn.init.zeros_(self.transform[0].bias)

    def forward(self, embedding: nn.Embedding, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, vocab]`` at the ``positions`` (a boolean ``[B, T]``) of the masked input."""
        hidden = self.body(inputs_embeds=embedding(input_ids), attention_mask=attention_mask).last_hidden_state
        return F.linear(self.transform(hidden[positions]), embedding.weight, self.bias)


def truncate_pair(src: list[int], tgt: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Trim the longer side first until ``len(src) + len(tgt) <= budget`` (as ``tlm``)."""
    src, tgt = list(src), list(tgt)
    while len(src) + len(tgt) > budget:
        (src if len(src) >= len(tgt) else tgt).pop()
    return src, tgt


class ReplacedTokenDetection(Objective):
    """What ``mrtd`` and ``trtd`` share: everything but the layout of a training example."""

    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[RTDConfig]] = RTDConfig

    def __init__(self, config: RTDConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        from transformers import ElectraConfig

        self.config: RTDConfig = config
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length
        encoder = ctx.encoder
        body = encoder.body()
        get_embeddings = getattr(body, "get_input_embeddings", None)
        embedding = get_embeddings() if callable(get_embeddings) else None
        if not isinstance(embedding, nn.Embedding):
            raise UserError(f"objectives.{ctx.instance_name}: encoder {encoder.name!r} exposes no token embedding "
                            "table (body().get_input_embeddings()) for the generator to share")
        self.embedding = embedding
        width, layers = encoder.hidden_size, encoder.num_layers
        head_size = width // max(1, encoder.num_heads or 1)
        heads = max(1, round(encoder.num_heads * config.generator_width)) if encoder.num_heads else 1
        self.generator_layers = max(1, round(layers * config.generator_depth))
        self.generator_hidden = heads * head_size if encoder.num_heads else max(1, round(width * config.generator_width))
        dropout = config.generator_dropout
        if dropout is None:
            dropout = float(getattr(getattr(body, "config", None), "hidden_dropout_prob", 0.0) or 0.0)
        gen_config = ElectraConfig(
            vocab_size=1, embedding_size=width, hidden_size=self.generator_hidden,
            num_hidden_layers=self.generator_layers, num_attention_heads=heads,
            intermediate_size=4 * self.generator_hidden, hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout, max_position_embeddings=max(ctx.max_length, 8),
            type_vocab_size=1, pad_token_id=0,
        )
        gen_config.vocab_size_out = embedding.num_embeddings
        self.generator = Generator(gen_config, ctx.device)
        self.head = nn.Sequential(nn.Linear(width, width, device=ctx.device), nn.GELU(),
                                  nn.Linear(width, 1, device=ctx.device))
        for layer in (self.head[0], self.head[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ data
    def layout(self, examples: list[dict[str, Any]], seeds: list[int]) -> list[list[int]]:
        """The token ids of each example, special tokens included."""
        raise NotImplementedError

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        seeds = example_seeds(examples, generator)  # per example: independent of rank and micro-batch
        input_ids, attention_mask = pad_sequences(self.layout(examples, seeds), self.vocab.pad_id)
        masked, labels = mask_tokens(input_ids, self.vocab, generator, self.config,
                                     seeds=[derive_seed(s, "mask") for s in seeds])
        units = attention_mask.bool()
        if not self.config.mask_specials:
            units &= ~torch.isin(input_ids, torch.tensor(self.vocab.special_ids, dtype=input_ids.dtype))
        uniforms = torch.zeros(input_ids.shape, dtype=torch.float32)
        for row, seed in enumerate(seeds):  # one number per position of the row, from the example's seed
            draw = torch.Generator().manual_seed(derive_seed(seed, "rtd/sample"))
            uniforms[row] = torch.rand(input_ids.shape[1], generator=draw)
        return {"input_ids": masked, "attention_mask": attention_mask, "labels": labels,
                "original_ids": input_ids, "units": units, "uniforms": uniforms}

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["units"].sum())

    # ------------------------------------------------------------------ loss
    @torch.no_grad()
    def sample(self, logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """One token per row of ``logits`` by inverse CDF of ``softmax(logits / T)`` at ``uniforms``."""
        probs = torch.softmax(logits.float() / self.config.temperature, dim=-1)
        cdf = probs.cumsum(dim=-1)
        index = torch.searchsorted(cdf, (uniforms.float() * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
        return index.clamp(max=logits.shape[-1] - 1)

    @staticmethod
    def replaced_labels(original: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
        """1.0 where the discriminator's input differs from the original (a sample equal to the
        original token counts as original, ELECTRA), else 0.0."""
        return (corrupted != original).float()

    @staticmethod
    def ranking_auc(scores: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        """ROC AUC of ``scores`` for ``truth`` (1.0 = replaced): the chance that a replaced token
        scores above an original one (Mann-Whitney U / (n₊·n₋); ties in arbitrary order), 0.5
        when either class is absent. ELECTRA's ``disc_auc``: unlike ``acc_replaced``, which stays
        0.0 until a replaced token's probability passes 1/2, it leaves 0.5 as soon as the
        discriminator ranks replaced tokens above original ones at all."""
        n = truth.numel()
        positives = truth.sum()
        negatives = n - positives
        ranks = torch.empty(n, dtype=torch.float32, device=scores.device)
        ranks[scores.argsort()] = torch.arange(1, n + 1, dtype=torch.float32, device=scores.device)
        u = (ranks * truth).sum() - positives * (positives + 1) / 2
        auc = u / (positives * negatives).clamp(min=1)
        return torch.where((positives > 0) & (negatives > 0), auc, auc.new_tensor(0.5))

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        encoder = ctx.encoder
        self.generator.train(bool(getattr(encoder, "training", True)))
        labels, original, units = batch["labels"], batch["original_ids"], batch["units"]
        selected = labels != IGNORE_INDEX
        logits = self.generator(self.embedding, batch["input_ids"], batch["attention_mask"], selected)
        targets = labels[selected]
        gen_losses = F.cross_entropy(logits.float(), targets, reduction="none")
        samples = self.sample(logits.detach(), batch["uniforms"][selected])
        corrupted = original.clone()
        corrupted[selected] = samples
        replaced = self.replaced_labels(original, corrupted)

        hidden = encoder(corrupted, batch["attention_mask"])[-1]
        disc_logits = self.head(hidden[units]).squeeze(-1).float()
        truth = replaced[units]
        disc_losses = F.binary_cross_entropy_with_logits(disc_logits, truth, reduction="none")
        n_units = units.sum()
        expected_masked = self.config.mask_prob * n_units.clamp(min=1)
        loss = (gen_losses.sum() / expected_masked) + self.config.disc_weight * disc_losses.sum() / n_units.clamp(min=1)

        with torch.no_grad():
            predicted = (disc_logits > 0).float()
            hits = (predicted == truth).float()
            n_replaced = truth.sum()
            n_original = truth.numel() - n_replaced
            metrics: dict[str, float | torch.Tensor] = {
                "gen_loss": gen_losses.mean() if gen_losses.numel() else logits.new_zeros(()).float(),
                "gen_accuracy": (logits.argmax(-1) == targets).float().mean() if targets.numel()
                else logits.new_zeros(()).float(),
                "disc_loss": disc_losses.sum() / n_units.clamp(min=1),
                "acc_replaced": (hits * truth).sum() / n_replaced.clamp(min=1),
                "acc_original": (hits * (1 - truth)).sum() / n_original.clamp(min=1),
                "replaced": n_replaced / n_units.clamp(min=1),
                "disc_auc": self.ranking_auc(disc_logits, truth),
            }
        return ObjectiveOutput(loss, sample_size=int(n_units), metrics=metrics)

    # ------------------------------------------------------------------ modules and state
    @property
    def uses_all_parameters(self) -> bool:
        return False  # the discriminator's masked-LM head gets no gradient from RTD

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "disc_head": self.head}

    def plan(self) -> dict[str, int | float | str]:
        own = sum(p.numel() for p in self.generator.parameters() if p.requires_grad)
        return {
            "generator parameters": own,
            "generator": f"{self.generator_layers} blocks, hidden {self.generator_hidden} "
                         f"(token embeddings shared with the discriminator)",
            "discriminator head parameters": sum(p.numel() for p in self.head.parameters()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "disc_head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.generator.load_state_dict(state["generator"])
            self.head.load_state_dict(state["disc_head"])


class MultilingualRTD(ReplacedTokenDetection):
    """MRTD: monolingual text in blocks of whole sentences, as ``mlm`` packs it."""

    name: ClassVar[str] = "mrtd"
    data_kind = "text"

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        return pack_sentences(dataset, self.max_length, self.vocab.bos_id, self.vocab.eos_id)

    def layout(self, examples: list[dict[str, Any]], seeds: list[int]) -> list[list[int]]:
        return [list(e["input_ids"]) for e in examples]


class TranslationRTD(ReplacedTokenDetection):
    """TRTD: a translation pair as one sequence ``<s> src </s> tgt </s>`` (``tlm``'s layout)."""

    name: ClassVar[str] = "trtd"
    data_kind = "parallel"

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        kwargs = {"desc": "trtd pairs"} if isinstance(dataset, datasets.Dataset) else {}  # streaming: no desc
        return dataset.map(self._layout, remove_columns=["src_ids", "tgt_ids"], **kwargs)

    def _layout(self, row: dict[str, Any]) -> dict[str, Any]:
        src, tgt = truncate_pair(row["src_ids"], row["tgt_ids"], self.max_length - 3)
        return {"input_ids": [self.vocab.bos_id, *src, self.vocab.eos_id, *tgt, self.vocab.eos_id]}

    def layout(self, examples: list[dict[str, Any]], seeds: list[int]) -> list[list[int]]:
        return [list(e["input_ids"]) for e in examples]


@hookimpl
def objkit_plugins() -> list[type]:
    return [MultilingualRTD, TranslationRTD]
