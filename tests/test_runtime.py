"""Runtime assembly: objectives that change the encoder are built before the ones that copy it."""

from __future__ import annotations

import contextlib

import pytest
import torch

from objkit.contract.interfaces import VocabInfo, WorldInfo
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.build import build_encoder, build_objectives

RECIPE = """
name = "order"
[model]
hidden_size = 16
num_layers = 2
num_heads = 2
intermediate_size = 32
max_length = 24
tokenizer = { vocab_size = 600 }
[data.parallel]
type = "cldr"
kind = "parallel"
locales = ["en", "de"]
[objectives.xlco]                 # listed first: its momentum copy must still see TLM's table
data = "parallel"
layer = 2
negatives = { momentum_queue = { size = 8 } }
[objectives.tlm]
data = "parallel"
language_embeddings = true
languages = ["en", "de", "fr"]
[train]
steps = 2
batch_size = 2
lr = 1e-3
"""


def test_momentum_copy_sees_encoder_changes_made_by_other_objectives(tmp_path):
    path = tmp_path / "order.toml"
    path.write_text(RECIPE)
    registry = default_registry()
    resolved = load_recipe(path, registry=registry)
    vocab = VocabInfo(bos_id=0, eos_id=2, mask_id=49, pad_id=1, vocab_size=50, special_ids=(0, 1, 2, 3, 49))
    encoder = build_encoder(resolved, registry, vocab_size=50)
    built = build_objectives(resolved, registry, encoder, None, torch.device("cpu"), WorldInfo(), "fp32", vocab=vocab)

    assert [b.name for b in built] == ["xlco", "tlm"]  # recipe order is kept in the result
    table = encoder.body().embeddings.token_type_embeddings
    assert table.num_embeddings == 3
    xlco = built[0].objective
    key_table = xlco.key_body.embeddings.token_type_embeddings
    assert key_table.weight.shape == table.weight.shape
    assert torch.equal(key_table.weight, table.weight)
    assert any(source is table.weight for source in xlco.tracker.sources)


def test_collective_timeout_reaches_the_process_group(monkeypatch):
    import datetime

    import torch.distributed as dist

    from objkit.distributed import group as distributed
    from objkit.recipe.schema import TrainConfig

    assert TrainConfig(steps=1, batch_size=1, lr=1).collective_timeout == 1800  # gloo's own default is 30 min
    with pytest.raises(ValueError, match="less than or equal to 86400"):
        TrainConfig(steps=1, batch_size=1, lr=1, collective_timeout=1e9)
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed, "die_with_launcher", lambda: calls.append("armed"))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    world = distributed.init_distributed(torch.device("cpu"), timeout=90)
    assert (world.rank, world.world_size) == (1, 2)
    assert calls == ["armed", {"backend": "gloo", "timeout": datetime.timedelta(seconds=90)}]


@pytest.mark.parametrize("fault", [False, True], ids=["normal-exit", "fault"])
def test_process_group_waits_for_peers_before_leaving_only_on_a_normal_exit(monkeypatch, fault):
    """``process_group`` leaves the group with a barrier first on a normal exit (the backend's
    worker threads finish the last collectives while the ranks wait; see
    ``shutdown_distributed``), and without one after a fault (a rank that died would hold the
    others for the collective timeout). Either way the group is gone afterwards."""
    import torch.distributed as dist

    from objkit.distributed import group as distributed

    events: list[str] = []
    barrier, destroy = dist.barrier, dist.destroy_process_group

    def join(device, timeout):  # noqa: ANN001, ANN202
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        return WorldInfo()

    def recorded(name, call):  # noqa: ANN001, ANN202
        def run(*args, **kwargs):  # noqa: ANN202
            events.append(name)
            return call(*args, **kwargs)
        return run

    monkeypatch.setattr(distributed, "init_distributed", join)
    monkeypatch.setattr(dist, "barrier", recorded("barrier", barrier))
    monkeypatch.setattr(dist, "destroy_process_group", recorded("destroy", destroy))

    class Fault(Exception):
        pass

    with pytest.raises(Fault) if fault else contextlib.nullcontext():
        with distributed.process_group(torch.device("cpu"), 60):
            assert dist.is_initialized()
            held = torch.ones(4)
            dist.all_reduce(held)  # a collective on a tensor Python holds
            if fault:
                raise Fault
    assert events == (["destroy"] if fault else ["barrier", "destroy"])
    assert not dist.is_initialized()
