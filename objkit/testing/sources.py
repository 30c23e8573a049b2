"""Checks for source plugins (kind ``source``): what the core needs from any corpus reader.

:func:`check_source` reads a ``[data.NAME]`` table through the core the way a run does and
asserts: the input checks pass (:func:`objkit.data.sources.check_source_files`); the rows
have the columns of the source's data kind, only the groups it declares, and are the same when
read twice (determinism); the cache inputs (what keys the tokenized cache) are the same twice
and JSON; tokenizer training gets sentences; a streamed read gives each group's rows in the
map-style order. :func:`check_source_ranks` samples the rows with 1 rank × B and 2 ranks × B/2:
the same global batches (rank-invariant sharding of map-style sources).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import datasets

from objkit.contract.source import Source

_COLUMNS = {"text": {"input_ids", "lang", "group"}, "parallel": {"src_ids", "tgt_ids", "src_lang", "tgt_lang", "group"}}


def word_tokenizer(texts: list[str]) -> Any:
    """A word-level fast tokenizer over the words of ``texts``, with XLM-R's special tokens
    (built in memory: nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    words = sorted({w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", mask_token="<mask>")


def _rows(ds: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in ds]


def check_source(cls: type[Source], table: dict[str, Any], base_dir: str | Path, *, name: str = "under_test",
                 tokenizer: Any = None, max_tokens: int = 64) -> datasets.Dataset:
    """Read ``table`` (its relative paths under ``base_dir``) through the core; returns the
    tokenized map-style rows. See the module docstring for what is asserted."""
    from objkit.data.sources import (
        check_source_files,
        iter_source_texts,
        load_source,
        load_source_groups,
        source_files,
        source_groups,
    )

    base_dir = Path(base_dir)
    config = cls.Config.model_validate({**copy.deepcopy(table), "streaming": False})
    kind = cls.data_kind(config)
    assert kind in ("text", "parallel"), f"{cls.name}: data_kind must be text or parallel (got {kind!r})"
    check_source_files(name, config, base_dir)
    texts = list(iter_source_texts(config, 200, name=name, base_dir=base_dir))
    assert texts and all(isinstance(t, str) and t.strip() for t in texts), f"{cls.name}: no sentences for a tokenizer"
    tokenizer = tokenizer or word_tokenizer(texts)
    groups = source_groups(config, name, base_dir)
    assert groups and all(isinstance(g, str) for g in groups), f"{cls.name}: groups() must list the groups"

    def read() -> datasets.Dataset:
        return load_source(name, config, tokenizer, max_tokens=max_tokens, base_dir=base_dir, cache_dir=None)

    first, second = read(), read()
    assert isinstance(first, datasets.Dataset) and len(first) > 0, f"{cls.name}: no rows"
    assert set(first.column_names) == _COLUMNS[kind], f"{cls.name}: columns {first.column_names}, expected {_COLUMNS[kind]}"
    assert first.to_dict() == second.to_dict(), f"{cls.name}: two reads of the same files give different rows"
    if groups != ["*"]:
        found = set(first.unique("group"))
        assert found <= set(groups), f"{cls.name}: rows of groups {sorted(found - set(groups))} not in groups() {groups}"
    inputs = source_files(name, config, base_dir)
    assert inputs == source_files(name, config, base_dir), f"{cls.name}: cache inputs differ between two calls"
    json.dumps(inputs)  # the tokenized cache's key holds them
    if "streaming" in cls.modes and groups != ["*"]:
        streamed_config = cls.Config.model_validate({**copy.deepcopy(table), "streaming": True})
        streamed = load_source_groups(name, streamed_config, tokenizer, max_tokens=max_tokens, base_dir=base_dir)
        for group, part in streamed.items():
            want = _rows(first.filter(lambda row, g=group: row["group"] == g))
            assert _rows(part) == want, f"{cls.name}: group {group!r} streamed differs from its map-style rows"
    return first


def check_source_ranks(rows: datasets.Dataset, *, batch: int = 8, steps: int = 4, seed: int = 0,
                       alpha: float = 0.5) -> None:
    """α-sampling the rows with 1 rank × ``batch`` and 2 ranks × ``batch/2`` gives the same
    global batches, step after step (what makes map-style sources rank-invariant)."""
    from objkit.data import ExampleStream

    one = ExampleStream(rows, alpha=alpha, seed=seed)
    two = [ExampleStream(rows, alpha=alpha, seed=seed, rank=r, world_size=2) for r in range(2)]
    for step in range(steps):
        want = one.next_examples(batch)
        got = two[0].next_examples(batch // 2) + two[1].next_examples(batch // 2)
        assert got == want, f"step {step}: 2 ranks read other examples than 1 rank"


def check_source_recipe(cls: type[Source], table: dict[str, Any], registry: Any = None) -> None:
    """A recipe naming the source (``type = NAME``) with an objective of its data kind validates."""
    from objkit.recipe.loader import validate_recipe
    from objkit.testing._common import registry_with

    config = cls.Config.model_validate(copy.deepcopy(table))
    objective = "mlm" if cls.data_kind(config) == "text" else "tlm"
    raw = {"model": {"preset": "tiny", "tokenizer": "unused"}, "data": {"d": {**copy.deepcopy(table), "type": cls.name}},
           "objectives": {objective: {"data": "d"}}, "train": {"steps": 1, "batch_size": 2, "lr": 1e-3}}
    resolved = validate_recipe(raw, registry or registry_with(cls), source=f"recipe using {cls.name}")
    assert isinstance(resolved.recipe.data["d"], cls.Config), "the recipe holds the plugin's validated Config"
