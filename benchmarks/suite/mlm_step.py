"""Rows on one MLM training step: objkit's masked-only LM head against Hugging Face's full-vocabulary
head (``mlm_head_speedup``), and objkit's ``Trainer.train_step`` against the loop a user would
write by hand (``framework_overhead``)."""

from __future__ import annotations

import copy
import gc
import statistics
from typing import Any

import torch

from suite.common import (
    Workspace,
    alternate,
    median_ratio,
    ms,
    objective,
    same_optimizer,
    summary,
    train_flops,
    twin_stream,
    xlmr_mlm_recipe,
)
from suite.registry import Row


def bench_mlm_head(ws: Workspace) -> dict[str, Any]:
    """HF ``XLMRobertaForMaskedLM(input_ids, attention_mask, labels)`` -- full [B, L, V] logits and
    their cross-entropy -- against objkit's ``Trainer.train_step`` with the MLM objective, whose
    LM head runs on the masked positions only. The HF arm is the very same module
    (``trainer.encoder.mlm``) with its own AdamW of the trainer's configuration; both clip
    gradients; both get the same batches (a twin of the trainer's stream, the same masking seeds)."""
    from objkit.train.step import micro_batch_seed

    s = ws.settings
    resolved = xlmr_mlm_recipe(ws, layers=s.head_layers, hidden=s.head_hidden, heads=s.head_heads, ffn=s.head_ffn,
                               vocab=s.head_vocab, batch=s.head_batch, length=s.head_length)
    trainer = ws.trainer(resolved)
    model = trainer.encoder.mlm
    assert model.config.vocab_size == s.head_vocab, model.config.vocab_size
    mlm = objective(trainer, "mlm")
    stream = twin_stream(trainer, "mlm")
    optimizer = same_optimizer(trainer, model.parameters())
    clip = trainer.train_cfg.clip_norm
    seed = trainer.train_cfg.seed
    hf_step = [0]

    def hf() -> None:
        generator = torch.Generator().manual_seed(micro_batch_seed(seed, "mlm", hf_step[0], 0, 0))
        batch = mlm.collate(stream.next_examples(trainer.micro_batch_size), generator)
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hf_step[0] += 1

    times = alternate({"hf_full_vocab": hf, "objkit_masked_only": trainer.train_step}, s.head_reps)
    ratio = median_ratio(times["hf_full_vocab"], times["objkit_masked_only"])
    tokens = s.head_batch * s.head_length
    masked = round(0.15 * (s.head_length - 2) * s.head_batch)
    dims = {"layers": s.head_layers, "hidden": s.head_hidden, "ffn": s.head_ffn, "tokens": tokens, "seq_len": s.head_length,
            "vocab": s.head_vocab}
    flops_objkit = train_flops(layers=dims["layers"], hidden=dims["hidden"], ffn=dims["ffn"], tokens=tokens,
                               seq_len=s.head_length, head_rows=masked, vocab=s.head_vocab)
    flops_hf = train_flops(layers=dims["layers"], hidden=dims["hidden"], ffn=dims["ffn"], tokens=tokens,
                           seq_len=s.head_length, head_rows=tokens, vocab=s.head_vocab)
    result = {
        "value": ratio,
        "model": dims | {"parameters": sum(p.numel() for p in model.parameters())},
        "batch": f"{s.head_batch} x {s.head_length}",
        "optimizer": repr({k: trainer.optimizer.defaults[k] for k in ("foreach", "fused")}),
        "times": {k: summary(v) for k, v in times.items()},
        "model_tflop_per_step": {"objkit": flops_objkit / 1e12, "hf": flops_hf / 1e12},
    }
    del trainer, model, optimizer
    gc.collect()
    return result


def bench_framework_overhead(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """objkit's ``Trainer.train_step`` (quickstart recipe, MLM only: stream, collate, composite
    loss, clipping, AdamW, schedule, hooks, stats) against the minimal loop a user would write on
    the same model: draw the same examples from a twin stream, collate them with the same
    masking seeds, forward, masked-position LM head, cross-entropy, backward, clip, step, zero."""
    import torch.nn.functional as F

    from objkit.train.step import micro_batch_seed
    from objkit.blocks.masking import IGNORE_INDEX

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart(["objectives.tlm.enabled=false"]))
    mlm = objective(trainer, "mlm")
    stream = twin_stream(trainer, "mlm")
    model = copy.deepcopy(trainer.encoder.mlm)
    params = list(model.parameters())
    optimizer = same_optimizer(trainer, params)
    scheduler = type(trainer.scheduler)(optimizer, trainer.scheduler.lr_lambdas[0])
    clip, seed, size = trainer.train_cfg.clip_norm, trainer.train_cfg.seed, trainer.micro_batch_size
    step = [trainer.step]

    def manual() -> None:
        generator = torch.Generator().manual_seed(micro_batch_seed(seed, "mlm", step[0], 0, 0))
        batch = mlm.collate(stream.next_examples(size), generator)
        model.train()
        hidden = model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        loss = F.cross_entropy(model.lm_head(hidden[selected]), labels[selected])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step[0] += 1

    tokens: list[int] = []

    def objkit() -> None:
        tokens.append(trainer.train_step().tokens)

    times = alternate({"objkit_trainer": objkit, "manual_loop": manual}, s.overhead_reps, warmup=2)
    ratio = median_ratio(times["objkit_trainer"], times["manual_loop"])
    return {
        "value": ratio,
        "recipe": "quickstart (MLM only)",
        "batch": f"{trainer.micro_batch_size} sequences, max_length {trainer.recipe.model.max_length}",
        "times": {k: summary(v) for k, v in times.items()},
        "mean_ratio": statistics.mean(a / b for a, b in zip(times["objkit_trainer"], times["manual_loop"])),
        "tokens_per_step": statistics.mean(tokens),
    }


def describe_mlm_head(d: dict[str, Any]) -> str:
    m = d["model"]
    return (f"HF {ms(d, 'hf_full_vocab')} vs objkit {ms(d, 'objkit_masked_only')} per step; {m['layers']} layers, "
            f"hidden {m['hidden']}, vocab {m['vocab']:,}, B×L {d['batch'].replace(' x ', '×')}")


def describe_framework_overhead(d: dict[str, Any]) -> str:
    return f"objkit {ms(d, 'objkit_trainer')} vs hand-written {ms(d, 'manual_loop')} per step; {d['recipe']}"


ROWS = [
    Row("mlm_head_speedup", bench_mlm_head, ">=", 1.7, "HF full-vocab MLM step / objkit masked-only MLM step",
        describe_mlm_head),
    Row("framework_overhead", lambda ws: bench_framework_overhead(ws, ws.quickstart_mlm()), "<=", 1.03,
        "objkit Trainer step / hand-written loop, same work", describe_framework_overhead),
]
