"""Resuming a run (:class:`ResumeFromCheckpoint`, a base of :class:`objkit.train.trainer.Trainer`):
restore the model, objectives, optimizer, schedule, RNG and stream positions from a checkpoint,
or from the newest one in the run folder that reads back intact."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from objkit.train import checkpoint as ckpt
from objkit import distributed
from objkit.train import sharded_checkpoint as sharded
from objkit.distributed.device import thread_counts
from objkit.contract.errors import UserError
from objkit.blocks.seeding import derive_seed


class ResumeFromCheckpoint:
    """:meth:`resume` and :meth:`_resume_newest` of :class:`objkit.train.trainer.Trainer`, which holds
    the state they restore (``streams``, ``strategy``, ``optimizer``, ``scheduler``, ...)."""

    def resume(self, source: Path | ckpt.CheckpointData) -> None:
        """Continue from a checkpoint (a path, or data already read by :func:`ckpt.read_checkpoint`)."""
        data = source if isinstance(source, ckpt.CheckpointData) else ckpt.read_checkpoint(Path(source))
        trainer_state = data.trainer
        streamed = sorted(name for name, stream in self.streams.items() if stream.per_rank)
        distributed.check_resumable(data.path, trainer_state, self.world, self.strategy.mode, streamed)
        with self.fp32_weights():  # train.param_dtype = "bf16": what is loaded lands in the fp32 masters
            if data.sharded:
                saved_world = int(trainer_state.get("world_size", 1))
                if saved_world != self.world.world_size:
                    raise UserError(f"{data.path}: a sharded checkpoint written by {saved_world} rank(s) resumes on "
                                    f"{saved_world} (this run has {self.world.world_size}): run with --nproc {saved_world}")
                states = sharded.load_sharded(data.path, self.strategy.module, self.optimizer, self._objective_states(),
                                              data.objectives)
                for built in self.objectives:
                    built.objective.load_state_dict(states.get(built.name, {}))
            else:
                model = self.strategy.model_for_load()
                ckpt.apply_model_state(model, data.model, data.path)
                self.strategy.finish_model_load(model)
                for built in self.objectives:
                    self.strategy.load_objective_state(built.objective, data.objectives.get(built.name, {}))
                self.strategy.load_optimizer_state(self.optimizer, data.optimizer["optimizer"])
        self.scheduler.load_state_dict(data.optimizer["scheduler"])
        self.scaler.load_state_dict(data.optimizer["scaler"])
        rank, world_size = self.world.rank, self.world.world_size
        same_world = int(trainer_state.get("world_size", 1)) == world_size and len(data.rng_states) == world_size
        if same_world:
            ckpt.restore_rng_state(data.rng_states[rank], self.device)
        else:  # another number of ranks: fresh per-rank dropout streams, still deterministic
            if self.world.is_main:
                tqdm.write(f"warning: {data.path} was written by {trainer_state.get('world_size', 1)} rank(s), this "
                           f"run has {world_size}: dropout draws will differ from an uninterrupted run", file=sys.stderr)
            torch.manual_seed(derive_seed(self.train_cfg.seed, "rank", rank, "resumed", trainer_state["step"]))
        streams = dict(trainer_state["streams"])
        rank_streams = trainer_state.get("rank_streams") or []
        if same_world and rank_streams:
            streams.update(rank_streams[rank])
        for name, state in streams.items():
            self.streams[name].load_state_dict(state)
        self.bad_steps.load_state_dict(trainer_state.get("bad_steps", {}))
        self.step = int(trainer_state["step"])
        self.train_seconds = float(trainer_state.get("train_seconds", 0.0))
        saved_threads, threads = trainer_state.get("threads"), thread_counts()
        if saved_threads and saved_threads != threads and self.device.type == "cpu" and self.world.is_main:
            tqdm.write(f"warning: {data.path} was written with {saved_threads['torch']} torch CPU thread(s) per rank, "
                       f"this run has {threads['torch']} (OMP_NUM_THREADS, torch.set_num_threads): results will differ "
                       "in the last bits from an uninterrupted run; set OMP_NUM_THREADS to match", file=sys.stderr)
        if data.versions and self.world.is_main:
            now = self.registry.versions()
            changed = sorted(k for k, v in data.versions.get("plugins", {}).items() if now.get(k, v) != v)
            for name in changed:
                tqdm.write(f"warning: plugin {name} was {data.versions['plugins'][name]} when {data.path.name} "
                           f"was written, now {now[name]}", file=sys.stderr)

    def _resume_newest(self) -> None:
        """Resume from the newest checkpoint that reads back intact, reporting any newer one
        that is incomplete or damaged. Rank 0 alone verifies (hashes) the checkpoints and picks
        one; the other ranks receive its choice, so every rank resumes from the same one."""
        data: ckpt.CheckpointData | None = None
        problems: list[str] = []
        if self.world.is_main:
            data, problems = ckpt.newest_readable(self.run_dir)
        chosen, problems = distributed.broadcast_from_main(
            (str(data.path) if data is not None else None, problems), self.world
        )
        if not self.world.is_main and chosen is not None:
            try:
                data = ckpt.read_checkpoint(Path(chosen), verify=False)
            except ckpt.CheckpointError as exc:
                raise UserError(f"{chosen}: rank {self.world.rank} cannot read the checkpoint rank 0 chose ({exc}); "
                                "is -o on a filesystem every rank shares?") from None
        for problem in problems:
            if self.world.is_main:
                tqdm.write(f"warning: checkpoint {problem}; skipping it", file=sys.stderr)
        if data is None:
            if problems:
                raise UserError(f"{self.run_dir}: no checkpoint is usable ({len(problems)} damaged); "
                                "run with --fresh to start over")
            return
        self.resume(data)
        if self.world.is_main:
            tqdm.write(f"resumed from {data.path} (step {self.step})", file=sys.stderr)
