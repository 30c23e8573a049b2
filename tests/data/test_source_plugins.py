"""Data sources as a plugin kind: the built-ins through the conformance kit, recipes resolving
``type`` through the registry (errors naming the key), a source written like a third party's,
and the tokenized cache's key of the built-ins unchanged (existing caches stay valid)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field

from objkit import PLUGIN_API_VERSION, PluginError, RowsPart, Source, SourceConfig, TextFilePart
from objkit.cli import main
from objkit.recipe.loader import RecipeError, validate_recipe
from objkit.contract.registry import Registry
from objkit.testing import SourceConformance, check_source, check_source_ranks, installed_registry

EN = [f"the cat number {i} sat on the mat" for i in range(24)]
DE = [f"die katze nummer {i} sass auf der matte" for i in range(24)]
TMX = ('<?xml version="1.0" encoding="UTF-8"?><tmx version="1.4"><header/><body>'
       + "".join(f'<tu><tuv xml:lang="en"><seg>{e}</seg></tuv><tuv xml:lang="de"><seg>{g}</seg></tuv></tu>'
                 for e, g in zip(EN[:8], DE[:8])) + "</body></tmx>")
FILES = {"a.en": "\n".join(EN) + "\n", "a.de": "\n".join(DE) + "\n", "mono_en.txt": "\n".join(EN) + "\n\n",
         "mono_de.jsonl": "".join(json.dumps({"body": t}) + "\n" for t in DE),
         "b.tsv": "".join(f"{e}\t{g}\t{0.5 + (i % 2) * 0.4}\n" for i, (e, g) in enumerate(zip(EN, DE))), "c.tmx": TMX,
         "corpus/train.jsonl": "".join(json.dumps({"text": t}) + "\n" for t in EN)}


class TestTextSource(SourceConformance):
    plugin = "text"
    distribution = "objkit"
    files = FILES
    configs = [{"type": "text", "files": [{"path": "mono_en.txt", "lang": "en"},
                                          {"path": "mono_*.jsonl", "lang": "de", "field": "body"}]}]
    bad_configs = [{"type": "text", "files": []}, {"type": "text", "files": [{"path": "a.txt"}]}]


class TestParallelSource(SourceConformance):
    plugin = "parallel"
    distribution = "objkit"
    files = FILES
    configs = [{"type": "parallel", "pairs": [{"src": "a.en", "tgt": "a.de", "src_lang": "en", "tgt_lang": "de"},
                                              {"path": "b.tsv", "src_lang": "en", "tgt_lang": "de", "min_score": 0.6},
                                              {"path": "c.tmx", "src_lang": "de", "tgt_lang": "en"}]}]
    bad_configs = [{"type": "parallel", "pairs": [{"src": "a.en", "src_lang": "en", "tgt_lang": "de"}]}]


class TestCldrSource(SourceConformance):
    plugin = "cldr"
    distribution = "objkit"
    configs = [{"type": "cldr", "locales": ["en", "de", "fr"], "categories": ["days", "months"]},
               {"type": "cldr", "kind": "text", "locales": ["en", "de"], "categories": ["days"]}]
    bad_configs = [{"type": "cldr", "kind": "neither"}]


class TestHfSource(SourceConformance):
    plugin = "hf"
    distribution = "objkit"
    files = FILES
    configs = [{"type": "hf", "path": "corpus", "text_column": "text", "lang": "en"}]
    bad_configs = [{"type": "hf", "path": "corpus"}]


# ----------------------------------------------------------------------------- the tokenized cache's key
def _write(tmp_path: Path) -> None:
    for rel, text in FILES.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    with gzip.open(tmp_path / "mono_de.jsonl.gz", "wt") as f:
        f.write(FILES["mono_de.jsonl"])


RECIPE_DATA = {
    "mono": {"type": "text", "sampling_alpha": 0.3,
             "files": [{"path": "mono_en.txt", "lang": "en"}, {"path": "mono_*.jsonl.gz", "lang": "de", "field": "body"}]},
    "para": {"type": "parallel", "max_lines": 30,
             "pairs": [{"src": "a.en", "tgt": "a.de", "src_lang": "en", "tgt_lang": "de"},
                       {"path": "b.tsv", "src_lang": "en", "tgt_lang": "de", "min_score": 0.6}]},
    "names": {"type": "cldr", "locales": ["en", "de", "fr"], "categories": ["days", "months"]},
}
# What objkit 0.6.0 (sources a closed union in objkit.recipe.schema) put in the cache key for these tables
# (the definition with every default; sampling_alpha left out: it does not change the rows)
OLD_KEY_SOURCES = {
    "mono": {"type": "text", "streaming": False, "max_lines": None,
             "files": [{"path": "mono_en.txt", "lang": "en", "field": "text"},
                       {"path": "mono_*.jsonl.gz", "lang": "de", "field": "body"}]},
    "para": {"type": "parallel", "streaming": False, "max_lines": 30, "pairs": [
        {"src": "a.en", "tgt": "a.de", "path": None, "src_lang": "en", "tgt_lang": "de", "src_field": "text",
         "tgt_field": "text", "min_score": None, "columns": None},
        {"src": None, "tgt": None, "path": "b.tsv", "src_lang": "en", "tgt_lang": "de", "src_field": "text",
         "tgt_field": "text", "min_score": 0.6, "columns": None}]},
    "names": {"type": "cldr", "streaming": False, "max_lines": None, "kind": "parallel", "locales": ["en", "de", "fr"],
              "pivot": "en", "categories": ["days", "months"]},
}
OLD_KEY_FILES = {"mono": ["mono_en.txt", "mono_de.jsonl.gz"], "para": ["a.en", "a.de", "b.tsv"]}


def test_builtin_sources_keep_their_cache_keys(tmp_path, monkeypatch):
    import babel

    from objkit.train.prepare import entry_key

    _write(tmp_path)
    monkeypatch.chdir(tmp_path)
    registry = installed_registry()
    raw = {"model": {"preset": "tiny", "tokenizer": "unused"}, "data": RECIPE_DATA,
           "objectives": {"mlm": {"data": "mono"}, "tlm": {"data": "para"}, "tlm_names": {"plugin": "tlm", "data": "names"}},
           "train": {"steps": 1, "batch_size": 2, "lr": 1e-3}}
    resolved = validate_recipe(raw, registry)
    for objective, name in (("mlm", "mono"), ("tlm", "para"), ("tlm_names", "names")):
        key = entry_key(resolved, SimpleNamespace(name=objective, data=name), "tok", registry)
        assert key["source"] == OLD_KEY_SOURCES[name], name
        if name == "names":
            assert key["files"] == [["babel", babel.__version__, 0]]
            continue
        want = [[str((tmp_path / f).resolve()), (tmp_path / f).stat().st_size,
                 "sha256:" + hashlib.sha256((tmp_path / f).read_bytes()).hexdigest()] for f in OLD_KEY_FILES[name]]
        assert key["files"] == want, name
    # and the resolved recipe writes the tables back as they were (run directories keep it)
    written = {k: v for k, v in {**OLD_KEY_SOURCES["mono"], "sampling_alpha": 0.3}.items() if v is not None}
    assert resolved.to_dict()["data"]["mono"] == written


# ----------------------------------------------------------------------------- a source written like a third party's
class LinesConfig(SourceConfig):
    type: Literal["lines"]
    path: str
    lang: str = Field(min_length=2)


class Lines(Source):
    """A map-only source: one text file, read by the core."""

    name: ClassVar[str] = "lines"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = LinesConfig
    yields = "text"
    modes = ("map",)

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return [config.lang]

    @classmethod
    def parts(cls, config: Any, ctx: Any) -> list[Any]:
        return [TextFilePart(path, ctx.key("path"), config.lang) for path in ctx.expand(config.path, ctx.key("path"))]


class CountConfig(SourceConfig):
    type: Literal["counting"]
    n: int = 20


class Counting(Source):
    """Rows the plugin makes itself (RowsPart), keyed in the cache by its own inputs."""

    name: ClassVar[str] = "counting"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION
    Config = CountConfig
    yields = "parallel"

    @classmethod
    def groups(cls, config: Any) -> list[str]:
        return ["en-de"]

    @classmethod
    def parts(cls, config: Any, ctx: Any) -> list[Any]:
        import datasets

        def load(streaming: bool, cache_dir: str | None) -> Any:
            ds = datasets.Dataset.from_dict({"src_text": [f"cat {i}" for i in range(config.n)],
                                             "tgt_text": [f"katze {i}" for i in range(config.n)]})
            return ds.to_iterable_dataset() if streaming else ds

        return [RowsPart("en-de", ctx.key(), load, inputs=[["counting", config.n]])]


def _registry(*classes: type) -> Registry:
    registry = Registry.from_entry_points()
    for cls in classes:
        registry.add(cls, distribution="objkit-demo-sources", version="0.1")
    return registry


def _recipe(data: dict[str, Any], objective: str = "mlm") -> dict[str, Any]:
    return {"model": {"preset": "tiny", "tokenizer": "unused"}, "data": {"d": data},
            "objectives": {objective: {"data": "d"}}, "train": {"steps": 1, "batch_size": 2, "lr": 1e-3}}


def test_a_third_party_source_resolves_and_reads(tmp_path):
    (tmp_path / "x.txt").write_text("\n".join(EN) + "\n")
    registry = _registry(Lines, Counting)
    resolved = validate_recipe(_recipe({"type": "lines", "path": "x.txt", "lang": "en"}), registry)
    assert isinstance(resolved.recipe.data["d"], LinesConfig)
    rows = check_source(Lines, {"type": "lines", "path": "x.txt", "lang": "en"}, tmp_path)
    assert len(rows) == len(EN) and set(rows["group"]) == {"en"}
    check_source_ranks(rows)
    pairs = check_source(Counting, {"type": "counting", "n": 12}, tmp_path)
    assert len(pairs) == 12 and pairs[0]["src_lang"] == "en" and pairs[0]["tgt_lang"] == "de"
    from objkit.data.sources import source_files

    assert source_files("d", CountConfig(type="counting", n=12)) == [["counting", 12]]


def test_source_errors_name_the_key(tmp_path):
    registry = _registry(Lines, Counting)
    cases = [
        ({"type": "txt", "files": [{"path": "a", "lang": "en"}]},
         "data.d.type: expected one of 'text', 'parallel', 'cldr', 'hf' (got 'txt') or a source plugin installed "
         "beside them: "),
        ({"type": "lines", "path": "x.txt", "lang": "e"}, "data.d.lang: String should have at least 2 characters"),
        ({"type": "lines", "path": "x.txt", "lang": "en", "langs": 1}, 'data.d.langs: unknown key; did you mean "lang"?'),
        ({"type": "lines", "path": "x.txt", "lang": "en", "streaming": True},
         "data.d.streaming: source 'lines' reads its rows map-style only (streaming = false)"),
    ]
    for table, expected in cases:
        with pytest.raises(RecipeError) as info:
            validate_recipe(_recipe(table), registry)
        assert expected in str(info.value), str(info.value)
        assert all(line.count("\n") == 0 for line in str(info.value).splitlines())
    with pytest.raises(RecipeError, match="did you mean \"lines\""):
        validate_recipe(_recipe({"type": "line", "path": "x"}), registry)
    with pytest.raises(RecipeError, match="objectives.mlm.data: plugin 'mlm' consumes text data, source 'd' is parallel"):
        validate_recipe(_recipe({"type": "counting"}), registry)


def test_the_registry_refuses_a_source_without_what_it_yields():
    class Vague(Source):
        name: ClassVar[str] = "vague"
        plugin_api: ClassVar[str] = PLUGIN_API_VERSION
        Config = type("VagueConfig", (SourceConfig,), {"__annotations__": {"type": Literal["vague"]}})

        @classmethod
        def parts(cls, config: Any, ctx: Any) -> list[Any]:
            return []

    with pytest.raises(PluginError, match='source plugin "vague" .* yields must be "text" or "parallel"'):
        Registry().add(Vague, distribution="demo", version="0")


def test_a_source_config_belongs_to_one_plugin_and_type_may_name_the_distribution(tmp_path):
    class Borrowing(Lines):
        name: ClassVar[str] = "borrowing"

    with pytest.raises(PluginError, match='source plugin "borrowing" .* Config must be its own model'):
        Registry().add(Borrowing, distribution="demo", version="0")
    resolved = validate_recipe(_recipe({"type": "objkit-demo-sources:lines", "path": "x.txt", "lang": "en"}),
                               _registry(Lines))
    assert resolved.recipe.data["d"].type == "lines"


def test_a_recipe_validates_before_the_files_of_a_source_exist(tmp_path):
    """groups() by default comes from parts(), which needs the files: validation does not."""

    class GlobConfig(SourceConfig):
        type: Literal["globbed"]
        path: str

    class Globbed(Source):
        name: ClassVar[str] = "globbed"
        plugin_api: ClassVar[str] = PLUGIN_API_VERSION
        Config = GlobConfig
        yields = "text"

        @classmethod
        def parts(cls, config: Any, ctx: Any) -> list[Any]:
            return [TextFilePart(p, ctx.key("path"), p.suffix.lstrip(".")) for p in ctx.expand(config.path, ctx.key("path"))]

    raw = _recipe({"type": "globbed", "path": str(tmp_path / "corpus.*")})
    validate_recipe(raw, _registry(Globbed))  # no file yet: the data check before a run names it
    (tmp_path / "corpus.en").write_text("\n".join(EN) + "\n")
    assert Globbed.groups(GlobConfig(type="globbed", path=str(tmp_path / "corpus.*"))) == ["en"]
    assert len(check_source(Globbed, {"type": "globbed", "path": "corpus.*"}, tmp_path)) == len(EN)


def test_list_plugins_lists_the_builtin_sources(capsys):
    with pytest.raises(SystemExit) as info:
        main(["list-plugins", "--json"])
        raise SystemExit(0)
    assert (info.value.code or 0) == 0
    rows = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    for name in ("text", "parallel", "cldr", "hf"):
        assert rows[name]["kind"] == "source" and rows[name]["distribution"] == "objkit"
        assert rows[name]["module"] == f"objkit_plugins.source_{name}" and rows[name]["status"] == "ok"
