"""``type = "text"``: monolingual sentences from local files, each entry with its language.

``.txt`` (one sentence a line; Moses-style ``.en``/``.de`` too), ``.jsonl`` (``field`` of
each line's object) or ``.parquet`` (column ``field``), plain or ``.gz``/``.bz2``/``.xz``;
``path`` may be a glob. The core reads the files (:class:`objkit.TextFilePart`): UTF-8 and
JSON checked before training with the line named, tokenized once and cached, or streamed.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from objkit import PLUGIN_API_VERSION, Source, SourceConfig, SourceContext, TextFilePart, hookimpl


class TextFile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    path: str = Field(description="file or glob; .txt (one sentence a line), .jsonl or .parquet")
    lang: str
    field: str = Field("text", description="column holding the text in jsonl/parquet files")


class TextSource(SourceConfig):
    type: Literal["text"]
    files: list[TextFile] = Field(min_length=1)


class TextFiles(Source):
    """Monolingual files, one language per ``files`` entry (group = the language)."""

    name: ClassVar[str] = "text"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = TextSource
    yields = "text"

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return list(dict.fromkeys(f.lang for f in config.files))

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[Any]:
        out = []
        for i, entry in enumerate(config.files):
            key = ctx.key(f"files[{i}].path")
            out += [TextFilePart(path, key, entry.lang, entry.field) for path in ctx.expand(entry.path, key)]
        return out


@hookimpl
def objkit_plugins() -> list[type]:
    return [TextFiles]
