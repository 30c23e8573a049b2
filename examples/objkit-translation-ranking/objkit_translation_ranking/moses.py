"""``type = "moses"``: a Moses/OPUS-style parallel corpus, as OPUS ships its Moses downloads.

OPUS (https://opus.nlpl.eu) offers every corpus as a Moses download: a zip of two line-aligned
text files named ``CORPUS.L1-L2.L1`` and ``CORPUS.L1-L2.L2``, the language codes of the pair in
alphabetical order (``OpenSubtitles.de-en.de`` / ``OpenSubtitles.de-en.en``). This source finds
them from a ``prefix`` (folder and corpus name, a glob for several corpora) and the language
pairs, in either order of the codes (an alphabetical pair first)::

    [data.opus]
    type = "moses"
    prefix = "corpora/OpenSubtitles"   # or "corpora/*" for every corpus in the folder
    pairs = ["en-de", "en-fr"]          # source-target: the files of de-en give en -> de pairs

objkit's core reads the files (``objkit.AlignedFilesPart``): UTF-8 checked before training with
the line named, equal line counts, tokenized once and cached, or streamed; the recipe keys in
messages are ``data.NAME.pairs[i]``. Uses only objkit's public plugin API.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from objkit import AlignedFilesPart, Source, SourceConfig, SourceContext, UserError, hookimpl


class MosesConfig(SourceConfig):
    type: Literal["moses"]
    prefix: str = Field(description="folder and corpus name before .L1-L2.L (a glob matches several corpora)")
    pairs: list[str] = Field(min_length=1, description='language pairs "src-tgt", e.g. ["en-de"]')

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, pairs: list[str]) -> list[str]:
        for pair in pairs:
            codes = pair.split("-")
            if len(codes) != 2 or not all(codes) or codes[0] == codes[1]:
                raise ValueError(f'expected "src-tgt" language pairs such as "en-de" (got {pair!r})')
        return pairs


def find_pair(ctx: SourceContext, prefix: str, src: str, tgt: str, key: str) -> list[tuple[Any, Any]]:
    """``(src file, tgt file)`` of every corpus ``prefix`` matches for the pair, named
    ``PREFIX.A-B.src`` / ``PREFIX.A-B.tgt`` with ``A-B`` in alphabetical order (else the other)."""
    for a, b in sorted({(src, tgt), (tgt, src)}):
        try:
            srcs = ctx.expand(f"{prefix}.{a}-{b}.{src}", key)
        except UserError:
            continue
        found = []
        for path in srcs:
            other = path.with_name(path.name[: -len(src)] + tgt)
            if not other.is_file():
                raise UserError(f"{key}: {path} has no line-aligned {other.name} beside it "
                                f"(a Moses/OPUS corpus is two files, .{src} and .{tgt})")
            found.append((path, other))
        return found
    first, second = sorted([src, tgt])
    raise UserError(f"{key}: no Moses/OPUS files {prefix}.{first}-{second}.{src} / .{tgt} "
                    f"(nor {prefix}.{second}-{first}.*)")


class MosesCorpus(Source):
    """Line-aligned Moses/OPUS file pairs; one group per language pair (``src-tgt``)."""

    name: ClassVar[str] = "moses"
    plugin_api: ClassVar[str] = "1.6"  # the source plugin kind (plugin API 1.6)
    Config = MosesConfig
    yields = "parallel"
    modes = ("map", "streaming")

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return list(dict.fromkeys(config.pairs))

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[Any]:
        out = []
        for i, pair in enumerate(config.pairs):
            src, tgt = pair.split("-")
            key = ctx.key(f"pairs[{i}]")
            out += [AlignedFilesPart(s, t, key, src, tgt, src_key=key, tgt_key=key)
                    for s, t in find_pair(ctx, config.prefix, src, tgt, key)]
        return out


@hookimpl
def objkit_plugins() -> list[type]:
    return [MosesCorpus]
