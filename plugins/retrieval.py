"""``retrieval``: top-1 cross-lingual sentence retrieval on two line-aligned files, the XTREME /
InfoXLM protocol (an intermediate layer mean-pooled, cosine nearest neighbour, both directions,
percent). ``objkit eval retrieval MODEL --src A --tgt B``; ``[eval.NAME]`` with ``plugin =
"retrieval"`` during training, logged as ``eval/NAME/acc`` (the mean of both directions),
``eval/NAME/src2tgt`` and ``eval/NAME/tgt2src``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from objkit import PLUGIN_API_VERSION, EvalContext, Evaluator, UserError, hookimpl
from objkit.eval import SentenceEmbeddingConfig


class RetrievalConfig(SentenceEmbeddingConfig):
    src: str = Field(description="sentences, one a line")
    tgt: str = Field(description="their translations, line-aligned with src")
    max_lines: int | None = Field(None, gt=0, description="use the first N lines")


class Retrieval(Evaluator):
    """Top-1 retrieval accuracy between two line-aligned files (XTREME / InfoXLM protocol)."""

    name: ClassVar[str] = "retrieval"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config = RetrievalConfig

    def __init__(self, config: RetrievalConfig) -> None:
        from objkit.eval import read_aligned

        super().__init__(config)
        self.config: RetrievalConfig = config
        try:
            src, tgt = read_aligned(config.src, config.tgt)
        except OSError as exc:
            raise UserError(str(exc)) from None
        self.src, self.tgt = src[: config.max_lines], tgt[: config.max_lines]

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from objkit.eval import evaluate_pair

        scores = evaluate_pair(ctx.model, ctx.tokenizer, self.src, self.tgt, **self.config.embedding_options(ctx))
        return {"acc": scores["mean"], "src2tgt": scores["src2tgt"], "tgt2src": scores["tgt2src"]}

    @classmethod
    def command(cls) -> Any:
        from objkit.eval import retrieval_command

        return retrieval_command


@hookimpl
def objkit_plugins() -> list[type]:
    return [Retrieval]
