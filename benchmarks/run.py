"""objkit's performance suite: every claim measured side by side, as a ratio, in one run.

    python benchmarks/run.py [--quick] [--json OUT.json] [--markdown OUT.md] [--update-docs]
                             [--only NAME,...] [--threads N]

Each benchmark pairs two variants and runs them in alternating repetitions (A B, B A, A B, ...),
so that load on a shared machine hits both alike; the reported number is the median of the
per-repetition ratios. Every objkit variant drives objkit's own classes (``Trainer``,
``CompositeLoss``, the plugins, ``MomentumTracker``, ``MomentumQueue``, the data layer); the
baselines are Hugging Face ``transformers`` or plain PyTorch. Gated results (JSON keys):

==========================  =========================================================  ======
key                         ratio                                                      goal
==========================  =========================================================  ======
``mlm_head_speedup``        HF ``XLMRobertaForMaskedLM(labels=...)`` step (full-vocab   ≥ 1.7
                            logits) / objkit MLM step (masked-only head); XLM-R-base
                            shape, vocab 250,002, hidden 768, B=4, L=128
``framework_overhead``      objkit ``Trainer.train_step`` (MLM only) / a hand-written   ≤ 1.03
                            PyTorch loop doing the same work (same model, same batches)
``xlco_step_ratio``         InfoXLM (MLM+TLM+XLCO) step / MLM+TLM step, 12 layers,       ≤ 1.5
                            XLCO at layer 8, every objective B sequences of L tokens
``ema_foreach_speedup``     reference EMA loop / ``MomentumTracker.update``, base body   ≥ 2.5
``enqueue_ratio``           ``MomentumQueue`` enqueue at 131,072 keys / at 1,024, d=768  ≤ 1.2
``data_pipeline_margin``    tokens/s the data pipeline delivers / tokens/s the trainer   ≥ 10
                            consumes (quickstart recipe)
``vs_hf_trainer``           objkit tokens/s / HF ``Trainer`` + ``DataCollatorFor-       ≥ 1.0
                            LanguageModeling`` tokens/s (quickstart model, MLM)
``padding_fraction``        padded / all token slots of TLM and XLCO (the worse) with   ≤ 0.10
                            ``train.length_bucketing = 8``, Multi30k pairs (CLDR at
                            ``--toy``); before-bucketing and step-time ratio in details
``tokenizer_throughput``    objkit tokenization tokens/s per core (``load_source``,     ≥ 0.8
                            ``num_proc`` = cores) / SentencePiece ``encode`` tokens/s
                            (one thread), same lines, same model
``cache_startup_speedup``   trainer start-up on a cold ``data.cache_dir`` / on the      ≥ 2
                            warm cache it left (quickstart MLM, ``cache_lines`` lines)
``sampler_bytes_per_row``   bytes the α-sampler holds per row at 10^8 simulated rows    ≤ 0.1
                            (``tracemalloc``; draws/s under ``details``)
==========================  =========================================================  ======

Not gated (under ``details``): peak RSS of one ``infoxlm_large`` step (B=1, L=128, random
weights, CPU) against an analytic estimate, and model FLOP utilisation of the quickstart and
base-shape steps against the machine's measured fp32 matmul peak. ``--quick`` uses fewer
repetitions, 4 layers for the MLM-head benchmark (full vocabulary and hidden size kept) and a
12-layer model of hidden 256 with the quickstart vocabulary for the XLCO step. Everything runs
on CPU with torch's default thread count (``--threads N`` to change it).

Inputs are built by the suite (``suite/common.py``) and need no download: the quickstart
recipe's embedded CLDR corpus, a synthetic corpus of single-token words from the quickstart
tokenizer (so every sequence has exactly L tokens), and that tokenizer padded with
never-matching pieces to XLM-R's 250,002 ids.

The suite is the package ``benchmarks/suite/``: ``settings`` (sizes), ``common`` (timing, the
workspace of inputs), ``registry`` (what a row is; the row modules), the row modules
(``suite.mlm_step``, ``suite.infoxlm``, ``suite.throughput``, and ``padding_fraction.py``,
``memory_speed.py``, ``data_bench.py`` beside this file), ``extras`` (memory, MFU), ``runner``
and ``report``. This file is the command line; it re-exports the suite's names for the scripts
and tests that ``import run``. Adding a row: benchmarks/README.md, "Adding a row".
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

# the suite beside this file (run.py runs as a script, not as a package): imported one way
sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_speed  # noqa: E402
from suite import common, report  # noqa: E402
from suite.common import (  # noqa: E402,F401  (re-exported: memory_phases.py, gpu_sweep.py, tests)
    RECIPES,
    ROOT,
    XLMR_VOCAB,
    Settings,
    Workspace,
    alternate,
    log,
    matmul_peak,
    median_ratio,
    model_dims,
    objective,
    quiet,
    rss_now,
    same_optimizer,
    summary,
    train_flops,
    twin_stream,
    xlmr_mlm_recipe,
)
from suite.extras import bench_memory, memory_child, mfu  # noqa: E402,F401
from suite.infoxlm import bench_ema, bench_enqueue, bench_xlco_step  # noqa: E402,F401
from suite.mlm_step import bench_framework_overhead, bench_mlm_head  # noqa: E402,F401
from suite.registry import ROW_MODULES, Row  # noqa: E402,F401
from suite.report import describe, fmt, markdown, print_table, public_paths  # noqa: E402,F401
from suite.runner import GOALS, ROWS, machine, passes, rows_for, run_suite  # noqa: E402,F401
from suite.throughput import bench_data_pipeline, bench_vs_hf_trainer  # noqa: E402,F401

BENCHMARKS = {key: row.run for key, row in ROWS.items() if "cpu" in row.devices}
"""What a CPU run runs, by key (``--only`` chooses among these, ``memory`` and ``mfu``)."""
GPU_BENCHMARKS = {key: row.run for key, row in ROWS.items() if "cpu" not in row.devices}
"""Rows that need a GPU: run with ``--device cuda`` only."""
CUDA_ROWS = tuple(rows_for("cuda"))
"""What ``--device cuda`` runs (the CPU-only rows compare with HF on CPU or measure host memory)."""

README_BEGIN = "<!-- perf:begin (generated by benchmarks/run.py --update-docs) -->"
README_END = "<!-- perf:end -->"
PUBLISHED = report.PUBLISHED


def update_readme(path: Path, table: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Put ``table`` between the markers ``begin`` and ``end`` (default: this suite's) of ``path``."""
    report.update_readme(path, table, begin, end)


