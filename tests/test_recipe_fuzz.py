"""Fuzzing the recipe loader (hypothesis): whatever the file, the ``extends`` chain or the
``--set`` overrides hold, ``load_recipe`` either returns a validated recipe or raises the
one-line-per-problem :class:`UserError` -- never another exception, never a traceback.

Also: recipes never import code by a dotted path; plugins come only from entry points."""

from __future__ import annotations

import copy
import math
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from objkit.contract.errors import UserError
from objkit.recipe.loader import ResolvedRecipe, load_recipe
from objkit.contract.registry import default_registry

ROOT = Path(__file__).parent.parent
BASES = {
    name: tomllib.loads((ROOT / "recipes" / f"{name}.toml").read_text())
    for name in ("quickstart", "infoxlm_base", "xlm_mlm_tlm")
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

# every key the recipes use, plus plausible and implausible neighbours
KEYS = sorted({
    "model", "data", "objectives", "train", "eval", "extends", "name", "description", "plugin", "weight",
    "enabled", "type", "files", "pairs", "path", "lang", "src", "tgt", "src_lang", "tgt_lang", "steps",
    "batch_size", "micro_batch_size", "lr", "warmup_steps", "max_length", "preset", "init", "tokenizer",
    "vocab_size", "hidden_size", "num_layers", "num_heads", "negatives", "momentum_queue", "in_batch",
    "augment", "mixup", "size", "mask_prob", "layer", "temperature", "sampling_alpha", "locales", "kind",
    "checkpoint_every", "keep_checkpoints", "max_bad_steps", "optimizer", "betas", "sets", "every",
    "mono", "parallel", "mlm", "tlm", "xlco", "xlmr", "encoder", "max_lines", "streaming", "categories",
    "", " ", "ü", "日本", "a.b", "__class__", "os.system", "objkit_plugins.mlm:MaskedLM",
})
HUGE = [0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**30, -(10**30)]
leaves = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["text", "parallel", "cldr", "mlm", "tlm", "xlco", "xlmr", "tiny", "mono", "en", "de", ""]),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out.extend(_paths(value, (*prefix, key)))
    return out


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _write(path: Path, doc: dict[str, Any]) -> bool:
    try:
        path.write_text(tomli_w.dumps(doc), encoding="utf-8")
    except (TypeError, ValueError):  # tomli_w cannot write it (e.g. a list of mixed tables): not a TOML file
        return False
    return True


def check_loads_cleanly(path: Path, overrides: list[str] | None = None) -> ResolvedRecipe | None:
    """The property: a ResolvedRecipe, or a UserError whose lines each name the problem."""
    try:
        resolved = load_recipe(path, overrides or [], default_registry())
    except UserError as exc:
        text = str(exc)
        assert text.strip(), "empty error message"
        assert "Traceback" not in text
        for line in text.splitlines():
            assert line.strip() and ":" in line, f"not a 'where: what' line: {line!r}"
        return None
    assert isinstance(resolved, ResolvedRecipe)
    resolved.to_toml()  # a validated recipe always serialises
    return resolved


@FUZZ
@given(doc=st.dictionaries(keys, values, max_size=6))
def test_random_documents(tmp_path_factory, doc):
    path = tmp_path_factory.mktemp("fuzz") / "r.toml"
    assume(_write(path, doc))
    check_loads_cleanly(path)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), data=st.data())
def test_mutated_real_recipes(tmp_path_factory, base, data):
    """Real recipes with a few keys replaced, added or removed: types, unicode, huge numbers,
    negative sizes, zero batch, unknown keys at every depth."""
    doc = copy.deepcopy(BASES[base])
    doc.pop("extends", None)
    for _ in range(data.draw(st.integers(1, 4))):
        paths = _paths(doc)
        action = data.draw(st.sampled_from(["replace", "add", "delete", "number"]))
        if action == "delete" and paths:
            *parent, leaf = data.draw(st.sampled_from(paths))
            node = doc
            for part in parent:
                node = node[part]
            node.pop(leaf, None)
        elif action == "add":
            where = data.draw(st.sampled_from([(), *[p for p in paths if isinstance(_get(doc, p), dict)]]))
            _set(doc, (*where, data.draw(keys)), data.draw(values))
        elif action == "number" and paths:
            _set(doc, data.draw(st.sampled_from(paths)), data.draw(st.sampled_from([*HUGE, -0.5, 0.0, 1e308])))
        elif paths:
            _set(doc, data.draw(st.sampled_from(paths)), data.draw(values))
    path = tmp_path_factory.mktemp("fuzz") / "r.toml"
    assume(_write(path, doc))
    event("validated" if check_loads_cleanly(path) is not None else "refused")


