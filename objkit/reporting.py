"""Where metrics go: ``RUN/metrics.jsonl`` (always, one JSON object per logged step) and,
with ``train.report_to = ["jsonl", "tensorboard"]``, TensorBoard scalars under ``RUN/tensorboard``;
and the progress bar. Both are trainer callbacks (:mod:`objkit.events`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from objkit.errors import UserError
from objkit.events import Callback, FitState


class MetricsWriter:
    def __init__(self, run_dir: Path, report_to: list[str], enabled: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = None
        self.tensorboard = None
        if not enabled:
            return
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError(
                    "train.report_to: 'tensorboard' needs the tensorboard package: pip install 'objkit[tensorboard]'"
                ) from None
            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.jsonl is not None
        self.jsonl.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        self.jsonl.flush()
        if self.tensorboard is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def strict_json(record: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities as ``null``: bare ``NaN`` is not JSON, and strict parsers reject it
    (a skipped step's loss; the count of skipped steps is ``skipped_steps``)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (logged by a run that was killed before its next
    checkpoint), so that a resumed run's metrics read as one uninterrupted run."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the kill
        if isinstance(record, dict) and int(record.get("step", 0)) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        from objkit.checkpoint import atomic_write_text

        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


class MetricsReport(Callback):
    """``metrics.jsonl`` (and TensorBoard) from ``on_log`` and ``on_eval`` records, on rank 0. On
    start it drops the records a killed run logged after its last checkpoint."""

    name = "metrics_report"

    def __init__(self, report_to: list[str]) -> None:
        super().__init__()
        self.report_to = report_to
        self.writer: MetricsWriter | None = None

    def on_fit_start(self, state: FitState) -> None:
        if state.world.is_main:
            truncate_metrics(state.run_dir / "metrics.jsonl", state.step)
        self.writer = MetricsWriter(state.run_dir, self.report_to, enabled=state.world.is_main)

    def _write(self, record: dict[str, Any]) -> None:
        assert self.writer is not None
        try:
            self.writer.write(record)
        except OSError as exc:
            from objkit.faults import write_error

            raise write_error(exc, "metrics", "checkpoints already written are intact") from None

    def on_log(self, state: FitState, record: dict[str, float]) -> None:
        self._write(record)

    def on_eval(self, state: FitState, results: dict[str, float]) -> None:
        self._write({"step": state.step, **results})

    def on_fit_end(self, state: FitState) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressBar(Callback):
    """A tqdm bar on rank 0: one tick per step; losses, tok/s and evaluation results as its postfix."""

    name = "progress_bar"

    def __init__(self, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        self.bar: Any = None

    def on_fit_start(self, state: FitState) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.total_steps, initial=state.step, disable=not (self.enabled and state.world.is_main),
                        dynamic_ncols=True, desc="train")

    def on_log(self, state: FitState, record: dict[str, float]) -> None:
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in record.items() if k.endswith("/loss") or k == "tok/s"})

    def on_step_end(self, state: FitState, stats: dict[str, float]) -> None:
        self.bar.update(1)

    def on_eval(self, state: FitState, results: dict[str, float]) -> None:
        self.bar.set_postfix(results)

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
