"""``cpu_step_speedup`` (issue 29): the CPU training step with the storage of in-place gradients
kept from step to step (:mod:`objkit.blocks.grad_pool`) and the tied decoder's gradient of the head in
one piece written into ``.grad``, against the old step that made fresh gradient buffers.

Two trainers of ``recipes/xlmr_mlm.toml`` at the suite's base shape (``head_*`` settings:
12 layers, hidden 768, vocabulary 250,002, B = 4, L = 128, random weights, the synthetic corpus),
built alike (same seed: same weights, same batches), in one process. ``old`` is the step as it
was: ``Trainer.keep_grad_storage = False`` (every ``.grad`` freed after the optimizer step, as
``optimizer.zero_grad(set_to_none=True)`` did) and ``encoder.run_options.lm_head_grad_in_place = False``
(the head in one piece hands autograd its decoder gradient), so each step makes two fresh
250,002 × 768 fp32 tensors (768 MB of new pages each, faulted in and zeroed by the kernel): the
decoder's gradient and the tied embedding's ``.grad``. ``new`` is the trainer as it is. Their
``Trainer.train_step`` runs in alternating repetitions (``bench.alternate``); the value is the
median of the per-repetition ratios old / new. The first step's loss is bit-identical (same
weights, same batch); later ones differ in the last bits (the decoder gradient's matmul is
another kernel), which the row reports.

    python benchmarks/cpu_step.py [--quick | --toy] [--threads N] [--reps N] [--json OUT.json]

runs the row alone (the suite, ``benchmarks/run.py --only cpu_step_speedup``, runs it too).
"""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

GOAL = (">=", 1.2, "CPU MLM step making fresh gradient buffers / keeping them (base shape)")


def _mlm_trainer(ws: Any, bench: Any) -> Any:
    s = ws.settings
    resolved = bench.xlmr_mlm_recipe(ws, layers=s.head_layers, hidden=s.head_hidden, heads=s.head_heads,
                                     ffn=s.head_ffn, vocab=s.head_vocab, batch=s.head_batch, length=s.head_length)
    return ws.trainer(resolved)


def cpu_step_speedup(ws: Any, bench: Any) -> dict[str, Any]:
    """The row: ``bench`` is ``benchmarks/run.py`` (``alternate``, ``median_ratio``, ``summary``,
    ``xlmr_mlm_recipe``); ``ws`` its ``Workspace``."""
    from objkit.blocks.grad_pool import spare_grad_bytes

    s = ws.settings
    old = _mlm_trainer(ws, bench)
    new = _mlm_trainer(ws, bench)
    old.keep_grad_storage = False
    old.encoder.run_options = dataclasses.replace(old.encoder.run_options, lm_head_grad_in_place=False)
    losses: dict[str, list[float]] = {"old": [], "new": []}
    faults: dict[str, list[int]] = {"old": [], "new": []}  # minor page faults per step: load-independent

    def step(name: str, trainer: Any) -> None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        stats = trainer.train_step()
        faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        losses[name].append(float(stats.sums["mlm/loss"]))

    times = bench.alternate({"old": lambda: step("old", old), "new": lambda: step("new", new)}, s.head_reps)
    result = {
        "value": bench.median_ratio(times["old"], times["new"]),
        "model": {"layers": s.head_layers, "hidden": s.head_hidden, "vocab": s.head_vocab,
                  "parameters": sum(p.numel() for p in new.params)},
        "batch": f"{s.head_batch} x {s.head_length}",
        "kept_bytes_between_steps": {"old": spare_grad_bytes(old.params), "new": spare_grad_bytes(new.params)},
        "first_loss_identical": losses["old"][0] == losses["new"][0],
        "max_relative_loss_difference": max(abs(a - b) / abs(a) for a, b in zip(losses["old"], losses["new"])),
        "minor_page_faults_per_step": {k: statistics.median(v[1:] or v) for k, v in faults.items()},
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "times": {k: bench.summary(v) for k, v in times.items()},
    }
    if not result["first_loss_identical"] or result["max_relative_loss_difference"] > 1e-4:
        raise AssertionError(f"the old and new steps computed different losses: {losses}")
    del old, new
    gc.collect()
    return result


def describe(d: dict[str, Any]) -> str:
    """The details column of the performance table."""
    t, m = d["times"], d["model"]
    kept = d["kept_bytes_between_steps"]["new"] / 2**20
    pf = d["minor_page_faults_per_step"]
    return (f"{t['old']['median_s']:.2f} s vs {t['new']['median_s']:.2f} s per step ({pf['old']:,.0f} vs "
            f"{pf['new']:,.0f} page faults); MLM, {m['layers']} layers, "
            f"vocab {m['vocab']:,}, B×L {d['batch'].replace(' x ', '×')}; {kept:,.0f} MiB kept between steps, "
            f"losses within {d['max_relative_loss_difference']:.0e}")


def _row(ws: Any) -> dict[str, Any]:
    from suite import common

    return cpu_step_speedup(ws, common)


def _rows() -> list[Any]:
    from suite.registry import Row

    return [Row("cpu_step_speedup", _row, *GOAL, describe)]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as bench

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the suite's --quick settings (4 layers)")
    size.add_argument("--toy", action="store_true", help="toy sizes: checks that it runs (numbers mean nothing)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--reps", type=int, help="repetitions (default: the settings' head_reps)")
    p.add_argument("--json", type=Path, help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = bench.Settings.toy() if args.toy else bench.Settings.quick() if args.quick else bench.Settings.full()
    if args.reps:
        settings.head_reps = args.reps
    ws = bench.Workspace(settings)
    try:
        result = cpu_step_speedup(ws, bench)
    finally:
        ws.close()
    direction, goal, _ = GOAL
    verdict = result["value"] >= goal if direction == ">=" else result["value"] <= goal
    print(json.dumps(result, indent=1, default=str))
    print(f"cpu_step_speedup {result['value']:.3f} (goal {direction} {goal}: {'pass' if verdict else 'FAIL'})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


ROWS = _rows()  # the suite's row (suite/registry.py)

if __name__ == "__main__":
    sys.exit(main())
