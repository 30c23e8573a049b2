"""α-sampling probabilities and the resumable ExampleStream (map-style and streaming)."""

from __future__ import annotations

import json
from collections import Counter

import datasets
import pytest

from objkit.data import ExampleStream, sampling_probabilities

SIZES = {"en": 6000, "de": 3000, "sw": 1000}


@pytest.fixture(scope="module")
def ds() -> datasets.Dataset:
    groups = [g for g, n in SIZES.items() for _ in range(n)]
    return datasets.Dataset.from_dict({"x": list(range(len(groups))), "group": groups})


def xs(rows: list[dict]) -> list[int]:
    return [r["x"] for r in rows]


def test_probabilities():
    assert sampling_probabilities(SIZES, 1.0) == pytest.approx({"en": 0.6, "de": 0.3, "sw": 0.1})
    assert sampling_probabilities(SIZES, 0.0) == pytest.approx(dict.fromkeys(SIZES, 1 / 3))
    # α = 0.3 by hand: 6000^.3 = 13.5971, 3000^.3 = 11.0443, 1000^.3 = 10^.9 = 7.9433; sum 32.5846
    assert sampling_probabilities(SIZES, 0.3) == pytest.approx({"en": 0.41729, "de": 0.33894, "sw": 0.24377}, abs=1e-4)
    assert sampling_probabilities({"a": 5, "b": 0}, 0.0) == {"a": 1.0, "b": 0.0}
    with pytest.raises(ValueError):
        sampling_probabilities({"a": 0}, 0.5)


def test_empirical_frequencies_match_q(ds):
    stream = ExampleStream(ds, alpha=0.3, seed=3)
    q = sampling_probabilities(SIZES, 0.3)
    assert stream.probabilities == pytest.approx(q)
    counts = Counter(r["group"] for r in stream.next_examples(20_000))
    for group, p in q.items():
        assert abs(counts[group] / 20_000 - p) < 0.02


def test_groups_cycle_through_permutations(ds):
    rows = ExampleStream(ds, alpha=1.0, seed=0).next_examples(20_000)
    sw = [r["x"] for r in rows if r["group"] == "sw"]
    assert sorted(sw[:1000]) == list(range(9000, 10_000))  # a full epoch of 'sw' before any repeat
    assert sw[:1000] != sorted(sw[:1000])  # shuffled
    assert sw[1000:2000] != sw[:1000]  # reshuffled for the next epoch


def test_determinism_and_chunking(ds):
    a = xs(ExampleStream(ds, alpha=0.5, seed=7).next_examples(600))
    b = ExampleStream(ds, alpha=0.5, seed=7)
    assert xs(b.next_examples(100)) + xs(b.next_examples(500)) == a
    assert xs(ExampleStream(ds, alpha=0.5, seed=8).next_examples(600)) != a


def test_exact_resume(ds):
    stream = ExampleStream(ds, alpha=0.3, seed=11)
    stream.next_examples(137)
    state = json.loads(json.dumps(stream.state_dict()))
    expected = stream.next_examples(500)
    restored = ExampleStream(ds, alpha=0.3, seed=11)
    restored.next_examples(3)  # position is fully overwritten by the state
    restored.load_state_dict(state)
    assert restored.next_examples(500) == expected
    # past several epochs of the smallest group
    stream.next_examples(5000)
    state = stream.state_dict()
    expected = stream.next_examples(300)
    restored.load_state_dict(json.loads(json.dumps(state)))
    assert restored.next_examples(300) == expected


def test_ranks_read_slices_of_one_global_sequence(ds):
    """Rank r of W reads draws [r·n, (r+1)·n) of each n·W: together the ranks see exactly what
    one process sees, whatever W, and their stream states are identical."""
    for world_size in (2, 3):
        ranks = [ExampleStream(ds, alpha=1.0, seed=0, rank=r, world_size=world_size) for r in range(world_size)]
        assert ranks[1].probabilities == pytest.approx({"en": 0.6, "de": 0.3, "sw": 0.1})
        reference = ExampleStream(ds, alpha=1.0, seed=0)
        for n in (4, 1, 700):  # includes epochs rolling over within a call (sw has 100 rows)
            expected = xs(reference.next_examples(n * world_size))
            assert [x for stream in ranks for x in xs(stream.next_examples(n))] == expected
        states = [json.dumps(stream.state_dict(), sort_keys=True) for stream in ranks]
        assert len(set(states)) == 1 and states[0] == json.dumps(reference.state_dict(), sort_keys=True)
    with pytest.raises(ValueError):
        ExampleStream(ds, alpha=1.0, seed=0, rank=3, world_size=3)


