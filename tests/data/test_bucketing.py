"""Length bucketing (objkit/data/bucketing.py): deterministic, rank-invariant, resumable, a
reordering of the unbucketed draws (nothing lost or duplicated), and it reduces padding."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from objkit.blocks.masking import padding_counts
from objkit.data import ExampleStream
from objkit.data.bucketing import BucketedStream, example_lengths
from objkit.blocks.masking import pad_sequences

STEP, POOL = 24, 4


@pytest.fixture(scope="module")
def pairs() -> datasets.Dataset:
    """960 pairs in two groups, 1..40 tokens per source side, targets within ±3 tokens of their
    source (translations have similar lengths)."""
    rng = np.random.default_rng(0)
    n = 960
    lengths = rng.integers(1, 41, n)
    src = [list(range(int(k))) for k in lengths]
    tgt = [list(range(max(1, int(k + d)))) for k, d in zip(lengths, rng.integers(-3, 4, n))]
    groups = ["en-de" if i % 3 else "en-fr" for i in range(n)]
    return datasets.Dataset.from_dict({"x": list(range(n)), "src_ids": src, "tgt_ids": tgt, "group": groups})


def bucketed(ds: datasets.Dataset, *, rank: int = 0, world_size: int = 1, seed: int = 5, alpha: float = 0.3,
             pool: int = POOL) -> BucketedStream:
    stream = ExampleStream(ds, alpha=alpha, seed=seed, rank=rank, world_size=world_size)
    return BucketedStream(stream, example_lengths(ds), step_size=STEP, pool_steps=pool, seed=seed + 1)


def xs(rows: list[dict]) -> list[int]:
    return [r["x"] for r in rows]


def test_length_is_the_longest_token_column(pairs):
    lengths = example_lengths(pairs)
    assert lengths.tolist() == [max(len(s), len(t)) for s, t in zip(pairs["src_ids"], pairs["tgt_ids"])]


def test_deterministic_and_different_seeds_differ(pairs):
    a = xs(bucketed(pairs).next_examples(STEP * 10))
    assert xs(bucketed(pairs).next_examples(STEP * 10)) == a
    assert xs(bucketed(pairs, seed=6).next_examples(STEP * 10)) != a


def test_a_pool_is_the_unbucketed_draws_reordered_into_sorted_steps(pairs):
    """Each pool holds exactly the draws of the same steps without bucketing; each step is a run
    of consecutive lengths, so steps do not overlap in length, and each is sorted."""
    lengths = example_lengths(pairs)
    plain = ExampleStream(pairs, alpha=0.3, seed=5)
    stream = bucketed(pairs)
    shuffled = []
    for _ in range(3):
        expected = xs(plain.next_examples(STEP * POOL))
        got = xs(stream.next_examples(STEP * POOL))
        assert Counter(got) == Counter(expected) and got != expected
        steps = [got[i : i + STEP] for i in range(0, len(got), STEP)]
        for step in steps:
            assert [lengths[x] for x in step] == sorted(lengths[x] for x in step)
        spans = sorted((lengths[s[0]], lengths[s[-1]]) for s in steps)
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
        shuffled.append([lengths[s[0]] for s in steps] != sorted(lengths[s[0]] for s in steps))
    assert any(shuffled)  # the steps of a pool are not handed out shortest first


def test_no_example_lost_or_duplicated_within_an_epoch(pairs):
    """α = 1 over one group: a sampler epoch is a permutation of the group; bucketing reorders
    draws inside pools only, so an epoch of whole pools reads every example exactly once, and
    pools across an epoch boundary hold exactly the unbucketed draws (the next epoch's first
    examples may move ahead of the last ones of this epoch, within the pool)."""
    one = pairs.filter(lambda r: r["group"] == "en-de")
    whole = one.select(range(STEP * POOL * 6))  # an epoch of 6 pools
    got = xs(bucketed(whole, alpha=1.0).next_examples(len(whole)))
    assert sorted(got) == sorted(whole["x"])
    draws = STEP * POOL * 7  # 640 examples: the epoch ends inside the 7th pool
    got = xs(bucketed(one, alpha=1.0).next_examples(draws))
    assert Counter(got) == Counter(xs(ExampleStream(one, alpha=1.0, seed=5).next_examples(draws)))
    assert set(got) == set(one["x"]) and max(Counter(got).values()) == 2


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_invariant_for_any_world_size_and_micro_batch(pairs, world_size):
    """Ranks reading micro-batches of b concatenate, per global micro-batch, to what 1 rank
    reads with micro-batches of world_size × b: the same examples in the same steps."""
    b = STEP // (world_size * 2)  # two micro-batches per step
    reference = bucketed(pairs)
    ranks = [bucketed(pairs, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(POOL * 3 * 2):
        expected = xs(reference.next_examples(b * world_size))
        assert [x for s in ranks for x in xs(s.next_examples(b))] == expected


def test_resumes_exactly_from_inside_a_pool(pairs):
    stream = bucketed(pairs)
    stream.next_examples(STEP * 5 + 8)  # pool 2, mid-step
    state = json.loads(json.dumps(stream.state_dict()))
    expected = xs(stream.next_examples(STEP * 7))
    restored = bucketed(pairs)
    restored.next_examples(3)
    restored.load_state_dict(state)
    assert xs(restored.next_examples(STEP * 7)) == expected
    fresh = bucketed(pairs)
    fresh.load_state_dict(json.loads(json.dumps(bucketed(pairs).state_dict())))  # before any draw
    assert xs(fresh.next_examples(STEP)) == xs(bucketed(pairs).next_examples(STEP))
    two_ranks = bucketed(pairs, rank=1, world_size=2)  # resume on another number of ranks
    two_ranks.load_state_dict(state)
    assert xs(two_ranks.next_examples(STEP // 2)) == expected[STEP // 2 : STEP]
    with pytest.raises(ValueError, match="length-bucketed"):
        bucketed(pairs).load_state_dict(ExampleStream(pairs, alpha=0.3, seed=5).state_dict())


def _padding(stream, steps: int, micro: int) -> float:
    slots = padded = 0
    for _ in range(steps * STEP // micro):
        rows = stream.next_examples(micro)
        ids, mask = pad_sequences([r["src_ids"] + [0] for r in rows], 1)  # each side alone, as XLCO
        keys, key_mask = pad_sequences([r["tgt_ids"] + [0] for r in rows], 1)
        s, p = padding_counts({"attention_mask": mask, "input_ids": ids, "key_attention_mask": key_mask})
        slots, padded = slots + s, padded + p
    return padded / slots


def test_padding_is_reduced(pairs):
    """Each side padded on its own (XLCO's queries and keys): under 10% of the slots with
    bucketing, against about 45% without."""
    plain = _padding(ExampleStream(pairs, alpha=0.3, seed=5), 40, 8)
    sorted_ = _padding(bucketed(pairs, pool=8), 40, 8)
    assert plain > 0.3 and sorted_ < 0.1, (plain, sorted_)


def test_padding_counts_reads_every_attention_mask():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert padding_counts({"attention_mask": mask, "key_attention_mask": torch.ones(2, 4), "input_ids": mask}) == (14, 1)


def test_refuses_a_streamed_source(pairs):
    stream = ExampleStream({"en-de": pairs.to_iterable_dataset()}, alpha=1.0, seed=0)
    with pytest.raises(ValueError, match="map-style"):
        BucketedStream(stream, example_lengths(pairs), step_size=STEP, pool_steps=POOL, seed=0)


def test_length_groups_is_the_partition_with_fewest_slots():
    """Against brute force over every assignment of rows to exactly min(k, n) non-empty groups
    (small batches): always that many groups, so every rank runs as many encoder passes."""
    import itertools

    from objkit.blocks.masking import length_groups

    rng = np.random.default_rng(3)
    for _ in range(40):
        n, k = int(rng.integers(1, 8)), int(rng.integers(1, 4))
        lengths = rng.integers(1, 30, n).tolist()
        groups = length_groups(lengths, k)
        assert sorted(i for g in groups for i in g) == list(range(n)) and len(groups) == min(k, n)
        assert all(g == sorted(g) and g for g in groups)
        slots = sum(len(g) * max(lengths[i] for i in g) for g in groups)
        best = min(
            sum(sum(1 for a in labels if a == c) * max((lengths[i] for i, a in enumerate(labels) if a == c), default=0)
                for c in range(k))
            for labels in itertools.product(range(k), repeat=n)
            if len(set(labels)) == min(k, n)
        )
        assert slots == best, (lengths, k, groups)
    assert length_groups([5, 5, 5], 2) == [[0], [1, 2]]  # as many groups even where one costs no more
    assert length_groups([9, 3, 9, 3], 1) == [[0, 1, 2, 3]]  # one group: the rows in order
    assert length_groups([9, 3, 9, 3], 2) == [[1, 3], [0, 2]]


def test_two_column_keys_sort_on_the_longer_side_then_the_shorter(pairs):
    """side_lengths (XLCO's key): [longest, shortest] per row; pools are sorted on both columns,
    and stay a reordering of the unbucketed draws, rank-invariant."""
    from objkit.data.bucketing import side_lengths

    keys = side_lengths(pairs)
    assert keys.tolist() == [[max(len(s), len(t)), min(len(s), len(t))] for s, t in zip(pairs["src_ids"], pairs["tgt_ids"])]
    stream = BucketedStream(ExampleStream(pairs, alpha=0.3, seed=5), keys, step_size=STEP, pool_steps=POOL, seed=6)
    plain = ExampleStream(pairs, alpha=0.3, seed=5)
    got = [stream.next_examples(STEP) for _ in range(POOL)]
    assert Counter(xs(sum(got, []))) == Counter(xs(plain.next_examples(STEP * POOL)))
    for step in got:
        rows = [tuple(keys[r["x"]]) for r in step]
        assert rows == sorted(rows)  # both columns in order within a step
    ranks = [BucketedStream(ExampleStream(pairs, alpha=0.3, seed=5, rank=r, world_size=2), keys, step_size=STEP,
                            pool_steps=POOL, seed=6) for r in range(2)]
    halves = [xs(r.next_examples(STEP // 2)) for r in ranks]
    assert halves[0] + halves[1] == xs(got[0])
    with pytest.raises(ValueError, match="lengths must be"):
        BucketedStream(ExampleStream(pairs, alpha=0.3, seed=5), keys[:, :, None], step_size=STEP, pool_steps=POOL, seed=0)
