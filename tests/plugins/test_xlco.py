"""XLCO objective: InfoNCE value, accuracy, truncated passes, queue filling, enable_step,
fp32 state under autocast, checks, registration, and checkpoint round trips."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import XLMRobertaConfig

from objkit import BuildContext, StepContext
from objkit.train.checkpoint import flatten_state, unflatten_state
from objkit.blocks.contrastive import info_nce
from objkit.blocks.encoder import XLMREncoder
from objkit.contract.errors import UserError
from objkit.contract.interfaces import VocabInfo
from objkit.contract.registry import Registry
from objkit.blocks.seeding import derive_seed

VOCAB = VocabInfo(bos_id=0, eos_id=2, mask_id=49, pad_id=1, vocab_size=50, special_ids=(0, 1, 2, 3, 49))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.from_entry_points()


def tiny_encoder(seed: int = 0, layers: int = 4) -> XLMREncoder:
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=40, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return XLMREncoder.from_hf_config(cfg)


def build(registry: Registry, encoder: XLMREncoder | None = None, device: str = "cpu", **keys: Any):
    info = registry.get("xlco", kind="objective")
    keys.setdefault("layer", 2)
    keys.setdefault("negatives", {"momentum_queue": {"size": 8}})
    config = info.cls.Config.model_validate(keys)
    assert info.cls.check(config, registry) == []
    ctx = BuildContext(
        encoder=encoder if encoder is not None else tiny_encoder(), tokenizer=None, vocab=VOCAB, registry=registry,
        instance_name="xlco", seed=1, device=torch.device(device), total_steps=10, max_length=24,
    )
    return info.cls(config, ctx)


def pairs(n: int, seed: int) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        src = torch.randint(4, 49, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        tgt = torch.randint(4, 49, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        rows.append({"src_ids": src, "tgt_ids": tgt, "src_lang": "en", "tgt_lang": "de", "group": "en-de"})
    return rows


def train_step(obj, encoder, step: int, lr: float = 0.05):
    batch = obj.collate(pairs(4, seed=100 + step), torch.Generator().manual_seed(step))
    out = obj.compute(batch, StepContext(step, encoder, torch.device("cpu")))
    params = [*encoder.parameters(), *(p for m in obj.trainable_modules().values() for p in m.parameters())]
    if out.loss.requires_grad:
        (out.loss * obj.loss_weight(step)).backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= lr * p.grad
                    p.grad = None
    obj.after_optimizer_step(StepContext(step, encoder, torch.device("cpu")))
    return out


# ----------------------------------------------------------------------------- loss function
def test_info_nce_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    k = torch.tensor([[0.5, 0.5], [1.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    tau = 0.25
    res = info_nce(q, k, [neg], scale=1 / tau)
    # query 0: pos 0.5, negs 1, 0, -1 ; query 1: pos 2, negs 0, 2, 2
    l0 = -math.log(math.exp(0.5 / tau) / sum(math.exp(x / tau) for x in (0.5, 1.0, 0.0, -1.0)))
    l1 = -math.log(math.exp(2.0 / tau) / sum(math.exp(x / tau) for x in (2.0, 0.0, 2.0, 2.0)))
    assert res.loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert res.accuracy == 0.5  # query 0 loses to a negative; query 1 ties (ties count for the positive)
    margin = info_nce(q, k, [neg], scale=1 / tau, margin=0.1)
    l0m = -math.log(math.exp(0.4 / tau) / sum(math.exp(x / tau) for x in (0.4, 1.0, 0.0, -1.0)))
    l1m = -math.log(math.exp(1.9 / tau) / sum(math.exp(x / tau) for x in (1.9, 0.0, 2.0, 2.0)))
    assert margin.loss.item() == pytest.approx((l0m + l1m) / 2, rel=1e-6)


def test_info_nce_masks_excluded_negatives_and_blocks():
    q = torch.randn(3, 4)
    k = torch.randn(3, 4)
    queue = torch.randn(5, 4)
    eye = torch.eye(3, dtype=torch.bool)
    res = info_nce(q, k, [queue, k], scale=4.0, exclude=[None, eye])
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T, (q @ k.T).masked_fill(eye, -math.inf)], 1) * 4
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(res.loss, expected)
    assert res.num_negatives == 8


# ----------------------------------------------------------------------------- passes
def test_truncated_key_pass_equals_full_pass_at_layer(registry):
    encoder = tiny_encoder().eval()
    obj = build(registry, encoder, layer=2)
    assert len(obj.key_body.encoder.layer) == 2  # momentum copy holds only the blocks it runs
    batch = obj.collate(pairs(3, 0), torch.Generator().manual_seed(0))
    ids, mask = batch["key_input_ids"], batch["key_attention_mask"]
    full = encoder(ids, mask)  # all 4 blocks
    truncated = encoder.run_copy(obj.key_body, ids, mask, up_to_layer=2)
    assert len(full) == 5 and len(truncated) == 3
    torch.testing.assert_close(truncated[2], full[2])
    keys = obj.encode_keys(ids, mask, training=False)
    torch.testing.assert_close(keys, obj.projection(full[2][:, 0]).detach())
    full_depth = build(registry, copy.deepcopy(encoder), layer=2, truncate_passes=False)
    assert len(full_depth.key_body.encoder.layer) == 4
    full_depth.projection.load_state_dict(obj.projection.state_dict())
    full_depth.key_projection.load_state_dict(obj.key_projection.state_dict())
    torch.testing.assert_close(full_depth.encode_keys(ids, mask, training=False), keys)


def test_layer_deeper_than_encoder_is_a_user_error(registry):
    with pytest.raises(UserError, match=r"objectives\.xlco\.layer: 5 is deeper than the encoder \(4 layers"):
        build(registry, layer=5)


def test_collate_masks_and_picks_query_side(registry):
    obj = build(registry, mask_inputs=False, length_groups=1)  # one padded batch per side, rows in order
    rows = [{**row, "sample_seed": 100 + i} for i, row in enumerate(pairs(16, 1))]
    batch = obj.collate(rows, torch.Generator().manual_seed(3))
    flips = [derive_seed(100 + i, "xlco/query-side") & 1 for i in range(16)]  # a bit of each sample
    assert 0 < sum(flips) < 16
    for i, (row, flip) in enumerate(zip(rows, flips)):
        q = row["src_ids"] if flip == 0 else row["tgt_ids"]
        assert batch["input_ids"][i, : len(q) + 2].tolist() == [0, *q, 2]
    masked = build(registry).collate(rows, torch.Generator().manual_seed(3))
    assert (masked["input_ids"] == VOCAB.mask_id).any() and (masked["key_input_ids"] == VOCAB.mask_id).any()


# ----------------------------------------------------------------------------- training behaviour
def test_queue_fills_before_loss_then_trains(registry):
    encoder = tiny_encoder()
    obj = build(registry, encoder, negatives={"momentum_queue": {"size": 8}})
    first = train_step(obj, encoder, 0)
    assert first.sample_size == 0 and not first.loss.requires_grad and first.loss.item() == 0.0
    second = train_step(obj, encoder, 1)  # 4 more keys: now 8 staged/written = full
    assert second.sample_size == 0
    third = train_step(obj, encoder, 2)
    assert third.sample_size == 4 and third.loss.item() > 0 and "accuracy" in third.metrics
    queue = obj.stores["momentum_queue"]
    queue.flush()
    assert queue.filled == 12 and queue.pointer == 4


def test_in_batch_and_symmetric_options(registry):
    encoder = tiny_encoder()
    obj = build(registry, encoder, negatives={"in_batch": {}}, symmetric=True, learnable_temperature=True, margin=0.1,
                normalize=True)  # a margin needs unit vectors
    out = train_step(obj, encoder, 0)
    assert out.sample_size == 8 and out.loss.requires_grad
    assert set(obj.trainable_modules()) == {"projection", "temperature"}
    assert out.metrics["temperature"] == pytest.approx(0.25)


def test_length_groups_run_fewer_slots_with_the_same_loss_and_gradients(registry):
    """Rows of very different lengths: with length_groups = 2 each side runs as two batches
    padded to their own longest row (fewer padded slots), and the loss, the gradients and the
    keys enqueued equal one padded batch per side (length_groups = 1) to float tolerance,
    whatever the query side of each row; symmetric, masked inputs, in-batch + queue negatives."""
    from objkit.blocks.masking import padding_counts

    encoder = tiny_encoder().eval()  # no dropout: the groups must not change the vectors
    rows = []
    for i, row in enumerate(pairs(12, 7)):
        long = i % 3 == 0  # a third of the pairs 5x longer on one side, like captions and their long siblings
        if long:
            row = {**row, ("src_ids" if i % 2 else "tgt_ids"): row["src_ids"] * 2 + row["tgt_ids"]}
        rows.append({**row, "sample_seed": 500 + i})
    keys = {"negatives": {"in_batch": {}, "momentum_queue": {"size": 48, "fill_before_start": False}}, "symmetric": True}
    outs, grads, batches, queues = [], [], [], []
    for groups in (1, 2):
        query_encoder = copy.deepcopy(encoder)
        torch.manual_seed(0)  # the same projection
        obj = build(registry, query_encoder, length_groups=groups, **keys)
        batch = obj.collate(rows, torch.Generator().manual_seed(0))
        batches.append(batch)
        out = obj.compute(batch, StepContext(0, query_encoder, torch.device("cpu")))
        out.loss.backward()
        outs.append(out)
        grads.append({n: p.grad.clone() for n, p in query_encoder.named_parameters() if p.grad is not None})
        queues.append(obj.stores["momentum_queue"].state_dict())
    one, two = batches
    assert "input_ids.1" not in one and "input_ids.1" in two and "key_input_ids.1" in two
    assert padding_counts(two)[1] < padding_counts(one)[1]
    assert padding_counts(two)[0] - padding_counts(two)[1] == padding_counts(one)[0] - padding_counts(one)[1]
    assert obj.sample_size(two) == obj.sample_size(one) == 24
    torch.testing.assert_close(outs[1].loss, outs[0].loss)
    assert outs[0].loss > 0 and grads[0]
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)
    torch.testing.assert_close(queues[1], queues[0])


def test_enable_step_keeps_key_encoder_equal(registry):
    encoder = tiny_encoder()
    obj = build(registry, encoder, enable_step=3, negatives={"in_batch": {}}, momentum=0.5)
    assert obj.loss_weight(2) == 0.0 and obj.loss_weight(3) == 1.0
    for step in range(2):
        with torch.no_grad():
            for p in encoder.parameters():
                p.add_(0.01)
        obj.after_optimizer_step(StepContext(step, encoder, torch.device("cpu")))
        for name, p in obj.key_body.named_parameters():
            assert torch.equal(p, encoder.body().get_parameter(name)), name
    before = {n: p.clone() for n, p in obj.key_body.named_parameters()}
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(0.01)
    obj.after_optimizer_step(StepContext(2, encoder, torch.device("cpu")))  # 3 updates done: EMA m = 0.5
    name = "encoder.layer.0.output.dense.weight"
    expected = 0.5 * before[name] + 0.5 * encoder.body().get_parameter(name)
    torch.testing.assert_close(obj.key_body.get_parameter(name), expected)


def test_state_stays_fp32_under_bf16_autocast(registry):
    encoder = tiny_encoder()
    obj = build(registry, encoder, negatives={"momentum_queue": {"size": 4}})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train_step(obj, encoder, 0)
        out = train_step(obj, encoder, 1)
    assert out.loss.dtype == torch.float32 and out.sample_size == 4
    queue = obj.stores["momentum_queue"]
    queue.flush()
    assert queue.buffer.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in obj.key_body.parameters())
    assert all(p.dtype == torch.float32 for p in obj.key_projection.parameters())


def test_state_round_trip_gives_identical_outputs(registry, tmp_path):
    encoder = tiny_encoder()
    stores = {"momentum_queue": {"size": 8}, "in_batch": {}}
    obj = build(registry, encoder, negatives=stores, learnable_temperature=True)
    for step in range(4):
        train_step(obj, encoder, step)
    tensors, values = flatten_state({"xlco": obj.state_dict()})
    save_file({k: v.clone() for k, v in tensors.items()}, str(tmp_path / "o.safetensors"))
    restored_state = unflatten_state(load_file(str(tmp_path / "o.safetensors")), values)["xlco"]

    encoder2 = tiny_encoder(seed=1)
    encoder2.load_state_dict(encoder.state_dict())
    obj2 = build(registry, encoder2, negatives=stores, learnable_temperature=True)
    obj2.load_state_dict(restored_state)
    for step in range(4, 7):
        a, b = train_step(obj, encoder, step), train_step(obj2, encoder2, step)
        assert a.loss.item() == b.loss.item() and a.metrics == b.metrics
    for (n, p), (_, p2) in zip(obj.key_body.named_parameters(), obj2.key_body.named_parameters()):
        assert torch.equal(p, p2), n
    assert torch.equal(obj.stores["momentum_queue"].buffer, obj2.stores["momentum_queue"].buffer)


def test_constructible_on_meta_device_and_plan(registry):
    with torch.device("meta"):
        encoder = tiny_encoder()
        obj = build(registry, encoder, device="meta", negatives={"momentum_queue": {"size": 128}})
    plan = obj.plan()
    assert plan["queue bytes"] == 128 * 16 * 4
    assert plan["key encoder parameters"] == sum(p.numel() for p in obj.key_body.parameters()) + 16 * 16


# ----------------------------------------------------------------------------- validation, registration
def test_check_reports_unknown_plugins_and_bad_store_keys(registry):
    info = registry.get("xlco", kind="objective")
    config = info.cls.Config.model_validate(
        {"negatives": {"momentum_queu": {}, "in_batch": {}}, "augment": {"mixup": {"prob": 2.0}, "in_batch": {}}}
    )
    problems = info.cls.check(config, registry)
    assert any(p.startswith('negatives.momentum_queu: unknown negative_store plugin "momentum_queu"') for p in problems)
    assert any(p.startswith("augment.mixup.prob:") for p in problems)
    assert any(p.startswith('augment.in_batch: unknown augmentation plugin "in_batch"') for p in problems)
    bad = info.cls.Config.model_validate({"negatives": {"momentum_queue": {"sise": 3}}})
    assert info.cls.check(bad, registry) == ["negatives.momentum_queue.sise: unknown key"]


def test_momentum_accepts_a_bare_number_or_a_table(registry):
    cls = registry.get("xlco").cls
    assert cls.Config.model_validate({"momentum": 0.999}).momentum.m == 0.999
    linear = cls.Config.model_validate({"momentum": {"type": "linear", "end": 10, "min": 0.9, "max": 0.99}}).momentum
    assert linear.value(5) == pytest.approx(0.945)


def test_plugins_registered_through_entry_points(registry):
    kinds = {info.name: info.kind for info in registry.infos()}
    assert kinds["xlco"] == "objective"
    assert kinds["momentum_queue"] == "negative_store"
    assert kinds["in_batch"] == "negative_store"
    assert kinds["mixup"] == "augmentation"
    assert registry.get("xlco").module == "objkit_plugins.xlco"


def test_two_ranks_with_gathered_in_batch_keys_compute_the_loss_of_one(registry):
    """Rank r of 2 collates pairs [4r, 4r + 4) of the global micro-batch of 8 exactly as one rank
    collates them (per-sample seeds), contrasts against all 8 gathered keys, and masks its own
    positives at its offset: the unit-weighted mean of the two ranks' losses is the 1-rank loss."""
    from objkit.contract.interfaces import WorldInfo

    encoder = tiny_encoder()
    rows = [{**row, "sample_seed": 40 + i} for i, row in enumerate(pairs(8, 5))]
    keys = {"layer": 2, "projection": False, "negatives": {"in_batch": {}}, "length_groups": 1}

    def objective(world: WorldInfo):
        info = registry.get("xlco", kind="objective")
        ctx = BuildContext(
            encoder=encoder, tokenizer=None, vocab=VOCAB, registry=registry, instance_name="xlco", seed=1,
            device=torch.device("cpu"), total_steps=10, max_length=24, world=world,
        )
        return info.cls(info.cls.Config.model_validate(keys), ctx)

    step = StepContext(0, encoder, torch.device("cpu"))
    one = objective(WorldInfo())
    whole_batch = one.collate(rows, torch.Generator().manual_seed(0))
    whole = one.compute(whole_batch, step)
    ranks = [objective(WorldInfo(rank=r, world_size=2)) for r in range(2)]
    batches = [ranks[r].collate(rows[4 * r : 4 * r + 4], torch.Generator().manual_seed(r)) for r in range(2)]
    rank_keys = [ranks[r].encode_keys(b["key_input_ids"], b["key_attention_mask"], True) for r, b in enumerate(batches)]
    outs = []
    for r, (obj, batch) in enumerate(zip(ranks, batches)):
        width = batch["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"], whole_batch["input_ids"][4 * r : 4 * r + 4, :width])

        def fake_all_gather(local: torch.Tensor, r: int = r) -> list[torch.Tensor]:
            if local.dtype == torch.long:  # the size exchange
                return [torch.tensor([4]), torch.tensor([4])]
            return [local if i == r else rank_keys[i] for i in range(2)]

        obj.stores["in_batch"].all_gather = obj.all_gather = fake_all_gather  # the objective gathers for its stores
        outs.append(obj.compute(batch, step))
        assert obj.stores["in_batch"].current_keys_offset == 4 * r
    assert [o.sample_size for o in outs] == [4, 4] and whole.sample_size == 8
    torch.testing.assert_close((outs[0].loss + outs[1].loss) / 2, whole.loss, rtol=1e-5, atol=1e-6)
    assert (outs[0].metrics["accuracy"] + outs[1].metrics["accuracy"]) / 2 == pytest.approx(whole.metrics["accuracy"])