def _get(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for part in path:
        node = node[part]
    return node


@pytest.mark.parametrize("key", ["train.batch_size", "train.steps", "train.micro_batch_size", "model.max_length",
                                 "objectives.xlco.negatives.momentum_queue.size", "train.keep_checkpoints",
                                 "train.max_bad_steps", "model.tokenizer.vocab_size"])
@pytest.mark.parametrize("value", ["0", "-1", "-9223372036854775808", "99999999999999999999999", "1e999",
                                   "nan", "-inf", '"seven"', "[]", "{}"])
def test_sizes_zero_negative_huge_and_wrong_types(key, value):
    resolved = check_loads_cleanly(ROOT / "recipes" / "quickstart_infoxlm.toml", [f"{key}={value}"])
    if value in ("0", "-1", "-9223372036854775808", "1e999", "nan", "-inf", '"seven"', "[]", "{}"):
        assert resolved is None, f"{key}={value} was accepted"


@FUZZ
@given(overrides=st.lists(st.tuples(st.lists(keys, min_size=1, max_size=4), st.text(max_size=30)), max_size=4),
       raw=st.lists(st.text(max_size=30), max_size=2))
def test_random_overrides(overrides, raw):
    assignments = [f"{'.'.join(path)}={value}" for path, value in overrides] + raw
    check_loads_cleanly(ROOT / "recipes" / "quickstart.toml", assignments)


@FUZZ
@given(
    links=st.lists(st.one_of(st.integers(0, 4), st.none(), st.sampled_from(["missing.toml", "dir", "binary.toml",
                                                                             "bad.toml", "", ".", "/", "a\0b", 7])),
                   min_size=1, max_size=5),
    body=st.dictionaries(keys, values, max_size=2),
)
def test_extends_chains_cycles_and_missing_targets(tmp_path_factory, links, body):
    """File i extends file links[i] (an index: chains and cycles), nothing, or a bad target:
    missing file, a directory, non-UTF-8 bytes, invalid TOML, an empty or odd path, a number."""
    root = tmp_path_factory.mktemp("extends")
    (root / "dir").mkdir()
    (root / "binary.toml").write_bytes(b"name = \"\xff\xfe\"\n")
    (root / "bad.toml").write_text("[model\n")
    for i, link in enumerate(links):
        doc: dict[str, Any] = copy.deepcopy(BASES["quickstart"]) if i == len(links) - 1 else dict(body)
        if isinstance(link, int) and not isinstance(link, bool):
            doc["extends"] = f"r{link % len(links)}.toml" if link < 4 else 7
        elif link is not None:
            doc["extends"] = link
        if not _write(root / f"r{i}.toml", doc):
            (root / f"r{i}.toml").write_text("")
    check_loads_cleanly(root / "r0.toml")


def test_extends_cycle_message(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(UserError, match="extends: cycle"):
        load_recipe(tmp_path / "a.toml")


def test_recipe_file_problems_are_one_line(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "latin1.toml").write_bytes(b'name = "caf\xe9"\n')
    for path in (tmp_path / "dir.toml", tmp_path / "latin1.toml", tmp_path / "missing.toml"):
        with pytest.raises(UserError) as info:
            load_recipe(path)
        assert str(info.value).startswith(str(path)) and len(str(info.value).splitlines()) == 1


def test_plugins_are_never_imported_by_dotted_path(tmp_path, monkeypatch):
    """A recipe naming a module (``plugin = "probe_mod"``, ``"probe_mod.Thing"``, ``"probe_mod:Thing"``)
    gets 'unknown plugin'; the module is never imported."""
    marker = tmp_path / "imported"
    (tmp_path / "objkit_probe_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\nclass Thing: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = tmp_path / "r.toml"
    for spec in ("objkit_probe_mod", "objkit_probe_mod.Thing", "objkit_probe_mod:Thing", "os.system",
                 "objkit_plugins.mlm.MaskedLM"):
        doc = copy.deepcopy(BASES["quickstart"])
        doc["objectives"]["mlm"]["plugin"] = spec
        doc["model"]["encoder"] = spec
        recipe.write_text(tomli_w.dumps(doc))
        with pytest.raises(UserError) as info:
            load_recipe(recipe, registry=default_registry())
        assert f'unknown objective plugin "{spec}"' in str(info.value)
        assert f'unknown encoder plugin "{spec}"' in str(info.value)
    assert not marker.exists() and "objkit_probe_mod" not in sys.modules


def test_non_finite_numbers_are_refused():
    for key in ("train.lr", "objectives.mlm.weight", "objectives.mlm.mask_prob", "data.mono.sampling_alpha"):
        for value in ("nan", "inf"):
            with pytest.raises(UserError, match=key.split(".")[-1]):
                load_recipe(ROOT / "recipes" / "quickstart.toml", [f"{key}={value}"])
    assert math.isfinite(load_recipe(ROOT / "recipes" / "quickstart.toml").recipe.train.lr)
