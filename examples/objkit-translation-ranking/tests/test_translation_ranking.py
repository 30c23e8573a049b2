"""The loss itself: the formula, the margin, both directions, cross-rank negatives."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from objkit import StepContext, WorldInfo
from objkit.testing import build_context, dummy_source, installed_registry, tiny_encoder
from objkit_translation_ranking import TranslationRanking, TranslationRankingConfig, ranking_loss


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def reference_loss(q: torch.Tensor, c: torch.Tensor, offset: int, margin: float, scale: float) -> float:
    """The formula written out, one query at a time."""
    total = 0.0
    for i in range(q.shape[0]):
        scores = [float(q[i] @ c[j]) for j in range(c.shape[0])]
        positive = math.exp(scale * (scores[offset + i] - margin))
        negatives = sum(math.exp(scale * s) for j, s in enumerate(scores) if j != offset + i)
        total += -math.log(positive / (positive + negatives))
    return total / q.shape[0]


def test_loss_matches_the_formula():
    q = unit([1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0])
    c = unit([0.9, 0.1, 0.1], [0.2, 0.8, 0.1], [0.1, 0.1, 0.9], [0.5, 0.5, 0.5])
    for margin, scale, offset in [(0.3, 20.0, 0), (0.0, 1.0, 0), (0.3, 5.0, 1)]:
        loss, _ = ranking_loss(q, c, offset, margin=margin, scale=scale)
        assert float(loss) == pytest.approx(reference_loss(q, c, offset, margin, scale), rel=1e-5)


def test_margin_raises_the_loss_not_the_accuracy():
    q = unit([1.0, 0.1], [0.1, 1.0])
    c = unit([1.0, 0.0], [0.0, 1.0])
    plain, acc_plain = ranking_loss(q, c, 0, margin=0.0, scale=20.0)
    margined, acc_margined = ranking_loss(q, c, 0, margin=0.3, scale=20.0)
    assert float(margined) > float(plain)
    assert acc_plain == acc_margined == 1.0


def _objective(config: dict | None = None, world: WorldInfo | None = None) -> TranslationRanking:
    encoder = tiny_encoder(num_layers=4, seed=0)
    cfg = TranslationRankingConfig.model_validate(config or {})
    return TranslationRanking(cfg, build_context(encoder, registry=installed_registry(), world=world))


def _batch(objective: TranslationRanking, start: int = 0, count: int = 4) -> dict[str, torch.Tensor]:
    rows = dummy_source("parallel", rows=16)
    examples = [rows[i] for i in range(start, start + count)]
    return objective.collate(examples, torch.Generator().manual_seed(0))


def test_collate_stacks_sources_then_targets():
    objective = _objective()
    rows = dummy_source("parallel", rows=4)
    batch = objective.collate([rows[i] for i in range(4)], torch.Generator())
    assert batch["input_ids"].shape[0] == 8
    first = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    assert first == [0, *rows[0]["src_ids"], 2]
    fifth = batch["input_ids"][4][batch["attention_mask"][4].bool()].tolist()
    assert fifth == [0, *rows[0]["tgt_ids"], 2]


def test_bidirectional_is_the_sum_of_both_directions():
    both = _objective()
    one = _objective({"bidirectional": False})
    batch = _batch(both)
    encoder = tiny_encoder(num_layers=4, seed=0)
    ctx = StepContext(step=0, encoder=encoder, device=torch.device("cpu"))
    with torch.no_grad():
        vectors = both.embed(encoder, batch["input_ids"], batch["attention_mask"])
        src, tgt = vectors[:4], vectors[4:]
        forward, _ = ranking_loss(src, tgt, 0, margin=0.3, scale=20.0)
        backward, _ = ranking_loss(tgt, src, 0, margin=0.3, scale=20.0)
        assert float(both.compute(batch, ctx).loss) == pytest.approx(float(forward + backward), rel=1e-6)
        assert float(one.compute(batch, ctx).loss) == pytest.approx(float(forward), rel=1e-6)


def test_vectors_are_unit_length_from_the_configured_layer():
    objective = _objective({"layer": 2, "pooling": "mean"})
    batch = _batch(objective)
    encoder = tiny_encoder(num_layers=4, seed=0)
    vectors = objective.embed(encoder, batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(8))
    hidden = encoder(batch["input_ids"], batch["attention_mask"])[2]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    torch.testing.assert_close(vectors, expected)


def test_layer_deeper_than_the_encoder_is_a_user_error():
    from objkit import UserError

    with pytest.raises(UserError, match="layer: 9 is deeper than the encoder"):
        _objective({"layer": 9})


def test_public_gather_keeps_the_local_shard_differentiable():
    """objkit.gather_rows(rank=...) is the gather this objective uses (it had its own before API 1.1)."""
    from objkit import gather_rows

    local = torch.randn(3, 4, requires_grad=True)
    other = torch.randn(2, 4, requires_grad=True)

    def fake_all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:  # rank 1 of 2; rank 0 holds 2 rows
        if tensor.dtype == torch.long:
            return [torch.tensor([2]), tensor]
        return [F.pad(other.detach(), (0, 0, 0, tensor.shape[0] - 2)), tensor]

    gathered, sizes = gather_rows(local, fake_all_gather, rank=1)
    offset = sum(sizes[:1])
    assert offset == 2 and gathered.shape == (5, 4)
    torch.testing.assert_close(gathered[:2], other.detach())
    gathered.sum().backward()
    assert local.grad is not None and torch.equal(local.grad, torch.ones(3, 4))
    assert other.grad is None


def test_two_simulated_ranks_rank_against_both_batches():
    """Rank 1 of 2: its queries see rank 0's targets as extra negatives, positives offset by B."""
    world = WorldInfo(rank=1, world_size=2)
    objective = _objective(world=world)
    encoder = tiny_encoder(num_layers=4, seed=0)
    mine, theirs = _batch(objective, 4), _batch(objective, 0)
    with torch.no_grad():
        their_vectors = objective.embed(encoder, theirs["input_ids"], theirs["attention_mask"])
    their_src, their_tgt = their_vectors[:4], their_vectors[4:]
    calls = []

    def fake_all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
        if tensor.dtype == torch.long:
            return [tensor.clone(), tensor]
        calls.append(tensor)
        if len(calls) > 2:  # backward: rank 0's share of the gathered rows' gradient (none here)
            return [torch.zeros_like(tensor), tensor]
        return [(their_tgt if len(calls) == 1 else their_src).clone(), tensor]

    objective.all_gather = fake_all_gather
    out = objective.compute(mine, StepContext(step=0, encoder=encoder, device=torch.device("cpu"), world=world))
    assert out.metrics["candidates"] == 8.0 and out.sample_size == 4
    vectors = objective.embed(encoder, mine["input_ids"], mine["attention_mask"]).detach()
    src, tgt = vectors[:4], vectors[4:]
    expected = ranking_loss(src, torch.cat([their_tgt, tgt]), 4, margin=0.3, scale=20.0)[0]
    expected = expected + ranking_loss(tgt, torch.cat([their_src, src]), 4, margin=0.3, scale=20.0)[0]
    assert float(out.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, results: dict) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        world = WorldInfo(rank=rank, world_size=2)
        objective = _objective(world=world)
        encoder = tiny_encoder(num_layers=4, seed=0)
        out = objective.compute(
            _batch(objective, 4 * rank), StepContext(step=0, encoder=encoder, device=torch.device("cpu"), world=world)
        )
        out.loss.backward()
        grad = torch.cat([p.grad.flatten() for p in encoder.parameters() if p.grad is not None])
        results[rank] = (float(out.loss), out.metrics["candidates"], bool(torch.isfinite(grad).all()))
        dist.barrier()  # lets gloo's threads drop the gathers' tensors before the process exits
    finally:
        dist.destroy_process_group()


def test_real_two_process_gather_over_gloo():
    """torch.distributed with two CPU processes: each rank's loss equals the single-process
    loss of its queries against both ranks' candidates."""
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(_free_port(), results), nprocs=2, join=True)
    objective = _objective()
    encoder = tiny_encoder(num_layers=4, seed=0)
    with torch.no_grad():
        batch = _batch(objective, 0, 8)
        vectors = objective.embed(encoder, batch["input_ids"], batch["attention_mask"])
    src, tgt = vectors[:8], vectors[8:]
    for rank in (0, 1):
        rows = slice(4 * rank, 4 * rank + 4)
        expected = ranking_loss(src[rows], tgt, 4 * rank, margin=0.3, scale=20.0)[0]
        expected = expected + ranking_loss(tgt[rows], src, 4 * rank, margin=0.3, scale=20.0)[0]
        loss, candidates, finite = results[rank]
        assert candidates == 8.0 and finite
        assert loss == pytest.approx(float(expected), rel=1e-4)
