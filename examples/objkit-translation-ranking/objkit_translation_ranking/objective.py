"""``translation_ranking``: LaBSE's translation ranking loss (Feng et al., ACL 2022; arXiv 2007.01852).

A dual encoder (one shared encoder for both languages) embeds both sides of each translation
pair as the L2-normalised ``<s>`` vector; each source sentence must rank its translation
first among all targets of the batch (in-batch negatives), with an additive margin ``m``
on the positive (additive margin softmax, Yang et al., IJCAI 2019)::

    φ(x, y)  = cos(e_x, e_y)
    L(x→y)   = −1/B Σ_i log  e^{s(φ(x_i,y_i) − m)} / ( e^{s(φ(x_i,y_i) − m)} + Σ_{n≠i} e^{s φ(x_i,y_n)} )
    L        = L(x→y) + L(y→x)                                   (bidirectional: the paper's sum)

Defaults are the paper's where it states them: margin 0.3, the ``<s>`` vector of the last
layer, L2-normalised, bidirectional, negatives gathered from every replica
("cross-accelerator negative sampling"). The scale ``s`` is not given in the paper's loss;
20 is the usual choice for cosine logits (on unit vectors with s = 1 the softmax is almost
flat and a 0.3 margin dominates it). ``layer``, ``pooling`` and ``scale`` are configurable.

Distributed: with ``world_size > 1`` each rank all-gathers both sides' vectors, so a query
ranks against ``B × world_size`` candidates. The gather is differentiable end to end
(``objkit.gather_rows(..., rank=)``: its backward pass sums every rank's gradient for the
gathered vectors), so each rank's vectors also get the gradient of the other ranks' queries
that rank them, and the step's gradient is that of one process holding the whole global
batch: 1 rank × B and 2 ranks × B/2 give the same losses (objkit's conformance kit checks
it). Ranks may hold different numbers of pairs (sizes are gathered first).

Uses only objkit's public plugin API (``objkit.__all__``, plugin API 1.1): nothing in this
package imports objkit's internal modules. The cross-rank gather is ``objkit.gather_rows`` with
``rank=``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from objkit import (
    AllGather,
    BuildContext,
    Objective,
    ObjectiveOutput,
    PluginConfig,
    StepContext,
    UserError,
    gather_rows,
    hookimpl,
    pad_sequences,
)


class TranslationRankingConfig(PluginConfig):
    margin: float = Field(0.3, ge=0, description="additive margin m subtracted from the positive's cosine (LaBSE: 0.3)")
    scale: float = Field(20.0, gt=0, description="logits are scale × cosine")
    layer: int | None = Field(None, ge=1, description="hidden state used: output of this block (default: the last)")
    pooling: Literal["cls", "mean"] = Field("cls", description="cls: the <s> vector (LaBSE); mean: over tokens")
    bidirectional: bool = Field(True, description="L(x→y) + L(y→x) (LaBSE); false: L(x→y) only")
    gather: bool = Field(True, description="negatives from every rank's batch (all_gather) when distributed")


def ranking_loss(
    queries: torch.Tensor, candidates: torch.Tensor, offset: int, *, margin: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive-margin softmax of ``queries [B, d]`` over ``candidates [N, d]`` (unit vectors);
    query ``i``'s positive is candidate ``offset + i``. Returns (mean loss, top-1 accuracy as a
    detached 0-dim tensor: objkit reads metrics back once per logging interval)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        cosines = queries.float() @ candidates.float().T
        labels = torch.arange(queries.shape[0], device=queries.device) + offset
        positive = F.one_hot(labels, num_classes=candidates.shape[0]).to(cosines.dtype)
        loss = F.cross_entropy(scale * (cosines - margin * positive), labels)
    accuracy = (cosines.detach().argmax(dim=1) == labels).float().mean() if queries.shape[0] else cosines.new_zeros(())
    return loss, accuracy


class TranslationRanking(Objective):
    """LaBSE's bidirectional dual-encoder translation ranking with additive margin."""

    name: ClassVar[str] = "translation_ranking"
    Config: ClassVar[type[TranslationRankingConfig]] = TranslationRankingConfig
    plugin_api: ClassVar[str] = "1.2"  # gather_rows(rank=...) (1.1), tensor metrics (1.2)
    data_kind = "parallel"

    def __init__(self, config: TranslationRankingConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: TranslationRankingConfig = config
        layers = ctx.encoder.num_layers
        if config.layer is not None and config.layer > layers:
            raise UserError(
                f"objectives.{ctx.instance_name}.layer: {config.layer} is deeper than the encoder "
                f"({layers} layers) (got {config.layer})"
            )
        self.layer = config.layer or layers
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length
        self.all_gather: AllGather | None = None
        """Set by tests to simulate ranks; None: ``torch.distributed`` when ``world_size > 1``."""

    # ------------------------------------------------------------------ data
    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Sources then targets as one ``[2B, L]`` batch (one encoder pass): rows ``[0, B)``
        are ``<s> src </s>``, rows ``[B, 2B)`` ``<s> tgt </s>``. No randomness."""
        budget = self.max_length - 2
        bos, eos = self.vocab.bos_id, self.vocab.eos_id
        sides = [[bos, *e["src_ids"][:budget], eos] for e in examples]
        sides += [[bos, *e["tgt_ids"][:budget], eos] for e in examples]
        input_ids, attention_mask = pad_sequences(sides, self.vocab.pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        """One unit per translation pair (the batch holds both sides of each)."""
        return int(batch["input_ids"].shape[0]) // 2

    @property
    def uses_all_parameters(self) -> bool:
        return False  # no LM head, and blocks past `layer` are not run

    # ------------------------------------------------------------------ loss
    def embed(self, encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 vectors ``[N, d]`` of layer ``layer`` (only its blocks run)."""
        hidden = encoder(input_ids, attention_mask, up_to_layer=self.layer)[self.layer]
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            return F.normalize(pooled.float(), dim=-1)

    def _gathered(self, local: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, int]:
        if not self.config.gather or ctx.world.world_size <= 1:
            return local, 0
        rows, sizes = gather_rows(local, self.all_gather, rank=ctx.world.rank)  # None: torch.distributed
        return rows, sum(sizes[: ctx.world.rank])

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        vectors = self.embed(ctx.encoder, batch["input_ids"], batch["attention_mask"])
        pairs = vectors.shape[0] // 2
        sources, targets = vectors[:pairs], vectors[pairs:]
        all_targets, offset = self._gathered(targets, ctx)
        loss, accuracy = ranking_loss(sources, all_targets, offset, margin=self.config.margin, scale=self.config.scale)
        accuracies = [accuracy]
        if self.config.bidirectional:
            all_sources, offset = self._gathered(sources, ctx)
            backward, accuracy = ranking_loss(
                targets, all_sources, offset, margin=self.config.margin, scale=self.config.scale
            )
            loss = loss + backward
            accuracies.append(accuracy)
        metrics = {
            "accuracy": sum(accuracies) / len(accuracies),
            "candidates": float(all_targets.shape[0]),
        }
        return ObjectiveOutput(loss=loss, sample_size=pairs, metrics=metrics)

    def plan(self) -> dict[str, int | float | str]:
        return {
            "vectors": f"layer {self.layer} {self.config.pooling}, L2-normalised; scale {self.config.scale}, "
            f"margin {self.config.margin}"
        }


@hookimpl
def objkit_plugins() -> list[type]:
    return [TranslationRanking]
