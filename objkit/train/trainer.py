"""The training loop around the step: builds a run (the recipe's encoder, objectives, optimizer and
schedule, :mod:`objkit.contract.optim`), then steps it with events (:mod:`objkit.contract.events`: logging,
evaluation, callbacks), checkpoints, resumption, the time budget and the export. One optimizer
step, top to bottom (collate, forward, loss normalisation, backward, gradient sync, clip, skip on
non-finite, optimizer and schedule, after-step hooks) is :class:`objkit.train.step.TrainStep`, with the
parallel strategy (:mod:`objkit.distributed`) and the memory methods (:mod:`objkit.train.memory`)
plugged in at its named points; what happens on signals, non-finite steps and failed writes is in
:mod:`objkit.distributed.faults`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from objkit.train import checkpoint as ckpt
from objkit import distributed
from objkit.distributed import faults
from objkit.train import sharded_checkpoint as sharded
from objkit.train.metrics import StepStats, summarise, to_host
from objkit.data import ExampleStream
from objkit.data.bucketing import BucketedStream
from objkit.contract.interfaces import StepContext, WorldInfo
from objkit.train.prefetch import StepPrefetcher
from objkit.distributed.processes import quiet_rank  # objkit run --nproc: its launcher says what ends the run
from objkit.train.memory import (
    MasterWeightsHook,
    apply_train_options,
    encoder_run_options,
    low_precision_dtype,
    master_weights_for,
)
from objkit.recipe.loader import ResolvedRecipe
from objkit.contract.registry import Registry
from objkit.contract.events import Callback, Events, FitState
from objkit.blocks.grad_pool import GradPool
from objkit.train.reporting import MetricsReport, ProgressBar
from objkit.train.build import (
    accumulation_steps,
    build_callbacks,
    build_encoder,
    build_objectives,
    build_optimizer,
    build_schedule,
    load_tokenizer,
)
from objkit.distributed.device import (
    autocast_factory,
    resolve_precision,
    return_freed_host_memory,
    thread_counts,
    training_device,
)
from objkit.blocks.seeding import derive_seed, seed_everything
from objkit.train.step import CollatedStep, CompositeLoss, ObjectiveSlot, StepHook, TrainStep
from objkit.data.tokenizer import save_tokenizer_for
from objkit.train.resume import ResumeFromCheckpoint
from objkit.data.vocab import fit_vocabulary


class Trainer(ResumeFromCheckpoint):
    """Builds everything a recipe describes and trains it into ``run_dir``."""

    def __init__(self, resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool = True,
                 world: WorldInfo | None = None, step_hooks: Sequence[StepHook] = ()) -> None:
        """``world``: the process group the caller joined (:func:`objkit.distributed.process_group`,
        as ``objkit run`` does). Without it the trainer joins torchrun's group itself and the caller
        leaves it (:func:`objkit.distributed.shutdown_distributed`). ``step_hooks``: more
        :class:`~objkit.train.step.StepHook` objects plugged into every step, after the memory methods'."""
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.train_cfg = self.recipe.train
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.progress = progress
        self.device = training_device(self.train_cfg.device, distributed.env_world().rank)
        return_freed_host_memory(self.device)  # before the model: its blocks are mmap'd too
        if world is None:
            world = distributed.init_distributed(self.device, timeout=self.train_cfg.collective_timeout)
        self.world = world
        if not self.world.is_main:  # rank 0 alone reports
            datasets.disable_progress_bars()
        self.precision = resolve_precision(self.train_cfg.precision, self.device)
        self.micro_batch_size, self.accumulation = accumulation_steps(self.train_cfg, self.world)
        seed_everything(self.train_cfg.seed)

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = load_tokenizer(resolved, world=self.world)
        options = encoder_run_options(self.train_cfg, list(self.recipe.enabled_objectives()), self.world.world_size,
                                      self.precision)  # what the encoder honours (docs/guides/memory.md)
        encoder = build_encoder(resolved, registry, vocab_size=len(self.tokenizer), options=options)
        fit_vocabulary(resolved, encoder, self.tokenizer)  # an extended tokenizer: new rows before the optimizer
        self.encoder = encoder.to(self.device)
        self.objectives = build_objectives(
            resolved, registry, self.encoder, self.tokenizer, self.device, self.world, self.precision
        )
        # train.param_dtype = "bf16": bf16 weights in the step, fp32 masters for the optimizer; made before
        # DDP wraps the parameters (its buckets take their dtype)
        self.master_weights = master_weights_for(self.train_cfg, self.precision, self.encoder, self.world)
        self.streams = self._build_streams()
        self.strategy = distributed.parallelize(
            self.encoder, [b.objective for b in self.objectives], self.world, self.device,
            self.train_cfg.parallelism, self.precision,
            param_dtype=low_precision_dtype(self.train_cfg, self.precision),  # FSDP2 only: gathers its shards in it
        )
        memory_hooks = apply_train_options(self.encoder, self.strategy, [b.objective for b in self.objectives],
                                           self.train_cfg, self.device)
        params = self.params = self.strategy.parameters()
        if self.master_weights is not None:  # the optimizer, clipping and the non-finite check see fp32 masters
            params = self.params = self.master_weights.master_for(params)
            memory_hooks = [*memory_hooks, MasterWeightsHook(self.master_weights,
                                                             every_backward=self.strategy.mode == "single")]
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
            strategy=self.strategy,
        )
        self.step = 0
        self.bad_steps = faults.BadSteps(self.train_cfg.max_bad_steps)
        # one optimizer step, top to bottom, with the strategy and memory methods at its named points
        self.run_step = TrainStep(
            self.composite, self.strategy, self.optimizer, self.scheduler, self.scaler, params,
            [b.objective for b in self.objectives], self.bad_steps, clip_norm=self.train_cfg.clip_norm,
            grad_pool=GradPool(keep=True), hooks=[*memory_hooks, *step_hooks],
        )
        self.stopped_by: str | None = None  # the signal that ended fit() early, if any
        self.train_seconds = 0.0  # train.time_budget's clock, summed over the segments of a resumed run
        self.budget_spent = False  # the run ended at train.time_budget, before train.steps
        self._segment_start: float | None = None  # the clock when this process began training
        self.aborted: faults.RunAborted | None = None  # train.max_bad_steps reached in the step just taken
        self.prefetcher: StepPrefetcher | None = None  # collates the next step during fit()
        self.stop_agreed = False  # a stop request agreed by every rank at the last step
        self.pending_save: sharded.PendingSave | None = None  # train.checkpoint_async: the write in flight

    # ------------------------------------------------------------------ data
    def _build_streams(self) -> dict[str, ExampleStream | BucketedStream]:
        """Rows and α-sampling streams of every objective (:func:`objkit.train.prepare.build_streams`:
        rank 0 tokenizes, or reads ``data.cache_dir``, while the others wait;
        pair objectives length-bucketed with ``train.length_bucketing``)."""
        from objkit.train.prepare import build_streams, cache_dir_of

        return build_streams(self.resolved, self.objectives, self.tokenizer, self.registry, self.world,
                             cache_dir_of(self.resolved))

    # ------------------------------------------------------------------ state
    def _objective_states(self) -> dict[str, dict[str, Any]]:
        return {b.name: b.objective.state_dict() for b in self.objectives}

    def _stream_states(self) -> dict[str, Any]:
        """The streams' position after the last trained step (the prefetcher may have drawn
        the next step's examples already)."""
        if self.prefetcher is not None and self.prefetcher.consumed_states is not None:
            return self.prefetcher.consumed_states
        return {name: stream.state_dict() for name, stream in self.streams.items()}

    def _rank_state(self, streams: dict[str, Any]) -> dict[str, Any]:
        """What differs between ranks: RNG states (dropout) and the positions of streamed sources."""
        return {
            "rng": ckpt.capture_rng_state(self.device),
            "streams": {name: state for name, state in streams.items() if self.streams[name].per_rank},
        }

    def _trainer_state(self, streams: dict[str, Any], ranks: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "step": self.step,
            "streams": streams,
            "rank_streams": [r["streams"] for r in ranks],
            "world_size": self.world.world_size,
            "parallelism": self.strategy.mode,
            "bad_steps": self.bad_steps.state_dict(),
            "threads": thread_counts(),
            "train_seconds": self._train_seconds(),
        }

    def _versions(self) -> dict[str, Any]:
        from objkit import __version__

        return {"objkit": __version__, "plugins": self.registry.versions(), "threads": thread_counts()}

    def _write_failed(self, exc: OSError) -> faults.RunAborted:
        previous = ckpt.list_checkpoints(self.run_dir)
        kept = f"the last complete checkpoint, {previous[-1]}, is intact" if previous else "no checkpoint yet"
        return faults.write_error(exc, f"checkpoint step {self.step}", kept)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step. Every rank calls this (FSDP gathers full
        tensors, every rank's RNG state is collected); rank 0 alone writes, unless
        ``train.checkpoint_format = "sharded"`` (every rank writes its shard)."""
        with self.fp32_weights():
            return self._save()

    def fp32_weights(self) -> contextlib.AbstractContextManager[Any]:
        """Within it the model holds its fp32 weights: the masters under ``train.param_dtype =
        "bf16"`` (:meth:`objkit.blocks.master_weights.MasterWeights.swapped_in`), else as it is.
        Checkpoints, resumes, the export and evaluation callbacks see these."""
        return self.master_weights.swapped_in() if self.master_weights is not None else contextlib.nullcontext()

    def _save(self) -> Path | None:
        if self.train_cfg.checkpoint_format == "sharded":
            return self._save_sharded()
        model = self.strategy.model_for_save()
        objectives = {name: self.strategy.full_state(state) for name, state in self._objective_states().items()}
        optimizer = self.strategy.optimizer_state(self.optimizer)
        streams = self._stream_states()
        ranks = distributed.all_gather_objects(self._rank_state(streams), self.world)
        if not self.world.is_main:
            distributed.barrier(self.world)
            return None
        optimizer_state = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        trainer_state = self._trainer_state(streams, ranks)
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
                versions=self._versions(),
            )
        except OSError as exc:
            raise self._write_failed(exc) from None
        distributed.barrier(self.world)
        return path

    def _save_sharded(self, asynchronous: bool = False) -> Any:
        """Every rank writes its shard (torch.distributed.checkpoint); nothing is gathered but
        the small per-rank JSON state and the shards' digests. ``asynchronous``: returns a
        :class:`~objkit.train.sharded_checkpoint.PendingSave` once the tensors are copied to host memory."""
        streams = self._stream_states()
        ranks = distributed.all_gather_objects(self._rank_state(streams), self.world)
        state, values = sharded.live_state(self.strategy.module, self.optimizer, self._objective_states())
        write = sharded.start_async_save if asynchronous else sharded.save_sharded
        try:
            return write(
                self.run_dir, self.step, world=self.world, state=state, objective_values=values,
                extra={"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()},
                trainer_state=self._trainer_state(streams, ranks), keep=self.train_cfg.keep_checkpoints,
                rng_states=[r["rng"] for r in ranks], recipe_toml=self.resolved.to_toml(), versions=self._versions(),
            )
        except OSError as exc:
            raise self._write_failed(exc) from None

    def start_save(self) -> sharded.PendingSave:
        """``train.checkpoint_async``: wait for the save in flight, if any, then start writing a
        sharded checkpoint of the current step in the background (:attr:`pending_save`); the
        step loop goes on once this rank's tensors are copied to host memory. Every rank calls it."""
        self.await_save()
        with self.fp32_weights():  # the tensors are copied to host memory before it returns
            self.pending_save = self._save_sharded(asynchronous=True)
        return self.pending_save

    def await_save(self) -> Path | None:
        """Wait for the asynchronous save in flight: the completed checkpoint (rank 0; None
        elsewhere, or when none was in flight). Every rank calls it."""
        if self.pending_save is None:
            return None
        pending, self.pending_save = self.pending_save, None
        try:
            return pending.wait()
        except OSError as exc:
            raise self._write_failed(exc) from None

    def _checkpoint(self, events: Events) -> None:
        """Save, and tell the callbacks. With ``train.checkpoint_async`` the previous checkpoint is
        completed first and announced then (``on_checkpoint`` comes when a checkpoint is complete)."""
        if self.train_cfg.checkpoint_async:
            had_pending = self.pending_save is not None
            path = self.await_save()
            if had_pending:
                events.checkpoint(path)
            self.start_save()
        else:
            events.checkpoint(self.save())

    # ------------------------------------------------------------------ loop
    def _clock(self) -> float:
        return time.process_time() if self.train_cfg.time_budget_clock == "process" else time.perf_counter()

    def _train_seconds(self) -> float:
        """``train.time_budget``'s clock so far: earlier segments (from the checkpoint) plus this one."""
        started = self._segment_start
        return self.train_seconds + (self._clock() - started if started is not None else 0.0)

    def _budget_spent(self) -> bool:
        budget = self.train_cfg.time_budget
        return budget is not None and self._train_seconds() >= budget

    @property
    def keep_grad_storage(self) -> bool:
        """Whether the storage of gradients written in place is reused by the next step
        (:class:`objkit.blocks.grad_pool.GradPool`; on by default)."""
        return self.run_step.grad_pool.keep

    @keep_grad_storage.setter
    def keep_grad_storage(self, keep: bool) -> None:
        self.run_step.grad_pool.keep = keep

    def train_step(self, collated: CollatedStep | None = None, stop_requested: bool = False,
                   budget_spent: bool = False) -> StepStats:
        """One optimizer step (:class:`objkit.train.step.TrainStep`) at :attr:`step`, then the step
        counter moves on. ``collated``: the step's batches if collated ahead. ``stop_requested``
        (a signal on this rank) is agreed over ranks in the same all-reduce as the non-finite
        check, into :attr:`stop_agreed`; so is ``budget_spent`` (``train.time_budget`` spent when
        the step began, on any rank), into :attr:`budget_spent`."""
        ctx = StepContext(step=self.step, encoder=self.encoder, device=self.device, world=self.world)
        out = self.run_step(ctx, collated, stop_requested, budget_spent)
        self.stop_agreed, self.budget_spent = out.stop_agreed, out.budget_spent
        if out.aborted is not None:  # raised by fit() once this step is counted and logged
            self.aborted = out.aborted
        if self.world.is_main and out.message:
            tqdm.write(out.message, file=sys.stderr)
        self.step += 1
        return out.stats

    def fit(self, callbacks: Sequence[Callback] = ()) -> None:
        """Train to ``train.steps`` (or ``train.time_budget``, whichever comes first), resuming from
        the newest intact checkpoint in ``run_dir``.

        Events go to objkit's progress bar and metrics report, then to the recipe's
        ``[callbacks]``, then to ``callbacks`` (periodic evaluation; see :mod:`objkit.contract.events`).
        SIGTERM / SIGINT end it early, after the current step and a checkpoint:
        ``self.stopped_by`` then names the signal.
        """
        self._resume_newest()
        self._segment_start = self._clock()
        # a run resumed with its budget spent (checkpoint values: the same on every rank) is finished
        self.budget_spent = self.train_cfg.time_budget is not None and self.train_seconds >= self.train_cfg.time_budget
        state = FitState(run_dir=self.run_dir, total_steps=self.train_cfg.steps, world=self.world,
                         encoder=self.encoder, tokenizer=self.tokenizer, step=self.step, device=self.device)
        state._full_weights = self._full_weights
        builtin = [ProgressBar(self.progress), MetricsReport(self.train_cfg.report_to)]
        events = Events([*builtin, *self.callbacks, *callbacks], state)
        window: list[StepStats] = []
        self.prefetcher = StepPrefetcher(
            lambda step: self.composite.collate_step(step, self.world),
            lambda: {name: stream.state_dict() for name, stream in self.streams.items()},
            start=self.step, stop=self.train_cfg.steps,
        )
        try:
            events.fit_start()
            window_start = time.perf_counter()
            with faults.StopRequest(announce=self.world.is_main and not quiet_rank()) as stop:
                while self.step < self.train_cfg.steps and not self.budget_spent:
                    faults.pause_for_test("step", self.step + 1)
                    stats = self.train_step(self.prefetcher.get(self.step), stop.requested, self._budget_spent())
                    state.step = self.step
                    window.append(stats)
                    last = self.step == self.train_cfg.steps or self.budget_spent
                    if self.step % self.train_cfg.log_every == 0 or last or self.aborted is not None:  # the steps an abort names are in metrics.jsonl
                        elapsed = time.perf_counter() - window_start
                        events.log(self._summarise(window, elapsed))
                        window, window_start = [], time.perf_counter()
                    events.step_end(stats.values)
                    if self.aborted is not None:  # what is left to resume from, once the save in flight is done
                        last = self.await_save() or (ckpt.list_checkpoints(self.run_dir) or [None])[-1]
                        raise faults.RunAborted(f"{self.aborted}; " + (f"the last checkpoint, {last}, is intact"
                                                                       if last else "no checkpoint was written"))
                    saved = False
                    if self.step % self.train_cfg.checkpoint_every == 0 or last:
                        self._checkpoint(events)
                        saved = True
                    # several ranks: agreed with the step's non-finite check (no collective of its own)
                    stop_now = self.stop_agreed or (self.world.world_size == 1 and stop.requested)
                    if stop_now and not last:
                        if not saved:
                            self._checkpoint(events)
                        self.stopped_by = state.stopped_by = stop.signal_name or "a signal to another rank"
                        break
                if self.pending_save is not None:  # the last asynchronous save: complete before fit returns
                    events.checkpoint(self.await_save())
        except BaseException as exc:
            state.error = exc
            raise
        finally:
            self._close_prefetcher()
            if self.pending_save is not None:  # a fault: let the write in flight finish before leaving
                pending, self.pending_save = self.pending_save, None
                with contextlib.suppress(BaseException):  # the fault being raised is the error to report
                    pending.wait()
            events.fit_end()

    @contextlib.contextmanager
    def _full_weights(self, on: str = "every_rank") -> Any:
        """:meth:`objkit.contract.events.FitState.full_weights`: the strategy's full weights, fp32
        (:meth:`fp32_weights`)."""
        with self.fp32_weights(), self.strategy.full_weights(on) as model:
            yield model

    def _close_prefetcher(self) -> None:
        """Stop collating ahead and put the streams back where the last trained step left them."""
        if self.prefetcher is None:
            return
        prefetcher, self.prefetcher = self.prefetcher, None
        prefetcher.close()
        if prefetcher.consumed_states is not None:
            for name, state in prefetcher.consumed_states.items():
                self.streams[name].load_state_dict(state)

    def _summarise(self, window: list[StepStats], elapsed: float) -> dict[str, float]:
        means, tokens = summarise(window, self.world)  # every rank calls this: reduced over ranks
        record: dict[str, float] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        record.update(means)
        record["tok/s"] = tokens / elapsed if elapsed > 0 else math.nan
        if self.bad_steps.total:
            record["skipped_steps"] = self.bad_steps.total
        return record

    def budget_record(self) -> dict[str, Any]:
        """What ``train.time_budget`` did (empty without one): for the export's ``objkit.json``."""
        if self.train_cfg.time_budget is None:
            return {}
        return {"time_budget": self.train_cfg.time_budget, "time_budget_clock": self.train_cfg.time_budget_clock,
                "train_seconds": round(self._train_seconds(), 3),
                "ended_by": "train.time_budget" if self.budget_spent else "train.steps"}

    # ------------------------------------------------------------------ export
    def export(self) -> Path | None:
        """``run_dir/export``: encoder + tokenizer loadable by AutoModel / AutoTokenizer, a model
        card and the recipe (:func:`objkit.train.export.write_export`, which ``objkit export`` uses too);
        written whole, and refused (nothing touched) when ``export/`` holds files objkit did not
        write. Every rank calls this (FSDP gathers the weights); rank 0 alone writes."""
        with self.fp32_weights():
            return self._export()

    def _export(self) -> Path | None:
        import tomllib

        from objkit.train.export import export_record, objkit_version, write_export
        from objkit.train.model_card import CardInfo

        model = self.strategy.model_for_save()
        if model is None:
            distributed.barrier(self.world)
            return None
        recipe_toml = self.resolved.to_toml()
        card = CardInfo(recipe=tomllib.loads(recipe_toml), step=self.step, total_steps=self.train_cfg.steps,
                        run_dir=self.run_dir, objkit_version=objkit_version())
        final = write_export(self.run_dir / "export", model, self.tokenizer, card=card,
                             record={**export_record(self.step, self.train_cfg.steps, self.resolved.source),
                                     **self.budget_record()},
                             recipe_toml=recipe_toml, writer="objkit run",
                             hint="checkpoints already written are intact")
        distributed.barrier(self.world)
        return final
