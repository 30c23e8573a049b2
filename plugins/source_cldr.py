"""``type = "cldr"``: an embedded, download-free corpus: Unicode CLDR display names shipped in ``babel``.

Every CLDR locale translates the same keys (language codes, territory codes, currency
codes, script codes, months, weekdays), so names aligned by key are real translations:
``en "German" <-> de "Deutsch"``. ``kind="parallel"`` yields those pairs; ``kind="text"``
yields every distinct name of each locale as a monolingual sentence. Order is deterministic
(locales in recipe order, categories in recipe order, keys sorted).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import datasets
from babel import Locale, UnknownLocaleError, dates, localedata
from pydantic import Field

from objkit import PLUGIN_API_VERSION, RowsPart, Source, SourceConfig, SourceContext, UserError, hookimpl

CATEGORIES = ("languages", "territories", "currencies", "scripts", "months", "days")


class CldrSource(SourceConfig):
    """Unicode CLDR display names shipped in `babel`: languages, territories, currencies in many
    locales, aligned by key. Needs no download."""

    type: Literal["cldr"]
    kind: Literal["text", "parallel"] = "parallel"
    locales: list[str] = Field(
        default_factory=lambda: ["en", "de", "fr", "es", "it", "ru", "zh", "ar", "ja", "cs", "pt", "nl"]
    )
    pivot: str | None = Field("en", description="parallel: pair every locale with this one (None: all pairs)")
    categories: list[Literal["languages", "territories", "currencies", "scripts", "months", "days"]] = Field(
        default_factory=lambda: ["languages", "territories", "currencies", "scripts", "months", "days"],
        description="months/days: stand-alone wide month and weekday names (babel.dates)",
    )


def parse_locale(code: str, key: str) -> Locale:
    """``Locale.parse`` with a one-line :class:`UserError` naming ``key`` and close matches."""
    try:
        return Locale.parse(code.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        known = localedata.locale_identifiers()
        close = difflib.get_close_matches(code, known, n=3)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise UserError(
            f"{key}: unknown CLDR locale {code!r}; {hint}(any of babel's {len(known)} locales, "
            "e.g. 'en', 'de', 'zh_Hant')"
        ) from None


def locale_names(locale: Locale, category: str) -> dict[str, str]:
    """Key -> localized name for one category; keys are ``category:code`` so categories never clash."""
    if category == "months":
        table = dates.get_month_names("wide", context="stand-alone", locale=locale)
    elif category == "days":
        table = dates.get_day_names("wide", context="stand-alone", locale=locale)
    elif category in CATEGORIES:
        table = getattr(locale, category)
    else:
        raise ValueError(f"unknown CLDR category {category!r}; valid: {', '.join(CATEGORIES)}")
    names = {f"{category}:{code}": str(name).strip() for code, name in dict(table).items() if name}
    return {k: v for k, v in sorted(names.items()) if v}


def _all_names(locale: Locale, categories: list[str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    for category in categories:
        merged.update(locale_names(locale, category))
    return merged


def _locales(name: str, source: CldrSource) -> dict[str, Locale]:
    parsed: dict[str, Locale] = {}
    for i, code in enumerate(source.locales):
        parsed.setdefault(code, parse_locale(code, f"data.{name}.locales[{i}]"))
    return parsed


def language_pairs(source: CldrSource) -> list[tuple[str, str]]:
    """(src, tgt) locale pairs: (pivot, L) for every L != pivot, or every i < j in list order."""
    locales = list(dict.fromkeys(source.locales))
    if source.pivot is not None:
        return [(source.pivot, loc) for loc in locales if loc != source.pivot]
    return [(a, b) for i, a in enumerate(locales) for b in locales[i + 1 :]]


def cldr_parallel(name: str, source: CldrSource) -> dict[str, list[str]]:
    """Columns ``src_text, tgt_text, src_lang, tgt_lang``: names present in both locales and different."""
    parsed = _locales(name, source)
    if source.pivot is not None and source.pivot not in parsed:
        parsed[source.pivot] = parse_locale(source.pivot, f"data.{name}.pivot")
    tables = {code: _all_names(loc, list(source.categories)) for code, loc in parsed.items()}
    cols: dict[str, list[str]] = {"src_text": [], "tgt_text": [], "src_lang": [], "tgt_lang": []}
    for src, tgt in language_pairs(source):
        a, b = tables[src], tables[tgt]
        for key in a:
            if key in b and a[key] != b[key]:
                cols["src_text"].append(a[key])
                cols["tgt_text"].append(b[key])
                cols["src_lang"].append(src)
                cols["tgt_lang"].append(tgt)
    return cols


def cldr_text(name: str, source: CldrSource) -> dict[str, list[str]]:
    """Columns ``text, lang``: every distinct name of each locale (first occurrence kept)."""
    cols: dict[str, list[str]] = {"text": [], "lang": []}
    for code, loc in _locales(name, source).items():
        names = list(dict.fromkeys(_all_names(loc, list(source.categories)).values()))
        cols["text"].extend(names)
        cols["lang"].extend([code] * len(names))
    return cols


def cldr_dataset(name: str, source: CldrSource) -> datasets.Dataset:
    """The raw (untokenized) corpus as an in-memory :class:`datasets.Dataset`; ``max_lines``
    keeps the first rows of each language (text) or language pair (parallel)."""
    cols = cldr_parallel(name, source) if source.kind == "parallel" else cldr_text(name, source)
    if source.max_lines is not None:  # per language (text) or language pair (parallel)
        if source.kind == "text":
            groups = cols["lang"]
        else:
            groups = [f"{a}-{b}" for a, b in zip(cols["src_lang"], cols["tgt_lang"])]
        seen: Counter[str] = Counter()
        keep = []
        for i, group in enumerate(groups):
            seen[group] += 1
            if seen[group] <= source.max_lines:
                keep.append(i)
        cols = {k: [v[i] for i in keep] for k, v in cols.items()}
    return datasets.Dataset.from_dict(cols)


def iter_cldr_texts(name: str, source: CldrSource) -> Iterator[str]:
    """Every sentence of the corpus (both sides for parallel), for tokenizer training."""
    ds = cldr_dataset(name, source)
    if source.kind == "parallel":
        for src, tgt in zip(ds["src_text"], ds["tgt_text"]):
            yield src
            yield tgt
    else:
        yield from ds["text"]


def check_locales(name: str, source: CldrSource) -> None:
    """The language codes are the corpus's input: each must be a CLDR locale."""
    for i, code in enumerate(source.locales):
        parse_locale(code, f"data.{name}.locales[{i}]")
    if source.kind == "parallel" and source.pivot is not None:
        parse_locale(source.pivot, f"data.{name}.pivot")


