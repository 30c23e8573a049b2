"""``train.param_dtype = "bf16"`` (objkit.blocks.master_weights): bf16 weights in the step, fp32
master weights and moments in the optimizer.

On a CPU the path is tested two ways: with fp32 "low-precision" weights it must train what the
plain fp32 step trains (the same losses and weights: bit for bit with one backward per step), and
with real bf16 weights under CPU autocast (a tiny model: bf16 matmuls are slow on a CPU) updates
below bf16's resolution must accumulate in the masters, checkpoints and the export must hold the
fp32 masters, and a resumed run must continue bit for bit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from objkit.blocks.master_weights import MasterWeights, master_of
from objkit.blocks.momentum import MomentumTracker
from objkit.contract.errors import UserError
from objkit.contract.interfaces import WorldInfo
from objkit.contract.registry import default_registry
from objkit.recipe.loader import load_recipe
from objkit.train import memory
from objkit.train import trainer as trainer_module
from objkit.train.trainer import Trainer
from tiny_recipes import tiny_recipe


def test_updates_below_bf16_resolution_accumulate_in_the_masters():
    """AdamW at lr 1e-4 on weights of 0.5 (bf16's spacing there: 2**-8): bf16 weights updated in
    place never move; with fp32 masters the rounded weights move once the updates add up."""
    plain = nn.Parameter(torch.full((4,), 0.5, dtype=torch.bfloat16))
    plain_opt = torch.optim.AdamW([plain], lr=1e-4, weight_decay=0.0)
    param = nn.Parameter(torch.full((4,), 0.5))
    masters = MasterWeights([param], torch.bfloat16)
    assert param.dtype == torch.bfloat16 and masters.masters[0].dtype == torch.float32
    opt = torch.optim.AdamW(masters.masters, lr=1e-4, weight_decay=0.0)
    for _ in range(40):
        for p in (plain, param):
            (p.float() * 1.0).sum().backward()  # gradient 1 everywhere: AdamW moves by lr a step
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
        masters.accumulate_grads()
        assert param.grad is None and masters.masters[0].grad.dtype == torch.float32
        opt.step()
        masters.copy_to_model()
        masters.keep_grad_storage()
        opt.zero_grad(set_to_none=True)
    assert torch.equal(plain, torch.full((4,), 0.5, dtype=torch.bfloat16))  # every update rounded away
    assert torch.allclose(masters.masters[0], torch.full((4,), 0.5 - 40e-4), atol=1e-6)
    assert torch.equal(param.data, masters.masters[0].to(torch.bfloat16))
    assert float(param.detach()[0]) < 0.5


def test_a_parameter_without_gradient_keeps_none_and_its_gradient_storage_is_reused():
    used, unused = nn.Parameter(torch.randn(3, 2)), nn.Parameter(torch.randn(2))
    masters = MasterWeights([used, unused], torch.bfloat16)
    opt = torch.optim.AdamW(masters.masters, lr=0.1, weight_decay=0.5)
    storages = []
    for _ in range(2):
        (used.float() ** 2).sum().backward()
        masters.accumulate_grads()
        assert masters.masters[1].grad is None  # AdamW (weight decay included) leaves it alone
        storages.append(masters.masters[0].grad.data_ptr())
        before = masters.masters[1].detach().clone()
        opt.step()
        assert torch.equal(masters.masters[1], before)
        masters.copy_to_model()
        masters.keep_grad_storage()
        opt.zero_grad(set_to_none=True)
    assert storages[0] == storages[1]  # the first step's fp32 gradient, kept for the second


def test_two_backwards_add_up_in_fp32():
    param = nn.Parameter(torch.ones(2))
    masters = MasterWeights([param], torch.bfloat16)
    for scale in (1.0, 2.0**-10):  # the second gradient vanishes against the first in bf16
        (param.float() * scale).sum().backward()
        masters.accumulate_grads()
    assert torch.equal(masters.masters[0].grad, torch.full((2,), 1.0 + 2.0**-10))
    assert torch.equal(torch.tensor(1.0, dtype=torch.bfloat16) + 2.0**-10, torch.tensor(1.0, dtype=torch.bfloat16))


def test_swapped_in_saves_and_loads_the_masters():
    layer = nn.Linear(3, 2)
    fp32 = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    masters = MasterWeights(list(layer.parameters()), torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in layer.state_dict().values())
    with masters.swapped_in():
        saved = {k: v.clone() for k, v in layer.state_dict().items()}
    assert all(torch.equal(saved[k], fp32[k]) for k in fp32)  # exact fp32 values, not rounded ones
    new = {k: v + 1e-4 for k, v in fp32.items()}
    with masters.swapped_in():
        layer.load_state_dict(new)
    assert all(torch.equal(m, new[k]) for m, k in zip(masters.masters, ("weight", "bias"), strict=True))
    assert layer.weight.dtype == torch.bfloat16 and torch.equal(layer.weight.data, new["weight"].to(torch.bfloat16))


def test_a_momentum_copy_averages_the_fp32_masters():
    source = nn.Parameter(torch.full((3,), 0.5 + 2.0**-12))  # between two bf16 values
    target = torch.zeros(3)
    tracker = MomentumTracker([source], [target])  # paired while the source is fp32, as XLCO does
    MasterWeights([source], torch.bfloat16)
    assert source.dtype == torch.bfloat16 and master_of(source).dtype == torch.float32
    tracker.update(0.0)
    assert torch.equal(target, torch.full((3,), 0.5 + 2.0**-12))  # the master, not the rounded 0.5
    tracker.update(0.5)
    assert torch.equal(target, torch.full((3,), 0.5 + 2.0**-12))


RECIPE = tiny_recipe("master", dropout=0.0) + """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[objectives.xlco]
data = "parallel"
layer = 1
pooling = "mean"
momentum = 0.9
[objectives.xlco.negatives.in_batch]
[train]
steps = 4
batch_size = 8
micro_batch_size = 4
lr = 3e-3
seed = 3
log_every = 1000
checkpoint_every = 2
"""


def _recipe(tmp_path, *overrides: str):
    path = tmp_path / "master.toml"
    path.write_text(RECIPE)
    return load_recipe(path, list(overrides))


def _fp32_masters(monkeypatch) -> None:
    """The trainer's master-weights path with fp32 "low-precision" weights."""
    monkeypatch.setattr(trainer_module, "master_weights_for", lambda train, precision, encoder, world:
                        MasterWeights([p for p in encoder.parameters() if p.requires_grad], torch.float32))


def _train(trainer: Trainer, steps: int) -> list[dict[str, float]]:
    losses = []
    for _ in range(steps):
        stats = trainer.train_step()
        losses.append({k: float(v) for k, v in stats.sums.items()})
    return losses


@pytest.mark.parametrize("overrides, exact", [
    ((), False),  # two micro-batches, one backward per objective: six backwards a step
    (("train.micro_batch_size=8", "train.backward=joint"), True),  # one backward a step
])
def test_the_master_path_in_fp32_trains_what_the_plain_step_trains(tmp_path, monkeypatch, overrides, exact):
    """MLM + TLM + XLCO (a momentum encoder), clipping, 3 steps: the same losses, weights, key
    encoder and AdamW moments. Exact with one backward per step; with several, the gradients
    written in place (embedding lookups) are summed per backward, then across backwards, so the
    last bits may differ."""
    plain = Trainer(_recipe(tmp_path, *overrides), tmp_path / "plain", default_registry(), progress=False)
    plain_losses = _train(plain, 3)
    _fp32_masters(monkeypatch)
    mastered = Trainer(_recipe(tmp_path, *overrides), tmp_path / "masters", default_registry(), progress=False)
    assert mastered.master_weights is not None
    assert mastered.optimizer.param_groups[0]["params"][0] is mastered.master_weights.masters[0]
    master_losses = _train(mastered, 3)

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-5, atol=1e-6)

    for a, b in zip(plain_losses, master_losses, strict=True):
        assert a.keys() == b.keys()
        assert all(close(torch.tensor(a[k]), torch.tensor(b[k])) for k in a), (a, b)
    weights = dict(mastered.strategy.module.named_parameters())
    for name, value in plain.strategy.module.named_parameters():
        assert close(value, weights[name]), name
        assert close(value, master_of(weights[name])), name
    key = dict(mastered.objectives[2].objective.key_body.named_parameters())
    for name, value in plain.objectives[2].objective.key_body.named_parameters():
        assert close(value, key[name]), name
    for p, m in zip(plain.params, mastered.params, strict=True):
        a, b = plain.optimizer.state[p], mastered.optimizer.state[m]
        assert close(a["exp_avg"], b["exp_avg"]) and close(a["exp_avg_sq"], b["exp_avg_sq"])


