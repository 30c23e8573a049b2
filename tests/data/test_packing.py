"""Sentence packing into fairseq "complete" blocks."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from objkit.data import pack_batch, pack_sentences

BOS, EOS = 0, 2


def sentences(seed: int = 0, n: int = 300) -> datasets.Dataset:
    """Sentences of distinct token values (so blocks can be split back into sentences)."""
    rng = np.random.default_rng(seed)
    rows, groups, next_id = [], [], 10
    for i in range(n):
        length = int(rng.integers(1, 30))
        rows.append(list(range(next_id, next_id + length)))
        next_id += length
        groups.append(["en", "de", "sw"][(i // 40) % 3])  # contiguous runs of one group
    return datasets.Dataset.from_dict({"input_ids": rows, "lang": groups, "group": groups})


def split_block(block: list[int]) -> list[list[int]]:
    assert block[0] == BOS and block[-1] == EOS
    parts, current = [], []
    for tok in block[1:]:
        if tok == EOS:
            parts.append(current)
            current = []
        else:
            current.append(tok)
    return parts


@pytest.mark.parametrize("batch_size", [1000, 7])
def test_blocks_hold_whole_sentences_of_one_group(batch_size):
    src = sentences()
    max_length = 64
    packed = pack_sentences(src, max_length, BOS, EOS, batch_size=batch_size)
    assert packed.column_names == ["input_ids", "group"]
    group_of = {tuple(ids): g for ids, g in zip(src["input_ids"], src["group"])}
    seen: list[list[int]] = []
    for block, group in zip(packed["input_ids"], packed["group"]):
        assert len(block) <= max_length
        parts = split_block(block)
        assert parts and all(parts)
        assert {group_of[tuple(p)] for p in parts} == {group}  # whole sentences, no group mixing
        seen.extend(parts)
    assert seen == src["input_ids"]  # every sentence once, in order: tokens conserved
    total = sum(len(s) + 1 for s in src["input_ids"]) + len(packed)
    assert sum(len(b) for b in packed["input_ids"]) == total


def test_layout_and_greedy_fill():
    out = pack_batch({"input_ids": [[5, 6], [7], [8, 9, 10], [11]], "group": ["en"] * 4},
                     max_length=8, bos_id=BOS, eos_id=EOS)
    assert out["input_ids"] == [[BOS, 5, 6, EOS, 7, EOS], [BOS, 8, 9, 10, EOS, 11, EOS]]
    assert out["group"] == ["en", "en"]


def test_group_change_closes_block():
    out = pack_batch({"input_ids": [[5], [6], [7], [8]], "group": ["en", "de", "de", "en"]},
                     max_length=64, bos_id=BOS, eos_id=EOS)
    assert out["input_ids"] == [[BOS, 5, EOS], [BOS, 6, EOS, 7, EOS], [BOS, 8, EOS]]
    assert out["group"] == ["en", "de", "en"]


def test_overlong_sentence_truncated_into_its_own_block():
    long = list(range(100, 120))
    out = pack_batch({"input_ids": [[5], long, [6]], "group": ["en"] * 3}, max_length=10, bos_id=BOS, eos_id=EOS)
    assert out["input_ids"] == [[BOS, 5, EOS], [BOS, *long[:8], EOS], [BOS, 6, EOS]]
    exact = list(range(100, 108))  # max_length - 2 tokens: fits exactly, not truncated
    assert pack_batch({"input_ids": [exact], "group": ["en"]}, max_length=10, bos_id=BOS,
                      eos_id=EOS)["input_ids"] == [[BOS, *exact, EOS]]


def test_iterable_dataset_matches_map_style():
    src = sentences(seed=1, n=120)
    expected = pack_sentences(src, 48, BOS, EOS)
    streamed = pack_sentences(src.to_iterable_dataset(num_shards=1), 48, BOS, EOS)
    rows = list(streamed)
    assert [r["input_ids"] for r in rows] == expected["input_ids"]
    assert [r["group"] for r in rows] == expected["group"]
