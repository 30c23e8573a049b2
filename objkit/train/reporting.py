"""Where metrics go: ``RUN/metrics.jsonl`` (always, one JSON object per logged step: the source
of truth) and, with ``train.report_to``, the same numbers to TensorBoard (``RUN/tensorboard``),
Weights & Biases and MLflow; and the progress bar. Both are trainer callbacks
(:mod:`objkit.contract.events`); only rank 0 reports."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from objkit.contract.errors import UserError
from objkit.contract.events import Callback, FitState

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # report_to name -> objkit extra


def _missing(name: str, module: str) -> UserError:
    return UserError(f"train.report_to: {name!r} needs the {module} package: pip install 'objkit[{EXTRAS[name]}]'")


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", "tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _WandB:
    """A wandb run named after the run directory; ``WANDB_PROJECT``, ``WANDB_MODE`` (e.g. offline),
    ``WANDB_DIR`` and the other WANDB_* settings apply; its files go to RUN/wandb unless WANDB_DIR."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        directory = None if os.environ.get("WANDB_DIR") else str(run_dir)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "objkit"), name=run_dir.resolve().name,
                              dir=directory, config=config, reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    """An MLflow run named after the run directory, in experiment ``MLFLOW_EXPERIMENT_NAME`` (default
    objkit), at mlflow's tracking URI (``MLFLOW_TRACKING_URI``: a server, a database, or a
    ``file:`` store with ``MLFLOW_ALLOW_FILE_STORE=true``). Uses the client API, so no
    process-wide active run is left behind."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "objkit")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.resolve().name).info.run_id
        if config:
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in config.items()])

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow}
HINTS = {"wandb": "WANDB_MODE=offline runs without an account", "tensorboard": "",
         "mlflow": "set MLFLOW_TRACKING_URI to a server, a database, or file:DIR with MLFLOW_ALLOW_FILE_STORE=true"}


def _start(name: str, run_dir: Path, config: dict[str, Any] | None) -> Any:
    """The ``name`` backend; a library that cannot start is one line naming the key and the library."""
    try:
        return _TensorBoard(run_dir) if name == "tensorboard" else BACKENDS[name](run_dir, config)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the library's own error, as one line
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        hint = f" ({HINTS[name]})" if HINTS[name] else ""
        raise UserError(f"train.report_to: {name!r} could not start: {first}{hint}") from None


class MetricsWriter:
    """``metrics.jsonl`` and the ``report_to`` backends, on the process that has ``enabled`` (rank 0).
    ``config``: flat key -> value pairs of the run (the resolved recipe) for wandb's config and
    MLflow's params."""

    def __init__(self, run_dir: Path, report_to: list[str], enabled: bool = True,
                 config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.jsonl = None
        self.backends: list[Any] = []
        if not enabled:
            return
        unknown = [name for name in report_to if name != "jsonl" and name not in BACKENDS]
        if unknown:
            raise UserError(f"train.report_to: unknown {unknown[0]!r}; expected some of "
                            f"{', '.join(repr(n) for n in ['jsonl', *BACKENDS])}")
        self.jsonl = (run_dir / "metrics.jsonl").open("a", encoding="utf-8")
        try:
            for name in dict.fromkeys(report_to):  # once each, in order
                if name in BACKENDS:
                    self.backends.append(_start(name, run_dir, config))
        except BaseException:
            self.close()
            raise

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self.jsonl is not None
        self.jsonl.write(json.dumps(strict_json(record), allow_nan=False) + "\n")
        self.jsonl.flush()
        if self.backends:
            step = int(record["step"])
            scalars = {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                       and not isinstance(v, bool) and math.isfinite(v)}
            for backend in self.backends:
                backend.log(step, scalars)

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
            self.jsonl = None
        for backend in self.backends:
            backend.close()
        self.backends = []


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
        from objkit.train.checkpoint import atomic_write_text

        atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's resolved recipe (``RUN/recipe.toml``) as flat ``section.key`` -> value pairs."""
    import tomllib

    try:
        recipe = tomllib.loads((run_dir / "recipe.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", recipe)
    return flat


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
        config = run_config(state.run_dir) if state.world.is_main and set(self.report_to) - {"jsonl"} else None
        self.writer = MetricsWriter(state.run_dir, self.report_to, enabled=state.world.is_main, config=config)

    def _write(self, record: dict[str, Any]) -> None:
        assert self.writer is not None
        try:
            self.writer.write(record)
        except OSError as exc:
            from objkit.distributed.faults import write_error

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