@pytest.fixture
def cpu_bf16(monkeypatch):
    """bf16 compute on this CPU (objkit refuses it outside tests: slow): CPU autocast in bf16."""
    monkeypatch.setattr(trainer_module, "resolve_precision", lambda precision, device: "bf16")


def test_bf16_weights_train_resume_bit_for_bit_and_export_the_fp32_masters(tmp_path, cpu_bf16):
    recipe = _recipe(tmp_path, "train.param_dtype=bf16")
    straight = Trainer(recipe, tmp_path / "straight", default_registry(), progress=False)
    encoder_params = [p for p in straight.encoder.parameters() if p.requires_grad]
    assert all(p.dtype == torch.bfloat16 for p in encoder_params)
    assert all(p.dtype == torch.float32 for p in straight.params)
    key_body = straight.objectives[2].objective.key_body
    assert all(p.dtype == torch.float32 for p in key_body.parameters())  # the key encoder averages fp32
    straight.fit()
    straight.export()
    export = load_file(tmp_path / "straight" / "export" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in export.values())
    # the export holds the masters (not rounded bf16 values): some weight differs from its rounding
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in export.values())
    ckpt = load_file(tmp_path / "straight" / "checkpoints" / "step_0000004" / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in ckpt.values())
    assert all(p.dtype == torch.bfloat16 for p in encoder_params)  # back to bf16 after the saves

    # the same run resumed from its step-2 checkpoint
    resumed = Trainer(recipe, tmp_path / "resumed", default_registry(), progress=False)
    resumed.resume(tmp_path / "straight" / "checkpoints" / "step_0000002")
    assert resumed.step == 2 and all(p.dtype == torch.bfloat16 for p in resumed.encoder.parameters())
    resumed.fit()
    resumed.export()
    again = load_file(tmp_path / "resumed" / "export" / "model.safetensors")
    assert export.keys() == again.keys()
    for name, value in export.items():
        assert torch.equal(value, again[name]), name
    losses = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["mlm/loss"])) for r in losses if "mlm/loss" in r)


