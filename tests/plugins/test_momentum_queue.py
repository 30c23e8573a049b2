"""momentum_queue and in_batch negative stores: ring buffer, fill count, staging, gathering
from ranks of unequal batch sizes (a fake world, no process group), state round trip."""

from __future__ import annotations

import pytest
import torch

from objkit import WorldInfo
from objkit.contract.registry import Registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points()


def make_queue(registry: Registry, size: int, dim: int = 2, fill_before_start: bool = True, world_size: int = 1):
    cls = registry.get("momentum_queue", kind="negative_store").cls
    config = cls.Config(size=size, fill_before_start=fill_before_start)
    return cls(config, dim, torch.device("cpu"), WorldInfo(rank=0, world_size=world_size))


def keys(start: int, n: int, dim: int = 2) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].expand(n, dim).clone()


def test_fill_count_ready_and_filled_part_only(registry):
    queue = make_queue(registry, size=5)
    assert not queue.ready and queue.negatives(keys(0, 1)).shape == (0, 2)
    queue.enqueue(keys(0, 3))
    assert not queue.ready
    assert queue.negatives(keys(0, 1))[:, 0].tolist() == [0, 1, 2]
    queue.enqueue(keys(3, 2))
    assert queue.ready
    assert queue.negatives(keys(0, 1))[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert (queue.filled, queue.pointer) == (5, 0)
    not_waiting = make_queue(registry, size=5, fill_before_start=False)
    assert not_waiting.ready


def test_wrap_around_writes_in_place(registry):
    queue = make_queue(registry, size=5)
    storage = queue.buffer.data_ptr()
    queue.enqueue(keys(0, 4))
    queue.enqueue(keys(4, 3))  # wraps: slots 4, 0, 1
    assert queue.negatives(keys(0, 1))[:, 0].tolist() == [5, 6, 2, 3, 4]
    assert (queue.filled, queue.pointer) == (7, 2)
    queue.enqueue(keys(10, 12))  # more than the size: the newest 5 survive, in ring order
    queue.flush()
    assert sorted(queue.buffer[:, 0].tolist()) == [17, 18, 19, 20, 21]
    assert queue.buffer[(queue.pointer - 1) % 5, 0].item() == 21
    assert queue.filled == 19 and queue.buffer.data_ptr() == storage


def test_negatives_view_is_not_modified_before_backward(registry):
    queue = make_queue(registry, size=4, fill_before_start=False)
    queue.enqueue(torch.randn(4, 2))
    query = torch.randn(3, 2, requires_grad=True)
    logits = query @ queue.negatives(query).T
    queue.enqueue(torch.randn(2, 2))  # staged, not yet written
    logits.sum().backward()  # would fail if the saved view had been modified in place
    assert query.grad is not None


def test_gather_from_ranks_with_unequal_sizes(registry):
    per_rank = [keys(0, 3), keys(100, 1), keys(200, 2)]  # rank 0 (us), rank 1, rank 2
    calls: list[tuple[int, ...]] = []

    def fake_all_gather(local: torch.Tensor) -> list[torch.Tensor]:
        calls.append(tuple(local.shape))
        if local.dtype == torch.long:  # the size exchange
            return [torch.tensor([k.shape[0]]) for k in per_rank]
        out = []
        for rank, k in enumerate(per_rank):
            source = local if rank == 0 else k
            padded = torch.full_like(local, -1.0)  # padding garbage must be trimmed
            padded[: k.shape[0]] = source[: k.shape[0]]
            out.append(padded)
        return out

    queue = make_queue(registry, size=8, world_size=3)
    queue.all_gather = fake_all_gather
    queue.enqueue(per_rank[0])
    assert calls == [(1,), (3, 2)]  # sizes, then keys padded to the largest batch
    assert queue.negatives(keys(0, 1))[:, 0].tolist() == [0, 1, 2, 100, 200, 201]


def test_single_process_makes_no_distributed_call(registry, monkeypatch):
    import torch.distributed as dist

    def boom(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("no torch.distributed call expected")

    monkeypatch.setattr(dist, "all_gather", boom)
    queue = make_queue(registry, size=4)
    assert queue.all_gather is None
    queue.enqueue(keys(0, 2))
    queue.flush()
    assert queue.filled == 2


def test_state_round_trip(registry):
    queue = make_queue(registry, size=5)
    queue.enqueue(keys(0, 7))
    queue.enqueue(keys(7, 1))  # still staged: state_dict must include it
    state = queue.state_dict()
    assert (state["pointer"], state["filled"]) == (3, 8)
    restored = make_queue(registry, size=5)
    restored.load_state_dict({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    assert restored.ready
    for q in (queue, restored):
        q.enqueue(keys(50, 2))
    torch.testing.assert_close(queue.negatives(keys(0, 1)), restored.negatives(keys(0, 1)))
    assert (queue.pointer, queue.filled) == (restored.pointer, restored.filled)
    with pytest.raises(ValueError, match="saved queue"):
        make_queue(registry, size=6).load_state_dict(state)


def test_in_batch_returns_current_keys(registry):
    cls = registry.get("in_batch", kind="negative_store").cls
    store = cls(cls.Config(), 2, torch.device("cpu"), WorldInfo())
    current = torch.randn(3, 2, requires_grad=True)
    negatives = store.negatives(current)
    assert torch.equal(negatives, current) and not negatives.requires_grad
    assert store.ready and cls.includes_current_keys
