"""Rows on tokens per second: the data pipeline against the trainer it feeds
(``data_pipeline_margin``), and objkit's trainer against Hugging Face's ``Trainer`` on the same
model and data (``vs_hf_trainer``)."""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import time
from typing import Any

import torch

from suite.common import Workspace, alternate, objective, quiet, summary
from suite.registry import Row


def bench_data_pipeline(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """Tokens/s the quickstart data pipeline delivers -- tokenize the CLDR corpus, pack MLM
    blocks and lay out TLM pairs (``Trainer._build_streams``), then α-sample and collate (mask,
    pad) the MLM and TLM micro-batches of ``pipeline_steps`` steps -- against tokens/s the
    quickstart ``Trainer.train_step`` consumes (MLM + TLM), alternating."""
    from objkit.train.step import micro_batch_seed

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart())
    seed, size = trainer.train_cfg.seed, trainer.micro_batch_size
    delivered: list[int] = []
    consumed: list[int] = []
    build_seconds: list[float] = []

    def pipeline() -> None:
        started = time.perf_counter()
        with quiet():
            streams = trainer._build_streams()
        build_seconds.append(time.perf_counter() - started)
        total = 0
        for step in range(s.pipeline_steps):
            for built in trainer.objectives:
                generator = torch.Generator().manual_seed(micro_batch_seed(seed, built.name, step, 0, 0))
                batch = built.objective.collate(streams[built.name].next_examples(size), generator)
                total += int(batch["attention_mask"].sum())
        delivered.append(total)

    def train() -> None:
        consumed.append(sum(trainer.train_step().tokens for _ in range(s.pipeline_trainer_steps)))

    times = alternate({"pipeline": pipeline, "trainer": train}, s.pipeline_reps)
    warm = len(delivered) - len(times["pipeline"])
    rates_p = [n / t for n, t in zip(delivered[warm:], times["pipeline"], strict=True)]
    rates_t = [n / t for n, t in zip(consumed[warm:], times["trainer"], strict=True)]
    margin = statistics.median(a / b for a, b in zip(rates_p, rates_t, strict=True))
    build = statistics.median(build_seconds[warm:])
    steady = [(n / (t - b)) for n, t, b in zip(delivered[warm:], times["pipeline"], build_seconds[warm:], strict=True)]
    return {
        "value": margin,
        "recipe": "quickstart (MLM + TLM, embedded CLDR corpus)",
        "pipeline_tokens_per_s": statistics.median(rates_p),
        "trainer_tokens_per_s": statistics.median(rates_t),
        "steps_delivered_per_rep": s.pipeline_steps,
        "tokenize_pack_seconds": build,
        "sample_collate_tokens_per_s": statistics.median(steady),
        "times": {k: summary(v) for k, v in times.items()},
    }


def bench_vs_hf_trainer(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """objkit's ``Trainer.train_step`` (quickstart recipe, MLM only) against ``transformers.Trainer``
    with ``DataCollatorForLanguageModeling`` (15%, 80/10/10) on a copy of the same model, the
    same packed MLM blocks (objkit's ``load_source`` + MLM ``prepare``), the same batch size,
    learning rate, betas, eps, weight decay, warm-up and clipping; HF's default optimizer.
    The two alternate step by step: a ``TrainerCallback`` runs one objkit step after each HF
    step. Tokens are non-padding tokens of each forward."""
    from transformers import DataCollatorForLanguageModeling, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    from objkit.data import load_source

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart(["objectives.tlm.enabled=false"]))
    recipe = trainer.recipe
    mlm = objective(trainer, "mlm")
    with quiet():
        source = recipe.data["mono"]
        blocks = mlm.prepare(load_source("mono", source, trainer.tokenizer, max_tokens=recipe.model.max_length - 2))
    blocks = blocks.remove_columns([c for c in blocks.column_names if c != "input_ids"])
    model = copy.deepcopy(trainer.encoder.mlm)
    hf_tokens: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: hf_tokens.append(int(kwargs["attention_mask"].sum())), with_kwargs=True
    )
    warmup = 2
    steps = warmup + s.hf_reps
    times: dict[str, list[float]] = {"objkit": [], "hf_trainer": []}
    objkit_tokens: list[int] = []

    class Alternate(TrainerCallback):
        def __init__(self) -> None:
            self.mark = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            hf_seconds = time.perf_counter() - self.mark
            started = time.perf_counter()
            stats = trainer.train_step()
            objkit_seconds = time.perf_counter() - started
            if state.global_step > warmup:
                times["hf_trainer"].append(hf_seconds)
                times["objkit"].append(objkit_seconds)
                objkit_tokens.append(stats.tokens)
            self.mark = time.perf_counter()

    opt = trainer.resolved.optimizer_config  # [train.optimizer] as the adamw plugin validated it
    args = TrainingArguments(
        output_dir=str(ws.run_dir()), per_device_train_batch_size=trainer.micro_batch_size, max_steps=steps,
        learning_rate=recipe.train.lr, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], adam_epsilon=opt.eps,
        weight_decay=opt.weight_decay, warmup_steps=recipe.train.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=recipe.train.clip_norm or 0.0, logging_steps=recipe.train.log_every, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=recipe.train.seed, disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(trainer.tokenizer, mlm_probability=0.15)
    with quiet(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 (HF prints its metrics)
        hf = HFTrainer(model=model, args=args, train_dataset=blocks, data_collator=collator, callbacks=[Alternate()])
        hf.train()
    hf_per_step = hf_tokens[-len(times["hf_trainer"]) :]
    rate_hf = [n / t for n, t in zip(hf_per_step, times["hf_trainer"], strict=True)]
    rate_ok = [n / t for n, t in zip(objkit_tokens, times["objkit"], strict=True)]
    return {
        "value": statistics.median(a / b for a, b in zip(rate_ok, rate_hf, strict=True)),
        "objkit_tokens_per_s": statistics.median(rate_ok),
        "hf_tokens_per_s": statistics.median(rate_hf),
        "hf_optimizer": str(args.optim),
        "objkit_optimizer": repr({k: trainer.optimizer.defaults[k] for k in ("foreach", "fused")}),
        "batch": trainer.micro_batch_size,
        "times": {k: summary(v) for k, v in times.items()},
    }


def describe_data_pipeline(d: dict[str, Any]) -> str:
    return (f"{d['pipeline_tokens_per_s']:,.0f} vs {d['trainer_tokens_per_s']:,.0f} tokens/s "
            f"(tokenize + pack {d['tokenize_pack_seconds']:.1f} s included)")


def describe_vs_hf_trainer(d: dict[str, Any]) -> str:
    return f"{d['objkit_tokens_per_s']:,.0f} vs {d['hf_tokens_per_s']:,.0f} tokens/s"


ROWS = [
    Row("data_pipeline_margin", bench_data_pipeline, ">=", 10.0,
        "data pipeline tokens/s / trainer tokens/s (quickstart)", describe_data_pipeline),
    Row("vs_hf_trainer", lambda ws: bench_vs_hf_trainer(ws, ws.quickstart_mlm()), ">=", 1.0,
        "objkit MLM tokens/s / HF Trainer tokens/s (quickstart model)", describe_vs_hf_trainer),
]