def _rows(name: str, source: CldrSource, streaming: bool, cache_dir: str | None) -> Any:
    raw = cldr_dataset(name, source)
    return raw.to_iterable_dataset() if streaming else raw


class Cldr(Source):
    """The CLDR corpus: rows carry their languages (one in-memory dataset)."""

    name: ClassVar[str] = "cldr"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = CldrSource

    @classmethod
    def data_kind(cls, config: Any) -> Literal["text", "parallel"]:
        return config.kind

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        if config.kind == "text":
            return list(dict.fromkeys(config.locales))
        return [f"{a}-{b}" for a, b in language_pairs(config)]

    @classmethod
    def languages(cls, config: Any) -> list[str]:
        pivot = [config.pivot] if config.pivot and config.kind == "parallel" else []
        return list(dict.fromkeys(list(config.locales) + pivot))

    @classmethod
    def parts(cls, config: Any, ctx: SourceContext) -> list[Any]:
        import babel

        return [RowsPart(None, ctx.key(), lambda streaming, cache_dir: _rows(ctx.name, config, streaming, cache_dir),
                         inputs=[["babel", babel.__version__, 0]], check=lambda: check_locales(ctx.name, config),
                         texts=lambda: iter_cldr_texts(ctx.name, config))]

    @classmethod
    def group_sizes(cls, config: Any, ctx: SourceContext) -> dict[str, int]:
        raw = cldr_dataset(ctx.name, config)
        col = raw["lang"] if config.kind == "text" else [f"{a}-{b}" for a, b in zip(raw["src_lang"], raw["tgt_lang"])]
        counts = Counter(col)
        return {g: counts[g] for g in cls.groups(config)}


@hookimpl
def objkit_plugins() -> list[type]:
    return [Cldr]
