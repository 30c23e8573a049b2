"""``tatoeba``: Tatoeba sentence retrieval (LASER's files, XTREME / InfoXLM protocol): xx→en and
en→xx top-1 accuracy per language, averaged unweighted over languages. ``objkit eval tatoeba MODEL
--data-dir DIR``; ``[eval.NAME]`` with ``plugin = "tatoeba"`` during training, logged as
``eval/NAME/LANG`` (the mean of both directions) and ``eval/NAME/avg``."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from objkit import PLUGIN_API_VERSION, EvalContext, Evaluator, hookimpl
from objkit.eval import SentenceEmbeddingConfig


class TatoebaConfig(SentenceEmbeddingConfig):
    data_dir: str = Field(description="folder with the LASER files tatoeba.XXX-eng.XXX and tatoeba.XXX-eng.eng")
    langs: str = Field("infoxlm14", description="infoxlm14 (the 14 XNLI languages), xtreme36, all, or codes: deu,fra")


class Tatoeba(Evaluator):
    """Tatoeba retrieval, xx→en and en→xx, per language and averaged (XTREME / InfoXLM)."""

    name: ClassVar[str] = "tatoeba"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config = TatoebaConfig

    def __init__(self, config: TatoebaConfig) -> None:
        from objkit.eval import discover_languages, select_languages

        super().__init__(config)
        self.config: TatoebaConfig = config
        self.langs = select_languages(config.langs, discover_languages(config.data_dir))

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from objkit.eval import evaluate_tatoeba

        res = evaluate_tatoeba(ctx.model, ctx.tokenizer, self.config.data_dir, self.langs,
                               **self.config.embedding_options(ctx))
        out = {lang: float(r["mean"]) for lang, r in res["languages"].items()}
        out["avg"] = float(res["average"]["mean"])
        return out

    @classmethod
    def command(cls) -> Any:
        from objkit.eval import tatoeba_command

        return tatoeba_command


@hookimpl
def objkit_plugins() -> list[type]:
    return [Tatoeba]