def test_streaming_yields_and_resumes(ds):
    parts = {g: ds.filter(lambda r, g=g: r["group"] == g).to_iterable_dataset(num_shards=2) for g in SIZES}
    stream = ExampleStream(parts, alpha=0.5, seed=1, group_sizes=SIZES)
    first = stream.next_examples(200)
    assert {r["group"] for r in first} == set(SIZES)
    state = json.loads(json.dumps(stream.state_dict()))
    expected = stream.next_examples(300)
    restored = ExampleStream(parts, alpha=0.5, seed=1, group_sizes=SIZES)
    restored.load_state_dict(state)
    assert restored.next_examples(300) == expected
    # a single IterableDataset is split by group; it loops forever across epochs
    whole = ExampleStream(ds.to_iterable_dataset(), alpha=1.0, seed=0, group_sizes={"de": 3, "sw": 1})
    rows = whole.next_examples(5000)
    assert {r["group"] for r in rows} == {"de", "sw"} and len(rows) == 5000
    state = whole.state_dict()
    assert state["epoch"] >= 1  # 4000 rows: every group was exhausted at least once
    expected = whole.next_examples(50)
    again = ExampleStream(ds.to_iterable_dataset(), alpha=1.0, seed=0, group_sizes={"de": 3, "sw": 1})
    again.load_state_dict(json.loads(json.dumps(state)))
    assert again.next_examples(50) == expected
    # ranks read disjoint examples
    r0 = xs(ExampleStream(parts, alpha=0.5, seed=1, rank=0, world_size=2).next_examples(500))
    r1 = xs(ExampleStream(parts, alpha=0.5, seed=1, rank=1, world_size=2).next_examples(500))
    assert not set(r0) & set(r1)
    with pytest.raises(ValueError, match="group_sizes"):
        ExampleStream(ds.to_iterable_dataset(), alpha=1.0, seed=0)


def test_lazy_shard_permutations_cover_every_row_once_per_epoch(monkeypatch):
    """Groups larger than a shard, in several runs of rows (interleaved groups): each epoch of a
    group visits each of its rows exactly once, in an order that changes with the epoch; the
    sampler holds a few numbers per shard and per run, not per row."""
    import numpy as np

    from objkit.data import sampling

    monkeypatch.setattr(sampling, "SHARD_ROWS", 7)
    groups = ["a"] * 30 + ["b"] * 5 + ["a"] * 23 + ["b"] * 12
    ds = datasets.Dataset.from_dict({"x": list(range(len(groups))), "group": groups})
    stream = ExampleStream(ds, alpha=1.0, seed=5)
    rows = stream.next_examples(5 * len(groups))
    a = [r["x"] for r in rows if r["group"] == "a"]
    expected = [i for i, g in enumerate(groups) if g == "a"]
    assert sorted(a[:53]) == expected and sorted(a[53:106]) == expected and a[:53] != a[53:106]
    sampler = stream._impl.sampler
    held = sum(o.starts.nbytes + o.ends.nbytes for o in sampler.orders)
    assert held == 2 * 2 * 8 * 2  # two runs per group, two int64 arrays
    order = sampler.orders[sampler.groups.index("a")]
    assert order.shards == 8 and len(order._shard[2]) <= 7  # one shard's permutation held at a time
    assert np.array_equal(order.rows(0, np.arange(53)), order.rows(0, np.arange(53)))  # a function of (seed, epoch)


def test_a_hundred_million_rows_cost_kilobytes():
    import numpy as np

    from objkit.data.sampling import GroupSampler

    runs = {"en": np.array([[0, 60_000_000]]), "sw": np.array([[60_000_000, 40_000_000]])}
    sampler = GroupSampler(runs, alpha=0.3, seed=1)
    rows = sampler.draw(4096, slice(0, 4096))
    assert len(set(rows.tolist())) == 4096 and rows.min() >= 0 and rows.max() < 100_000_000
    assert sum(o._order.nbytes + (o._shard[2].nbytes if o._shard else 0) for o in sampler.orders) < 4_000_000