def publish(table: str, begin: str = README_BEGIN, end: str = README_END, root: Path | None = None) -> list[Path]:
    """Put ``table`` between ``begin`` and ``end`` (default: this suite's markers) in every
    published page holding both (``README.md``, ``docs/**/*.md`` under ``root``, the checkout);
    returns those pages. The other benchmark scripts publish their tables with it."""
    return report.publish(table, begin, end, root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and layers (< 20 min on 2 CPU cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help="write the Performance table (docs/results/performance.md) here")
    p.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true",
                   help="replace the table between the perf markers of docs/results/performance.md with this run's")
    p.add_argument("--only", help="comma-separated subset: " + ", ".join([*BENCHMARKS, "memory", "mfu"]))
    p.add_argument("--toy", action="store_true", help="toy sizes: checks that everything runs (numbers mean nothing)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per physical core)")
    p.add_argument("--workdir", type=Path, help="temporary files (default: a fresh temp dir, removed at the end)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the GPU rows (" + ", ".join(CUDA_ROWS) + ") at the XLM-R-base shape, L=512, bf16")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--lean-memory-child", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lean_memory_child:
        return memory_speed.main_child(args, common)
    if args.memory_child:
        result = memory_child(Settings(**json.loads(args.memory_child)), args.workdir)
        args.json.write_text(json.dumps(result, indent=1))
        return 0
    settings = Settings.toy() if args.toy else Settings.quick() if args.quick else Settings.full()
    if args.device == "cuda":
        settings = Settings(**{**asdict(Settings.toy()), "device": "cuda"}) if args.toy else Settings.gpu()
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    doc = run_suite(settings, only, args.workdir)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + (
        " --device cuda" if args.device == "cuda" else "") + (
        f" --threads {args.threads}" if args.threads else "")
    doc["command"] = command
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(doc, command))
    if args.update_docs:
        publish(markdown(doc, command))
    print()
    print(markdown(doc, command))
    return 0 if doc["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
