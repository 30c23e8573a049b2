"""``align``: word alignment error rate (AER) against gold links, SimAlign's or XLM-Align's
protocol (``objkit eval align MODEL --src A --tgt B --gold G``). Not run during training: it reads
transformers models' hidden states (``objkit eval`` only)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from objkit import PLUGIN_API_VERSION, EvalContext, Evaluator, PluginConfig, hookimpl


class AlignConfig(PluginConfig):
    src: str = Field(description="source sentences, whitespace-tokenised words, one a line")
    tgt: str = Field(description="their translations, line-aligned with src")
    gold: str = Field(description="gold links: 'SENT I J [S|P]' (1-based) or Pharaoh 'i-j ipj' (0-based)")
    layer: int | None = Field(None, ge=0, description="hidden layer of the word vectors; default 8 for 12 layers, "
                              "else round(2/3 depth)")
    method: Literal["argmax", "itermax", "match", "xlmalign"] = Field("argmax", description="the extraction")
    unit: Literal["subword", "word"] = Field("subword", description="align subwords or word means")
    batch_size: int = Field(32, gt=0, description="sentences per encoder batch")
    max_length: int = Field(512, ge=3, description="tokens per sequence, specials included")


class Align(Evaluator):
    """Word alignment error rate against gold links (SimAlign / XLM-Align)."""

    name: ClassVar[str] = "align"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config = AlignConfig
    during_training: ClassVar[bool] = False

    def __init__(self, config: AlignConfig) -> None:
        from objkit.eval import read_corpus

        super().__init__(config)
        self.config: AlignConfig = config
        self.src, self.tgt, self.gold, _ = read_corpus(config.src, config.tgt, config.gold)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        from objkit.eval import align_corpus, default_layer

        cfg = self.config
        layer = cfg.layer if cfg.layer is not None else default_layer(ctx.num_layers)
        res = align_corpus(ctx.model, ctx.tokenizer, self.src, self.tgt, self.gold, layers=[layer], method=cfg.method,
                           unit=cfg.unit, batch_size=cfg.batch_size, max_length=cfg.max_length, device=ctx.device)
        return {k: float(v) for k, v in res["layers"][layer].items() if k in ("aer", "precision", "recall", "f1")}

    @classmethod
    def command(cls) -> Any:
        from objkit.eval import align_command

        return align_command


@hookimpl
def objkit_plugins() -> list[type]:
    return [Align]