def test_bf16_weights_compute_what_autocast_computes_on_the_first_step(tmp_path, cpu_bf16):
    """autocast casts fp32 weights to bf16 for each matmul; bf16 weights are those casts already.
    The first step's losses agree (only embeddings, layer norms and what autocast keeps in fp32 see
    rounded instead of fp32 weights)."""
    autocast = Trainer(_recipe(tmp_path), tmp_path / "autocast", default_registry(), progress=False)
    assert autocast.master_weights is None
    bf16 = Trainer(_recipe(tmp_path, "train.param_dtype=bf16"), tmp_path / "bf16", default_registry(), progress=False)
    a, b = _train(autocast, 1)[0], _train(bf16, 1)[0]
    for name in ("mlm/loss", "tlm/loss", "xlco/loss"):
        assert abs(a[name] - b[name]) <= 0.01 * abs(a[name]), (name, a[name], b[name])


def test_param_dtype_needs_bf16_compute_and_leaves_fsdp_its_own_policy(tmp_path):
    with pytest.raises(UserError, match="param_dtype.*precision"):
        _recipe(tmp_path, "train.param_dtype=bf16", "train.precision=fp32")
    # precision auto on a CPU computes in fp32: the weights stay fp32 too
    trainer = Trainer(_recipe(tmp_path, "train.param_dtype=bf16", "train.steps=1"), tmp_path / "cpu",
                      default_registry(), progress=False)
    assert trainer.master_weights is None and all(p.dtype == torch.float32 for p in trainer.params)
    # FSDP2 keeps fp32 shards and gathers them in bf16 itself: no master copies of ours
    train = _recipe(tmp_path, "train.param_dtype=bf16", "train.parallelism=fsdp").recipe.train
    assert memory.low_precision_dtype(train, "bf16") == torch.bfloat16 and memory.low_precision_dtype(train, "fp32") is None
    assert memory.master_weights_for(train, "bf16", trainer.encoder, WorldInfo(rank=0, world_size=2)) is None


