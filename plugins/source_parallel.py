"""``type = "parallel"``: translation pairs from local files.

Each ``pairs`` entry is two line-aligned files ``src``/``tgt`` (Moses layout; ``.txt``,
``.jsonl`` or ``.parquet`` like ``text`` sources, globs matched in sorted order) or one bitext
file ``path``: ``.tsv`` (``src<TAB>tgt[<TAB>score]``, the CCMatrix/NLLB/WikiMatrix layout;
``columns`` and ``min_score``) or ``.tmx`` (OPUS). The core reads them
(:class:`objkit.AlignedFilesPart`, :class:`objkit.BitextFilePart`): line counts of aligned
files compared, bitext parsed with the line named, before training.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from objkit import (
    PLUGIN_API_VERSION,
    AlignedFilesPart,
    BitextFilePart,
    Source,
    SourceConfig,
    SourceContext,
    UserError,
    hookimpl,
)


class ParallelPair(BaseModel):
    """One entry of ``pairs``: line-aligned ``src``/``tgt`` files, or one bitext file ``path``
    (``.tsv``: ``src<TAB>tgt[<TAB>score]``, the CCMatrix/NLLB/WikiMatrix layout; ``.tmx``: OPUS)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    src: str | None = Field(None, description="file or glob, line-aligned with tgt")
    tgt: str | None = None
    path: str | None = Field(None, description="a .tsv or .tmx bitext file or glob (maybe .gz/.xz/.bz2)")
    src_lang: str
    tgt_lang: str
    src_field: str = "text"
    tgt_field: str = "text"
    min_score: float | None = Field(None, description=".tsv: keep pairs whose score column is at least this")
    columns: list[Literal["src", "tgt", "score", "-"]] | None = Field(
        None, description=".tsv: what each tab-separated column holds ('-' skips one); default src, tgt[, score]",
    )

    @model_validator(mode="after")
    def _files_or_path(self) -> ParallelPair:
        if self.path is None and (self.src is None or self.tgt is None):
            raise ValueError("give src and tgt (line-aligned files) or path (a .tsv or .tmx bitext)")
        if self.path is not None and (self.src is not None or self.tgt is not None):
            raise ValueError("give either path (a bitext file) or src and tgt, not both")
        if self.columns is not None:
            if sorted(c for c in self.columns if c != "-") not in (["src", "tgt"], ["score", "src", "tgt"]):
                raise ValueError(f"columns must name src and tgt once each, score at most once (got {self.columns})")
            if self.min_score is not None and "score" not in self.columns:
                raise ValueError("min_score needs a score column in columns")
        if self.path is None and (self.columns is not None or self.min_score is not None):
            raise ValueError("columns and min_score apply to a .tsv path, not to src/tgt files")
        return self


class ParallelSource(SourceConfig):
    type: Literal["parallel"]
    pairs: list[ParallelPair] = Field(min_length=1)


class ParallelFiles(Source):
    """Line-aligned file pairs and bitext files (group = ``src_lang-tgt_lang``)."""

    name: ClassVar[str] = "parallel"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = ParallelSource
    yields = "parallel"

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return list(dict.fromkeys(f"{p.src_lang}-{p.tgt_lang}" for p in config.pairs))

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[Any]:
        out: list[Any] = []
        for i, pair in enumerate(config.pairs):
            key = ctx.key(f"pairs[{i}]")
            if pair.path is not None:
                columns = tuple(pair.columns) if pair.columns is not None else None
                out += [BitextFilePart(path, f"{key}.path", pair.src_lang, pair.tgt_lang, columns, pair.min_score)
                        for path in ctx.expand(pair.path, f"{key}.path")]
                continue
            srcs, tgts = ctx.expand(pair.src, f"{key}.src"), ctx.expand(pair.tgt, f"{key}.tgt")
            if len(srcs) != len(tgts):
                raise UserError(f"{key}: src '{pair.src}' matches {len(srcs)} files but tgt '{pair.tgt}' "
                                f"matches {len(tgts)}")
            out += [AlignedFilesPart(s, t, key, pair.src_lang, pair.tgt_lang, pair.src_field, pair.tgt_field)
                    for s, t in zip(srcs, tgts)]
        return out


@hookimpl
def objkit_plugins() -> list[type]:
    return [ParallelFiles]
