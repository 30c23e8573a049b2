"""The step's named points (:mod:`objkit.train.step`): a hook plugged into a real step of the tiny model
sees every point in the order the module documents, after the memory methods' hooks, with the
state each point promises; a non-finite gradient is skipped at ``agreed`` with the same points."""

from __future__ import annotations

import torch

from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.step import StepHook, StepPoint, StepState
from objkit.train.trainer import Trainer
from tiny_recipes import tiny_recipe

RECIPE = tiny_recipe("points", dropout=0.0) + """
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
steps = 2
batch_size = 8
micro_batch_size = 4
lr = 1e-3
clip_norm = 1.0
activation_checkpointing = ["mlm"]
checkpoint_every = 100
"""


class Recorder(StepHook):
    """Records every point with what the step's state holds there."""

    points = frozenset(StepPoint)

    def __init__(self, trainer_params: list[torch.nn.Parameter] | None = None, poison: bool = False) -> None:
        self.seen: list[tuple[str, ...]] = []
        self.params = trainer_params
        self.poison = poison
        self.before: list[torch.Tensor] = []
        self.grads_at_synced = 0
        self.grads_after_release = 0
        self.checkpointing: dict[str, bool] = {}

    def at(self, point: StepPoint, state: StepState) -> None:
        encoder = state.ctx.encoder
        if point is StepPoint.BEFORE_COMPUTE:
            assert state.objective is not None
            name = state.objective.instance_name
            # the memory method's hook ran first at this point: only mlm recomputes its activations
            self.checkpointing[name] = all(b.gradient_checkpointing for b in encoder.body().encoder.layer)
            self.seen.append((point.value, name))
        elif point is StepPoint.BACKWARD:
            self.seen.append((point.value, str(state.micro), "sync" if state.sync else "local"))
        else:
            self.seen.append((point.value,))
        assert self.params is not None
        if point is StepPoint.COLLATED:
            assert state.collated is not None and state.collated.step == state.ctx.step
            self.before = [p.detach().clone() for p in self.params]
        if point is StepPoint.SYNCED:
            assert state.stats is not None and state.stats.synced_backwards == 1
            self.grads_at_synced = sum(p.grad is not None for p in self.params)
            if self.poison:  # a non-finite gradient: the step must skip the update at "agreed"
                next(p for p in self.params if p.grad is not None).grad.view(-1)[0] = float("nan")
        if point is StepPoint.CLIPPED:
            assert state.grad_norm is not None and state.stats is not None
            assert state.stats.values["grad_norm"] is state.grad_norm
        if point is StepPoint.AGREED:
            assert state.skipped is self.poison
        if point is StepPoint.UPDATED:
            moved = any(not torch.equal(a, p) for a, p in zip(self.before, self.params, strict=True))
            assert moved is not self.poison
        if point is StepPoint.RELEASED:
            self.grads_after_release = sum(p.grad is not None for p in self.params)


def _trainer(tmp_path, recorder: Recorder) -> Trainer:
    path = tmp_path / "points.toml"
    path.write_text(RECIPE)
    trainer = Trainer(load_recipe(path), tmp_path / "run", default_registry(), progress=False, step_hooks=[recorder])
    recorder.params = trainer.params
    return trainer


EXPECTED = [
    ("collated",), ("normalised",),
    ("before_compute", "mlm"), ("backward", "0", "local"),
    ("before_compute", "tlm"), ("backward", "0", "local"),
    ("before_compute", "xlco"), ("backward", "0", "local"),
    ("before_compute", "mlm"), ("backward", "1", "local"),
    ("before_compute", "tlm"), ("backward", "1", "local"),
    ("before_compute", "xlco"), ("backward", "1", "sync"),
    ("synced",), ("clipped",), ("agreed",), ("updated",), ("released",), ("after_step",),
]


def test_a_hook_sees_every_named_point_of_a_real_step_in_order(tmp_path):
    recorder = Recorder()
    trainer = _trainer(tmp_path, recorder)
    stats = trainer.train_step()
    assert recorder.seen == EXPECTED
    assert [point for point, *_ in EXPECTED if point not in {"before_compute", "backward"}] == [
        p.value for p in StepPoint if p not in {StepPoint.BEFORE_COMPUTE, StepPoint.BACKWARD}]
    assert recorder.checkpointing == {"mlm": True, "tlm": False, "xlco": False}
    assert recorder.grads_at_synced == len(trainer.params) and recorder.grads_after_release == 0
    assert trainer.step == 1 and stats.backwards == 6 and "skipped" not in stats.values


def test_a_non_finite_gradient_is_skipped_at_the_agreed_point(tmp_path):
    recorder = Recorder(poison=True)
    trainer = _trainer(tmp_path, recorder)
    stats = trainer.train_step()
    assert recorder.seen == EXPECTED  # the same points: the update is skipped, the schedule moves on
    assert stats.values["skipped"] == 1.0 and trainer.bad_steps.total == 1 and trainer.step == 1
    assert all(torch.equal(a, p) for a, p in zip(recorder.before, trainer.params, strict=True))
