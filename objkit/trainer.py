"""The training loop: the recipe's optimizer and schedule (:mod:`objkit.optim`), accumulation,
clipping, events (:mod:`objkit.events`: logging, evaluation, callbacks), checkpoints, resumption,
export. Loss composition lives in :mod:`objkit.composite`; what
happens on signals, non-finite steps and failed writes in :mod:`objkit.faults`."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from objkit import checkpoint as ckpt
from objkit import distributed, faults
from objkit.composite import CompositeLoss, ObjectiveSlot, StepStats, summarise
from objkit.data import ExampleStream, load_source, source_group_sizes
from objkit.errors import UserError
from objkit.interfaces import StepContext, WorldInfo
from objkit.recipe import ResolvedRecipe, source_kind
from objkit.registry import Registry
from objkit.events import Callback, Events, FitState
from objkit.reporting import MetricsReport, ProgressBar
from objkit.runtime import (
    accumulation_steps,
    autocast_factory,
    build_callbacks,
    build_encoder,
    build_objectives,
    build_optimizer,
    build_schedule,
    load_tokenizer,
    resolve_device,
    resolve_precision,
    thread_counts,
)
from objkit.seeding import derive_seed
from objkit.tokenizer import save_tokenizer_for


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything a recipe describes and trains it into ``run_dir``."""

    def __init__(self, resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool = True,
                 world: WorldInfo | None = None) -> None:
        """``world``: the process group the caller joined (:func:`objkit.distributed.process_group`,
        as ``objkit run`` does). Without it the trainer joins torchrun's group itself and the caller
        leaves it (:func:`objkit.distributed.shutdown_distributed`)."""
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.train_cfg = self.recipe.train
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.progress = progress
        self.device = resolve_device(self.train_cfg, distributed.env_world())
        if world is None:
            world = distributed.init_distributed(self.device, timeout=self.train_cfg.collective_timeout)
        self.world = world
        if not self.world.is_main:  # rank 0 alone reports
            datasets.disable_progress_bars()
        self.precision = resolve_precision(self.train_cfg, self.device)
        self.micro_batch_size, self.accumulation = accumulation_steps(self.train_cfg, self.world)
        set_seed(self.train_cfg.seed)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(resolved, world=self.world)
        self.encoder = build_encoder(resolved, registry, vocab_size=len(self.tokenizer)).to(self.device)
        self.objectives = build_objectives(
            resolved, registry, self.encoder, self.tokenizer, self.device, self.world, self.precision
        )
        self.streams = self._build_streams()
        self.replicas = distributed.parallelize(
            self.encoder, [b.objective for b in self.objectives], self.world, self.device,
            self.train_cfg.parallelism, self.precision,
        )
        params = self.params = self.replicas.parameters()
        if self.world.world_size > 1:  # same initial weights everywhere (above); own dropout masks per rank
            torch.manual_seed(derive_seed(self.train_cfg.seed, "rank", self.world.rank))
        self.optimizer = build_optimizer(resolved, registry, params)
        self.scheduler = build_schedule(resolved, registry, self.optimizer)
        self.callbacks = build_callbacks(resolved, registry)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.composite = CompositeLoss(
            [
                ObjectiveSlot(b.name, b.objective, b.weight, self.streams[b.name].next_examples)
                for b in self.objectives
            ],
            micro_batch_size=self.micro_batch_size,
            accumulation=self.accumulation,
            normalization=self.train_cfg.normalization,
            backward=self.train_cfg.backward,
            autocast=autocast_factory(self.precision, self.device),
            scale_loss=self.scaler.scale,
            seed=self.train_cfg.seed,
            replicas=self.replicas,
        )
        self.step = 0
        self.bad_steps = faults.BadSteps(self.train_cfg.max_bad_steps)
        self.stopped_by: str | None = None  # the signal that ended fit() early, if any

    # ------------------------------------------------------------------ data
    def _build_streams(self) -> dict[str, ExampleStream]:
        tokenized: dict[str, Any] = {}
        streams = {}
        for built in self.objectives:
            source = self.recipe.data[built.data]
            with distributed.main_process_first(self.world):  # rank 0 fills the datasets cache
                if built.data not in tokenized:
                    tokenized[built.data] = load_source(
                        built.data, source, self.tokenizer, max_tokens=self.recipe.model.max_length - 2
                    )
                assert source_kind(source) == built.objective.data_kind
                prepared = built.objective.prepare(tokenized[built.data])
            seed = self.train_cfg.seed * 7919 + len(streams)
            # streamed sources cannot be counted up front: α-sampling uses their sizes on disk
            group_sizes = source_group_sizes(built.data, source) if source.streaming else None
            streams[built.name] = ExampleStream(
                prepared,
                alpha=source.sampling_alpha,
                seed=seed,
                rank=self.world.rank,
                world_size=self.world.world_size,
                group_sizes=group_sizes,
            )
        return streams

    # ------------------------------------------------------------------ state
    def _objective_states(self) -> dict[str, dict[str, Any]]:
        return {b.name: b.objective.state_dict() for b in self.objectives}

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG states (dropout) and the positions of streamed sources."""
        return {
            "rng": ckpt.capture_rng_state(self.device),
            "streams": {name: s.state_dict() for name, s in self.streams.items() if s.per_rank},
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step. Every rank calls this (FSDP gathers full
        tensors, every rank's RNG state is collected); rank 0 alone writes."""
        model = self.replicas.model_for_save()
        objectives = {name: self.replicas.full_state(state) for name, state in self._objective_states().items()}
        optimizer = self.replicas.optimizer_state(self.optimizer)
        ranks = distributed.all_gather_objects(self._rank_state(), self.world)
        if not self.world.is_main:
            distributed.barrier(self.world)
            return None
        from objkit import __version__

        optimizer_state = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        trainer_state = {
            "step": self.step,
            "streams": {name: stream.state_dict() for name, stream in self.streams.items()},
            "rank_streams": [r["streams"] for r in ranks],
            "world_size": self.world.world_size,
            "parallelism": self.replicas.mode,
            "bad_steps": self.bad_steps.state_dict(),
            "threads": thread_counts(),
        }
        try:
            path = ckpt.save_checkpoint(
                self.run_dir,
                self.step,
                model=model,
                objectives=objectives,
                optimizer_state=optimizer_state,
                trainer_state=trainer_state,
                keep=self.train_cfg.keep_checkpoints,
                rng_states=[r["rng"] for r in ranks],
                recipe_toml=self.resolved.to_toml(),
                versions={"objkit": __version__, "plugins": self.registry.versions(), "threads": thread_counts()},
            )
        except OSError as exc:
            previous = ckpt.list_checkpoints(self.run_dir)
            kept = f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no checkpoint yet"
            raise faults.write_error(exc, f"checkpoint step {self.step}", kept) from None
        distributed.barrier(self.world)
        return path

    def resume(self, source: Path | ckpt.CheckpointData) -> None:
        """Continue from a checkpoint (a path, or data already read by :func:`ckpt.read_checkpoint`)."""
        data = source if isinstance(source, ckpt.CheckpointData) else ckpt.read_checkpoint(Path(source))
        trainer_state = data.trainer
        streamed = sorted(name for name, stream in self.streams.items() if stream.per_rank)
        distributed.check_resumable(data.path, trainer_state, self.world, self.replicas.mode, streamed)
        model = self.replicas.model_for_load()
        ckpt.apply_model_state(model, data.model, data.path)
        self.replicas.finish_model_load(model)
        for built in self.objectives:
            self.replicas.load_objective_state(built.objective, data.objectives.get(built.name, {}))
        self.replicas.load_optimizer_state(self.optimizer, data.optimizer["optimizer"])
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
        that is incomplete or damaged."""
        data, problems = ckpt.newest_readable(self.run_dir)
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

    # ------------------------------------------------------------------ loop
    def train_step(self) -> StepStats:
        """One optimizer step; gradients are normalised and synchronised by the composite."""
        self.encoder.train()
        ctx = StepContext(step=self.step, encoder=self.encoder, device=self.device, world=self.world)
        stats = self.composite.accumulate(ctx)
        self.scaler.unscale_(self.optimizer)
        if self.train_cfg.clip_norm is not None:
            grad_norm_t = torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.clip_norm)
            if hasattr(grad_norm_t, "full_tensor"):  # FSDP: a DTensor
                grad_norm_t = grad_norm_t.full_tensor()
            grad_norm = float(grad_norm_t)
            stats.values["grad_norm"] = grad_norm
        else:
            grads = [p.grad for p in self.params if p.grad is not None]
            norm_t = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
            grad_norm = float(norm_t.full_tensor() if hasattr(norm_t, "full_tensor") else norm_t)
        reason = faults.nonfinite_reason({**stats.sums, **stats.values}, grad_norm)
        (bad,) = faults.agree(self.world, reason is not None)
        if bad:  # skip the update: optimizer and momentum encoders stay; step and schedule move on
            message = self.bad_steps.record(self.step, reason or "loss or gradients on another rank")
            stats.values["skipped"] = 1.0
            if self.world.is_main and message:
                tqdm.write(message, file=sys.stderr)
            self.scaler.update()  # fp16: back the loss scale off
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
                self.scheduler.step()
        else:
            self.bad_steps.record(self.step, None)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if not bad:
            for built in self.objectives:
                built.objective.after_optimizer_step(ctx)
        self.step += 1
        return stats

    def fit(self, callbacks: Sequence[Callback] = ()) -> None:
        """Train to ``train.steps``, resuming from the newest intact checkpoint in ``run_dir``.

        Events go to objkit's progress bar and metrics report, then to the recipe's
        ``[callbacks]``, then to ``callbacks`` (periodic evaluation; see :mod:`objkit.events`).
        SIGTERM / SIGINT end it early, after the current step and a checkpoint:
        ``self.stopped_by`` then names the signal.
        """
        self._resume_newest()
        state = FitState(run_dir=self.run_dir, total_steps=self.train_cfg.steps, world=self.world,
                         encoder=self.encoder, tokenizer=self.tokenizer, step=self.step)
        builtin = [ProgressBar(self.progress), MetricsReport(self.train_cfg.report_to)]
        events = Events([*builtin, *self.callbacks, *callbacks], state)
        window: list[StepStats] = []
        try:
            events.fit_start()
            window_start = time.perf_counter()
            with faults.StopRequest(announce=self.world.is_main) as stop:
                while self.step < self.train_cfg.steps:
                    faults.pause_for_test("step", self.step + 1)
                    stats = self.train_step()
                    state.step = self.step
                    window.append(stats)
                    if self.step % self.train_cfg.log_every == 0 or self.step == self.train_cfg.steps:
                        elapsed = time.perf_counter() - window_start
                        events.log(self._summarise(window, elapsed))
                        window, window_start = [], time.perf_counter()
                    events.step_end(stats.values)
                    saved = False
                    if self.step % self.train_cfg.checkpoint_every == 0 or self.step == self.train_cfg.steps:
                        events.checkpoint(self.save())
                        saved = True
                    (stop_now,) = faults.agree(self.world, stop.requested)
                    if stop_now and self.step < self.train_cfg.steps:
                        if not saved:
                            events.checkpoint(self.save())
                        self.stopped_by = state.stopped_by = stop.signal_name or "a signal to another rank"
                        break
        except BaseException as exc:
            state.error = exc
            raise
        finally:
            events.fit_end()

    def _summarise(self, window: list[StepStats], elapsed: float) -> dict[str, float]:
        means, tokens = summarise(window, self.world)  # every rank calls this: reduced over ranks
        record: dict[str, float] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        record.update(means)
        record["tok/s"] = tokens / elapsed if elapsed > 0 else math.nan
        if self.bad_steps.total:
            record["skipped_steps"] = self.bad_steps.total
        return record

    # ------------------------------------------------------------------ export
    def export(self) -> Path | None:
        """``run_dir/export``: encoder + tokenizer loadable by AutoModel / AutoTokenizer.
        Every rank calls this (FSDP gathers the weights); rank 0 alone writes."""
        model = self.replicas.model_for_save()
        if model is None:
            distributed.barrier(self.world)
            return None
        final = self.run_dir / "export"
        tmp = self.run_dir / "export.tmp"
        old = self.run_dir / "export.old"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)
            model.save_pretrained(str(tmp))
            save_tokenizer_for(model, self.tokenizer, tmp)
            (tmp / "objkit.json").write_text(json.dumps({"step": self.step, "recipe": self.resolved.source}, indent=1))
            ckpt.fsync_tree(tmp)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            ckpt.fsync_path(self.run_dir)
        except Exception as exc:  # safetensors and tokenizers (Rust) report a full disk in their own types
            shutil.rmtree(tmp, ignore_errors=True)
            error = faults.os_error_of(exc, tmp)
            if error is None:
                raise
            raise faults.write_error(error, "the export", "checkpoints already written are intact") from None
        shutil.rmtree(old, ignore_errors=True)
        distributed.barrier(self.world)
        return final
