"""Options every sentence-embedding evaluator shares (plugin API 1.7): which hidden layer is
pooled and how, batch size and sentence length, as one config base class. Light on purpose
(no torch): evaluator plugins subclass it at import time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from objkit.contract.encoder import PluginConfig

if TYPE_CHECKING:
    from objkit.contract.evaluator import EvalContext


class SentenceEmbeddingConfig(PluginConfig):
    """Base of the ``retrieval`` and ``tatoeba`` configs (XTREME / InfoXLM protocol: an
    intermediate layer, mean-pooled). :meth:`embedding_options` resolves the defaults against the
    run being evaluated."""

    layer: int | None = Field(None, ge=0, description="hidden layer to pool (0 = embeddings); default 8 for 12 "
                              "layers, else round(2/3 depth)")
    pooling: Literal["mean", "cls"] = Field("mean", description="mean: the tokens' mean (specials included); "
                                            "cls: the first token")
    batch_size: int = Field(64, gt=0, description="sentences per encoder batch")
    max_length: int | None = Field(None, ge=2, description="tokens per sentence, specials included; default: the "
                                   "run's [model] max_length (objkit eval: 128)")

    def embedding_options(self, ctx: EvalContext) -> dict[str, Any]:
        """``layer``, ``pooling``, ``batch_size``, ``max_length`` and ``device`` keywords for
        :func:`objkit.eval.evaluate_pair` / :func:`objkit.eval.evaluate_tatoeba`, defaults
        resolved for ``ctx``'s model."""
        from objkit.eval.retrieval import default_layer

        return {"layer": self.layer if self.layer is not None else default_layer(ctx.num_layers),
                "pooling": self.pooling, "batch_size": self.batch_size,
                "max_length": self.max_length or ctx.max_length or 128, "device": ctx.device}
