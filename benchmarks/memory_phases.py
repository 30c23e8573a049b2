"""Where the host memory of an ``infoxlm_large``-shaped training step goes, phase by phase.

Builds the step of ``large_peak_vs_analytic`` (random weights, fp32, CPU, the queue filled,
activation checkpointing and the chunked head) with ``--layers`` blocks, wraps the trainer's
phases (collate, each objective's forward and backward, the gradient norm, the optimizer step,
``zero_grad``, the objectives' post-step hooks) and prints, per phase, the resident memory
before it, its peak (the kernel's high-water mark, reset before each phase through
``/proc/self/clear_refs``) and after it, in GiB. Linux only::

    python benchmarks/memory_phases.py [--layers 24] [--batch 8] [--length 512] [--steps 2]

The peak of a step sits in a backward pass (measured: the second objective's, TLM, 12.36 GiB
at 24 layers, 8 x 512): the weights, AdamW's moments, the key encoder, the queue and ``.grad``
are resident, plus the recomputed block's activations and the head's chunk; on one process no
copy of the tied word embedding's gradient beside ``.grad``, since the decoder's and the
lookup's gradients go straight into it (while autograd made the lookup's dense gradient, the
third objective's backward peaked at 13.16 GiB, now 12.10), see
:attr:`objkit.train.plan.MemoryEstimate.tied_gradient`. ``OBJKIT_MMAP_THRESHOLD=0`` shows what
glibc's own allocation threshold costs.
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

GiB = 1024**3


def memory() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024 / GiB for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args(argv)
    settings = replace(bench.Settings.quick(), memory_layers=args.layers, memory_xlco_layer=min(args.layers, 12))
    ws = bench.Workspace(settings)
    log: list[tuple[Any, ...]] = []

    def phase(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            before = memory()["VmRSS"]
            reset_peak()
            out = fn(*a, **k)
            now = memory()
            log.append((name, before, now["VmHWM"], now["VmRSS"]))
            return out
        return wrapped

    try:
        tokenizer = ws.tokenizer_for(settings.memory_vocab)
        data = ws.corpus_data(args.length)

        def edit(raw: dict) -> None:
            raw["model"].pop("init", None)
            raw["model"].update(preset="large", max_length=args.length, tokenizer=str(tokenizer),
                                num_layers=args.layers)
            raw["data"] = data
            raw["train"].update(batch_size=args.batch, micro_batch_size=args.batch, steps=10**6, log_every=10**6,
                                checkpoint_every=10**6, device="cpu", activation_checkpointing=True,
                                lm_head_chunk_rows=settings.chunk_rows)
            raw["objectives"]["xlco"]["layer"] = min(args.layers, 12)

        trainer = ws.trainer(ws.recipe(settings.memory_recipe, edit=edit))
        xlco = bench.objective(trainer, "xlco")
        for store in xlco.stores.values():
            store.enqueue(torch.randn(store.size, xlco.dim))
            store.flush()
        gc.collect()
        params = sum(p.numel() for p in trainer.params)
        print(f"{args.layers} layers, micro-batch {args.batch} x {args.length}: {params:,} parameters "
              f"({4 * params / GiB:.2f} GiB fp32), key encoder {4 * xlco.tracker.numel() / GiB:.2f} GiB; "
              f"resident after building {memory()['VmRSS']:.2f} GiB")
        original_backward = torch.Tensor.backward
        torch.Tensor.backward = phase("backward", original_backward)  # type: ignore[method-assign]
        try:
            trainer.strategy.forward = phase("forward", trainer.strategy.forward)
            trainer.strategy.grad_norm = phase("grad_norm", trainer.strategy.grad_norm)
            trainer.optimizer.step = phase("optimizer.step", trainer.optimizer.step)
            trainer.optimizer.zero_grad = phase("zero_grad", trainer.optimizer.zero_grad)
            for built in trainer.objectives:
                built.objective.after_optimizer_step = phase(f"after_step[{built.name}]",
                                                             built.objective.after_optimizer_step)
            for step in range(args.steps):
                log.append((f"step {step}",))
                trainer.train_step()
        finally:
            torch.Tensor.backward = original_backward  # type: ignore[method-assign]
    finally:
        ws.close()
    print(f"{'phase':22s} {'before':>8s} {'peak':>8s} {'after':>8s}  (GiB resident)")
    for row in log:
        if len(row) == 1:
            print(f"-- {row[0]}")
        else:
            print(f"{row[0]:22s} {row[1]:8.2f} {row[2]:8.2f} {row[3]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
