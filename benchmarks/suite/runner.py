"""The runner: every row of :data:`ROWS` (or those ``--only`` names) on one :class:`Workspace`, then
the extras, into one JSON document: the gated numbers at the top level, then ``goals``,
``all_pass``, ``details`` (each row's details, ``memory``, ``mfu``), ``settings`` and
``machine``."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from suite.common import ROOT, Settings, Workspace, log
from suite.extras import bench_memory, matmul_peak, mfu
from suite.registry import Row, load_rows

ROWS: dict[str, Row] = load_rows()
"""Every row of the suite's row modules (:data:`suite.registry.ROW_MODULES`), by key, in order."""
GOALS: dict[str, tuple[str, float, str]] = {key: (row.direction, row.goal, row.what) for key, row in ROWS.items()}
"""key -> (direction, goal, description), as the JSON's ``goals`` shows them."""


def passes(key: str, value: float) -> bool:
    return ROWS[key].passes(value)


def rows_for(device: str) -> dict[str, Row]:
    """The rows a run on ``device`` runs, in order: with ``cuda`` those that declare it."""
    return {key: row for key, row in ROWS.items() if device in row.devices}


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.strip().startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip() or None
    import transformers

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit,
        "date": datetime.date.today().isoformat(),
    }


def run_suite(settings: Settings, only: list[str] | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run the benchmarks (all, or ``only``); return the JSON document."""
    started = time.perf_counter()
    info = machine()
    load, cores = info["load_average_at_start"][0], os.cpu_count() or 1
    if load > 0.5 * cores and torch.get_num_threads() >= cores:
        info["warning"] = (f"load average {load:.1f} on {cores} cores: other processes compete for the cores "
                           "torch's threads use, so every parallel kernel may wait a scheduler slice for its "
                           "second thread and ratios become noisy; rerun on a quiet machine, or with --threads 1")
        log(f"warning: {info['warning']}")
    ws = Workspace(settings, workdir)
    results: dict[str, dict[str, Any]] = {}
    rows = rows_for(settings.device)
    wanted = only or [*rows, "memory", "mfu"]
    try:
        for key, row in rows.items():
            if key not in wanted:
                continue
            log(f"{key} ...")
            t0 = time.perf_counter()
            results[key] = row.run(ws)
            results[key]["seconds"] = time.perf_counter() - t0
            log(f"{key} = {results[key]['value']:.3f} ({results[key]['seconds']:.0f} s)")
        ws.release()
        extra: dict[str, Any] = {}
        if "mfu" in wanted:
            extra["matmul_peak"] = matmul_peak(settings.matmul_size)
            extra["mfu"] = mfu(results, extra["matmul_peak"]["gflops"], ws)
        if "memory" in wanted and settings.run_memory:
            log("memory: one infoxlm_large step in a child process ...")
            t0 = time.perf_counter()
            extra["memory"] = bench_memory(ws)
            extra["memory"]["seconds"] = time.perf_counter() - t0
            if "peak_rss_bytes" in extra["memory"]:
                m = extra["memory"]
                log(f"memory: peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB, estimate "
                    f"{m['estimate_plus_baseline_bytes'] / 2**30:.2f} GiB")
            else:
                log(f"memory: failed: {extra['memory'].get('error')}")
    finally:
        ws.close()
    doc: dict[str, Any] = {key: results[key]["value"] for key in rows if key in results}
    doc["goals"] = {
        key: {"goal": f"{row.direction} {row.goal}", "value": results[key]["value"],
              "pass": row.passes(results[key]["value"]), "what": row.what}
        for key, row in rows.items() if key in results
    }
    doc["all_pass"] = all(g["pass"] for g in doc["goals"].values())
    doc["details"] = results | extra
    doc["settings"] = asdict(settings)
    doc["machine"] = info
    doc["wall_seconds"] = time.perf_counter() - started
    return doc
