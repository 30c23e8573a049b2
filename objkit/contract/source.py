"""The ``source`` plugin kind: where a recipe's ``[data.NAME]`` rows come from (plugin API 1.6).

A source plugin turns its validated ``Config`` (the ``[data.NAME]`` table, ``type = NAME``)
into *parts*: descriptions of what to read, each tagged with its group (a language, or
``"src-tgt"``) and the recipe key that named it. The core reads the parts, so every source gets
the same treatment without writing it:

* :class:`TextFilePart` / :class:`AlignedFilesPart` (``.txt``, Moses-style ``.en``/``.de``,
  ``.jsonl``, ``.parquet``, maybe ``.gz``/``.bz2``/``.xz``) and :class:`BitextFilePart`
  (``.tsv``, ``.tmx``): checked before anything is read (exists, not empty, UTF-8 with the
  line named, JSON lines parse, line-aligned files have equal line counts), hashed into the
  tokenized cache's key, sized for streaming α-sampling, read map-style or streamed.
* :class:`RowsPart`: rows the plugin produces itself (a ``datasets`` dataset of ``text`` or
  ``src_text``/``tgt_text`` strings) with the inputs that key the cache.

The core then tokenizes the rows, drops empty ones, adds the ``group`` column and samples them
(:class:`objkit.data.ExampleStream`: the same global draws for any number of ranks on
map-style data). Built-in sources (``text``, ``parallel``, ``hf``, ``cldr``) are plugins of
this kind in ``objkit_plugins``, registered through the entry points like a third party's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from objkit.contract.errors import PluginError, UserError
from objkit.contract.interfaces import DataKind, Plugin

SourceMode = Literal["map", "streaming"]


class SourceConfig(BaseModel):
    """Base of every source plugin's ``Config`` (``[data.NAME]``): ``type`` names the source
    plugin (:class:`objkit.Source`); the other keys here are the core's, the rest the plugin's."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # as every recipe table (schema.Strict)

    sampling_alpha: float = Field(
        1.0, gt=0, le=1, description="q_i ∝ n_i^α over languages (text) or language pairs (parallel)"
    )
    streaming: bool = Field(False, description="stream files instead of caching them (huge corpora)")
    max_lines: int | None = Field(None, gt=0, description="read at most this many lines per file")
    type: str = Field(description="the source plugin: text, parallel, cldr, hf (built in) or another")


# ----------------------------------------------------------------------------- parts
@dataclass(frozen=True)
class TextFilePart:
    """One file of monolingual sentences (``.txt`` one a line, or ``field`` of ``.jsonl``/``.parquet``)."""

    path: Path
    key: str
    """The recipe key that named it, e.g. ``data.mono.files[0].path`` (errors name it)."""
    lang: str
    field: str = "text"

    @property
    def group(self) -> str:
        return self.lang