OBJECTIVES = {
    "infoxlm_queue_mixup": """
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[objectives.xlco]
data = "parallel"
layer = 1
momentum = 0.9
[objectives.xlco.negatives.momentum_queue]
size = 8
[objectives.xlco.augment.mixup]
""",
    "xlm_align": """
[objectives.xlm_align]
data = "parallel"
wa_layer = 1
align_enable_step = 0
""",
    "xlm_e": """
[objectives.mrtd]
data = "mono"
[objectives.trtd]
data = "parallel"
generator_depth = 0.5
""",
    "ernie_m": """
[objectives.camlm]
data = "parallel"
[objectives.btmlm]
data = "mono"
""",
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_built_in_objective_trains_with_bf16_weights(tmp_path, cpu_bf16, name):
    """Each built-in objective's forward and backward take bf16 encoder weights (nothing they
    compute outside autocast meets a bf16 weight with an fp32 input); the masters move."""
    path = tmp_path / "r.toml"
    path.write_text(tiny_recipe(name, dropout=0.0) + OBJECTIVES[name] + """
[train]
steps = 3
batch_size = 8
lr = 3e-3
param_dtype = "bf16"
checkpoint_every = 100
""")
    trainer = Trainer(load_recipe(path), tmp_path / "run", default_registry(), progress=False)
    assert trainer.master_weights is not None
    before = [m.detach().clone() for m in trainer.master_weights.masters]
    for _ in range(3):
        stats = trainer.train_step()
        assert "skipped" not in stats.values
        losses = {k: float(v) for k, v in stats.sums.items() if k.endswith("/loss")}
        assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    moved = [not torch.equal(b, m) for b, m in zip(before, trainer.master_weights.masters, strict=True)]
    assert sum(moved) >= len(moved) // 2
    for param, master in zip(trainer.master_weights.params, trainer.master_weights.masters, strict=True):
        assert param.dtype == torch.bfloat16 and torch.equal(param.data, master.detach().to(torch.bfloat16))


def test_the_dry_run_counts_autocast_copies_or_the_bf16_weights(tmp_path):
    """Under bf16 autocast with fp32 weights the backward keeps a bf16 copy of every cast weight
    (the matmul weights of every block, of one when checkpointed, and the decoder); with
    ``param_dtype = "bf16"`` those copies are the bf16 weights, counted with their gradients."""
    from objkit.train.plan import ModelShape, estimate_memory, plan_with_memory

    shape = ModelShape(layers=2, hidden=64, heads=2, ffn=128, vocab=1000)
    block = 4 * 64 * 64 + 2 * 64 * 128

    def copies(precision: str, checkpointing: bool, **kw: bool) -> int:
        return estimate_memory(shape, 8, 128, precision, {}, checkpointing=checkpointing, chunk_rows=0,
                               **kw).weight_copies

    assert copies("bf16", False) == 2 * (1000 * 64 + 2 * block) and copies("bf16", True) == 2 * (1000 * 64 + block)
    assert copies("fp32", False) == 0 and copies("bf16", False, low_precision_weights=True) == 0
    rows, estimates = plan_with_memory(_recipe(tmp_path, "train.precision=bf16"), default_registry())
    text = dict(rows)
    assert "memory: autocast's bf16 weight copies (est.)" in text and "param dtype" not in text
    assert estimates["run"].weight_copies > 0 and "bf16_weights" not in estimates["run"].static
    rows, estimates = plan_with_memory(_recipe(tmp_path, "train.precision=bf16", "train.param_dtype=bf16"),
                                       default_registry())
    text = dict(rows)
    assert text["param dtype"] == "bf16 encoder weights, fp32 masters in the optimizer"
    static = estimates["run"].static
    assert estimates["run"].weight_copies == 0 and static["bf16_weights"] == static["bf16_gradients"] > 0
    assert static["bf16_weights"] * 2 < static["weights"]  # 2 bytes an encoder weight; the fp32 ones hold the heads too
