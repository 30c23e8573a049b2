"""The training loop: AdamW, warmup + linear decay, accumulation, clipping, logging,
checkpoints, resumption, export. Loss composition lives in :mod:`objkit.composite`."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

from objkit import checkpoint as ckpt
from objkit.composite import CompositeLoss, ObjectiveSlot, StepStats
from objkit.data import ExampleStream, load_source, source_group_sizes
from objkit.interfaces import StepContext
from objkit.recipe import ResolvedRecipe, source_kind
from objkit.registry import Registry
from objkit.reporting import MetricsWriter
from objkit.runtime import (
    accumulation_steps,
    adamw_kernel,
    autocast_factory,
    build_encoder,
    build_objectives,
    init_distributed,
    load_tokenizer,
    resolve_device,
    resolve_precision,
)


def set_seed(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything a recipe describes and trains it into ``run_dir``."""

    def __init__(self, resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool = True) -> None:
        self.resolved = resolved
        self.recipe = resolved.recipe
        self.train_cfg = self.recipe.train
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.progress = progress
        self.world = init_distributed()
        self.device = resolve_device(self.train_cfg, self.world)
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
        params = list(self.encoder.parameters())
        for built in self.objectives:
            for module in built.objective.trainable_modules().values():
                params.extend(p for p in module.parameters() if p.requires_grad)
        self.params = params
        opt = self.train_cfg.optimizer
        self.optimizer = torch.optim.AdamW(
            params, lr=self.train_cfg.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay,
            **adamw_kernel(params),
        )
        make_schedule = (
            get_linear_schedule_with_warmup if self.train_cfg.schedule == "linear" else get_constant_schedule_with_warmup
        )
        kwargs = {"num_training_steps": self.train_cfg.steps} if self.train_cfg.schedule == "linear" else {}
        self.scheduler = make_schedule(self.optimizer, num_warmup_steps=self.train_cfg.warmup_steps, **kwargs)
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
        )
        self.step = 0

    # ------------------------------------------------------------------ data
    def _build_streams(self) -> dict[str, ExampleStream]:
        tokenized: dict[str, Any] = {}
        streams = {}
        for built in self.objectives:
            source = self.recipe.data[built.data]
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

    def save(self) -> Path | None:
        if not self.world.is_main:
            return None
        optimizer_state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }
        trainer_state = {
            "step": self.step,
            "streams": {name: stream.state_dict() for name, stream in self.streams.items()},
        }
        return ckpt.save_checkpoint(
            self.run_dir,
            self.step,
            model=self.encoder,
            objectives=self._objective_states(),
            optimizer_state=optimizer_state,
            trainer_state=trainer_state,
            keep=self.train_cfg.keep_checkpoints,
        )

    def resume(self, path: Path) -> None:
        objectives, optimizer_state, trainer_state = ckpt.load_checkpoint(path, self.encoder)
        for built in self.objectives:
            built.objective.load_state_dict(objectives.get(built.name, {}))
        self.optimizer.load_state_dict(optimizer_state["optimizer"])
        self.scheduler.load_state_dict(optimizer_state["scheduler"])
        self.scaler.load_state_dict(optimizer_state["scaler"])
        torch.set_rng_state(optimizer_state["torch_rng"])
        if self.device.type == "cuda" and optimizer_state["cuda_rng"]:
            torch.cuda.set_rng_state_all(optimizer_state["cuda_rng"])
        for name, state in trainer_state["streams"].items():
            self.streams[name].load_state_dict(state)
        self.step = int(trainer_state["step"])

    # ------------------------------------------------------------------ loop
    def _reduce_gradients(self, stats: StepStats) -> None:
        """All-reduce gradients across ranks (one flat buffer per dtype), then normalise."""
        grads = [p.grad for p in self.params if p.grad is not None]
        divisor = float(self.world.world_size)
        if self.world.world_size > 1:
            import torch.distributed as dist

            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
                grad.copy_(reduced)
            if self.train_cfg.normalization == "reference":
                total = torch.tensor([stats.sample_size], dtype=torch.float64, device=self.device)
                dist.all_reduce(total)
                divisor = float(total.item())
        elif self.train_cfg.normalization == "reference":
            divisor = float(stats.sample_size)
        if divisor != 1.0 and grads:
            torch._foreach_mul_(grads, 1.0 / max(divisor, 1.0))

    def train_step(self) -> StepStats:
        self.encoder.train()
        ctx = StepContext(step=self.step, encoder=self.encoder, device=self.device, world=self.world)
        stats = self.composite.accumulate(ctx)
        self._reduce_gradients(stats)
        self.scaler.unscale_(self.optimizer)
        if self.train_cfg.clip_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.clip_norm)
            stats.values["grad_norm"] = float(grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for built in self.objectives:
            built.objective.after_optimizer_step(ctx)
        self.step += 1
        return stats

    def fit(self, evaluate: Any = None) -> None:
        """Train to ``train.steps``, resuming from the newest checkpoint in ``run_dir``."""
        existing = ckpt.list_checkpoints(self.run_dir)
        if existing:
            self.resume(existing[-1])
            if self.world.is_main:
                tqdm.write(f"resumed from {existing[-1]} (step {self.step})")
        writer = MetricsWriter(self.run_dir, self.train_cfg.report_to, enabled=self.world.is_main)
        bar = tqdm(
            total=self.train_cfg.steps,
            initial=self.step,
            disable=not (self.progress and self.world.is_main),
            dynamic_ncols=True,
            desc="train",
        )
        window: list[StepStats] = []
        window_start = time.perf_counter()
        try:
            while self.step < self.train_cfg.steps:
                stats = self.train_step()
                window.append(stats)
                bar.update(1)
                if self.step % self.train_cfg.log_every == 0 or self.step == self.train_cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    record = self._summarise(window, elapsed)
                    writer.write(record)
                    bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k.endswith("/loss") or k == "tok/s"})
                    window, window_start = [], time.perf_counter()
                if evaluate is not None and evaluate.due(self.step, self.train_cfg.steps):
                    results = evaluate(self)
                    writer.write({"step": self.step, **results})
                    bar.set_postfix(results)
                if self.step % self.train_cfg.checkpoint_every == 0 or self.step == self.train_cfg.steps:
                    self.save()
        finally:
            bar.close()
            writer.close()

    def _summarise(self, window: list[StepStats], elapsed: float) -> dict[str, float]:
        keys = sorted({k for s in window for k in s.values})
        record: dict[str, float] = {"step": self.step, "lr": self.scheduler.get_last_lr()[0]}
        for key in keys:
            values = [s.values[key] for s in window if key in s.values]
            record[key] = sum(values) / len(values)
        tokens = sum(s.tokens for s in window) * self.world.world_size
        record["tok/s"] = tokens / elapsed if elapsed > 0 else math.nan
        return record

    # ------------------------------------------------------------------ export
    def export(self) -> Path | None:
        """``run_dir/export``: encoder + tokenizer loadable by AutoModel / AutoTokenizer."""
        if not self.world.is_main:
            return None
        final = self.run_dir / "export"
        tmp = self.run_dir / "export.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.encoder.save_pretrained(str(tmp))
        self.tokenizer.save_pretrained(str(tmp))
        (tmp / "objkit.json").write_text(json.dumps({"step": self.step, "recipe": self.resolved.source}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        return final