@dataclass(frozen=True)
class AlignedFilesPart:
    """Two line-aligned files, line ``i`` of ``src`` translating line ``i`` of ``tgt`` (Moses layout)."""

    src: Path
    tgt: Path
    key: str
    """The entry's recipe key, e.g. ``data.para.pairs[0]``; the files are ``KEY.src`` / ``KEY.tgt``
    unless ``src_key`` / ``tgt_key`` say otherwise."""
    src_lang: str
    tgt_lang: str
    src_field: str = "text"
    tgt_field: str = "text"
    src_key: str | None = None
    tgt_key: str | None = None

    @property
    def group(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"

    @property
    def keys(self) -> tuple[str, str]:
        return self.src_key or f"{self.key}.src", self.tgt_key or f"{self.key}.tgt"


@dataclass(frozen=True)
class BitextFilePart:
    """One ``.tsv`` (``src<TAB>tgt[<TAB>score]``) or ``.tmx`` file of pairs."""

    path: Path
    key: str
    src_lang: str
    tgt_lang: str
    columns: tuple[str, ...] | None = None
    """.tsv: what each column holds (``src``, ``tgt``, ``score``, ``-``); default src, tgt[, score]."""
    min_score: float | None = None

    @property
    def group(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


@dataclass(frozen=True)
class RowsPart:
    """Rows the plugin reads itself (applying ``max_lines`` itself). ``load(streaming, cache_dir)`` returns a ``datasets.Dataset``
    (or ``IterableDataset`` when streaming) with a ``text`` column (text; plus ``lang`` when
    ``group`` is None) or ``src_text``/``tgt_text`` (parallel; plus ``src_lang``/``tgt_lang``
    when ``group`` is None). ``group=None``: the rows carry their languages, and the source's
    :meth:`Source.groups` lists them (``["*"]`` when only the rows know)."""

    group: str | None
    key: str
    load: Callable[[bool, str | None], Any]
    inputs: list[list[Any]] = field(default_factory=list)
    """What the rows are made from, for the tokenized cache's key: ``[path, size, mtime_ns]`` per
    local file (hashed by content), or any JSON rows naming a version or an id."""
    check: Callable[[], None] | None = None
    """Raise a one-line :class:`UserError` if the input is bad (before anything is trained)."""
    texts: Callable[[], Iterator[str]] | None = None
    """Raw sentences for tokenizer training (default: the text columns of ``load(False, None)``)."""
    langs: tuple[str, ...] | None = None
    """The language (text) or ``(src, tgt)`` languages of every row when ``group`` is set (default:
    ``group``, split at its first ``-`` for parallel rows)."""
    label: str | None = None
    """How warnings and errors about the rows name them (default: ``key``)."""


SourcePart = TextFilePart | AlignedFilesPart | BitextFilePart | RowsPart


# ----------------------------------------------------------------------------- context
@dataclass(frozen=True)
class SourceContext:
    """What a source plugin gets besides its config: the ``[data.NAME]`` name and where relative
    paths are resolved."""

    name: str
    base_dir: Path | None = None
    """Relative paths are resolved against it (None: the working directory)."""

    def key(self, suffix: str = "") -> str:
        """``data.NAME`` or ``data.NAME.SUFFIX``: the recipe key messages name."""
        return f"data.{self.name}.{suffix}" if suffix else f"data.{self.name}"

    def expand(self, pattern: str, key: str) -> list[Path]:
        """Files matching ``pattern`` (a path or glob, relative to ``base_dir``), sorted; a
        one-line :class:`UserError` naming ``key`` when none matches."""
        import glob

        full = Path(pattern).expanduser()
        if not full.is_absolute() and self.base_dir is not None:
            full = Path(self.base_dir) / full
        files = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"{key}: no file matches '{pattern}'")
        return files

    def resolve(self, path: str) -> Path:
        """``path`` (``~`` expanded) relative to ``base_dir``; not required to exist."""
        full = Path(path).expanduser()
        return full if full.is_absolute() or self.base_dir is None else Path(self.base_dir) / full


# ----------------------------------------------------------------------------- the plugin kind
_PLUGIN_OF: dict[type, type[Source]] = {}


class Source(Plugin):
    """A data source plugin: ``type = NAME`` in a ``[data.NAME]`` table.

    Declare what it yields (``yields``: ``"text"`` or ``"parallel"``; or None and override
    :meth:`data_kind` when the config decides) and how it may be read (``modes``: ``"map"``,
    the rows tokenized once and cached, and/or ``"streaming"``, read as trained on). ``Config``
    derives from :class:`SourceConfig` (``type``, ``sampling_alpha``, ``streaming``,
    ``max_lines``) and belongs to this plugin alone.
    """

    Config: ClassVar[type[SourceConfig]] = SourceConfig  # type: ignore[assignment]
    yields: ClassVar[DataKind | None] = None
    modes: ClassVar[tuple[SourceMode, ...]] = ("map", "streaming")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config = cls.__dict__.get("Config")
        if config is not None and config is not SourceConfig:
            _PLUGIN_OF.setdefault(config, cls)

    @classmethod
    def data_kind(cls, config: Any) -> DataKind:
        """``"text"`` or ``"parallel"``: what the rows hold (default: ``yields``)."""
        if cls.yields is None:
            raise NotImplementedError(f"source {cls.name}: set yields or override data_kind")
        return cls.yields

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        """The ``group`` values of the rows, from the recipe alone, in first-appearance order
        (``["*"]`` when only the rows know). Default: those of :meth:`parts` (relative paths from
        the working directory; the core asks :meth:`parts` with the run's base dir instead)."""
        return list(dict.fromkeys(p.group or "*" for p in cls.parts(config, SourceContext("source"))))

    @classmethod
    def languages(cls, config: Any) -> list[str]:
        """Language codes the rows carry, from the recipe alone (objectives check them)."""
        codes = [code for g in cls.groups(config) if g != "*" for code in g.split("-")]
        return list(dict.fromkeys(codes))

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[SourcePart]:
        """What to read, in order (the core groups rows by ``group``, keeping this order within one)."""
        raise NotImplementedError

    @classmethod
    def group_sizes(cls, config: Any, ctx: SourceContext) -> dict[str, int] | None:
        """Streaming α-sampling weights per group; None: bytes on disk of each group's files
        (parts that are not files count 1)."""
        return None


def plugin_of_config(config_cls: type) -> type[Source] | None:
    """The source plugin class that declared ``config_cls`` as its ``Config`` (first declared)."""
    return _PLUGIN_OF.get(config_cls)


def source_plugin(config: Any) -> type[Source]:
    """The source plugin whose ``Config`` ``config`` is (its class or a base's)."""
    for klass in type(config).__mro__:
        if klass in _PLUGIN_OF:
            return _PLUGIN_OF[klass]
    raise UserError(f"no source plugin reads a {type(config).__name__} (a source's config must be the Config "
                    "of a registered source plugin)")


def check_source_class(cls: Any, name: str, where: str) -> None:
    """What the core needs to read a source plugin (the registry's check of kind ``source``)."""
    if not issubclass(cls.Config, SourceConfig):
        raise PluginError(f'source plugin "{name}" ({where}): Config must derive from objkit.SourceConfig')
    if cls.yields not in ("text", "parallel") and cls.data_kind.__func__ is Source.data_kind.__func__:
        raise PluginError(f'source plugin "{name}" ({where}): yields must be "text" or "parallel" '
                          "(or override data_kind)")
    if not cls.modes or not set(cls.modes) <= {"map", "streaming"}:
        raise PluginError(f'source plugin "{name}" ({where}): modes must name "map" and/or "streaming" '
                          f"(got {cls.modes!r})")
    owner = plugin_of_config(cls.Config)
    if owner is not cls:
        raise PluginError(f'source plugin "{name}" ({where}): Config must be its own model (it is '
                          f"{getattr(owner, '__qualname__', owner)}'s), so that a validated table names its reader")
    if cls.parts.__func__ is Source.parts.__func__:
        raise PluginError(f'source plugin "{name}" ({where}): parts(config, ctx) is not implemented')


__all__ = [
    "AlignedFilesPart",
    "BitextFilePart",
    "RowsPart",
    "Source",
    "SourceConfig",
    "SourceContext",
    "SourceMode",
    "SourcePart",
    "TextFilePart",
    "check_source_class",
    "plugin_of_config",
    "source_plugin",
]
