"""The rows of the performance suite: what a row is (:class:`Row`) and where rows come from
(:data:`ROW_MODULES`).

A row module is any module importable from ``benchmarks/`` (``suite.NAME`` inside this
package, or ``NAME.py`` beside ``run.py``) that defines ``ROWS``, a list of :class:`Row`. The
runner imports the modules of :data:`ROW_MODULES` in order and runs their rows in the order
listed; the JSON, the printed table and the published Markdown table follow that order. To add
a row: write its module (a function ``(ws) -> dict`` whose dict holds the gated number under
``"value"``, and a ``describe(d) -> str`` for the table's details column), list it in ``ROWS``,
and add the module's name to :data:`ROW_MODULES` (benchmarks/README.md, "Adding a row").
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROW_MODULES: tuple[str, ...] = (
    "suite.mlm_step",  # mlm_head_speedup, framework_overhead
    "suite.infoxlm",  # xlco_step_ratio, ema_foreach_speedup, enqueue_ratio
    "suite.throughput",  # data_pipeline_margin, vs_hf_trainer
    "padding_fraction",  # padding_fraction
    "packed_attention",  # packed_tokens_per_s_ratio
    "memory_speed",  # large_peak_vs_analytic, checkpointing_step_ratio, chunked_head_time_ratio, compile_speedup,
    # bf16_weights_step_speedup, gpu_mfu
    "data_bench",  # tokenizer_throughput, cache_startup_speedup, sampler_bytes_per_row
    "cpu_step",  # cpu_step_speedup
)
"""Row modules, in the order their rows run and are reported."""


@dataclass(frozen=True)
class Row:
    """One gated number of the suite: ``run(ws)`` returns the row's details with the number
    under ``"value"``; it passes when ``value direction goal`` holds."""

    key: str
    """The JSON key of the number (top level, and under ``goals`` and ``details``)."""
    run: Callable[[Any], dict[str, Any]]
    """``run(ws)``: ``ws`` is the suite's :class:`suite.common.Workspace` (``ws.settings`` the sizes)."""
    direction: str
    """``">="`` or ``"<="``."""
    goal: float
    what: str
    """One line: numerator / denominator, for the JSON's ``goals``."""
    describe: Callable[[dict[str, Any]], str] = lambda d: ""
    """The details column of the Markdown table, from the row's details."""
    devices: tuple[str, ...] = ("cpu",)
    """``"cpu"``: run by default; ``"cuda"``: run with ``--device cuda`` (``("cuda",)``: only then)."""

    def __post_init__(self) -> None:
        if self.direction not in (">=", "<="):
            raise ValueError(f"row {self.key}: direction must be '>=' or '<=' (got {self.direction!r})")
        if not self.devices or not set(self.devices) <= {"cpu", "cuda"}:
            raise ValueError(f"row {self.key}: devices must be 'cpu' and/or 'cuda' (got {self.devices!r})")

    def passes(self, value: float) -> bool:
        return value >= self.goal if self.direction == ">=" else value <= self.goal


def load_rows(modules: tuple[str, ...] = ROW_MODULES) -> dict[str, Row]:
    """Every row of ``modules``, by key, in order; a key defined twice is an error."""
    rows: dict[str, Row] = {}
    for name in modules:
        module = importlib.import_module(name)
        found = getattr(module, "ROWS", None)
        if not found:
            raise RuntimeError(f"row module {name} ({module.__file__}) defines no ROWS")
        for row in found:
            if row.key in rows:
                raise RuntimeError(f"row {row.key} is defined twice (the second in {name})")
            rows[row.key] = row
    return rows
