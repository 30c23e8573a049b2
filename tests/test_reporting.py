"""train.report_to: TensorBoard, Weights & Biases and MLflow get the numbers metrics.jsonl gets
(which is always written), through the libraries' own offline modes; unknown names and missing
libraries are one line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from objkit.cli import main
from objkit.contract.errors import UserError
from objkit.train.reporting import MetricsWriter, read_metrics

ROOT = Path(__file__).parent.parent
RECORDS = [{"step": 1, "mlm/loss": 2.5, "lr": 1e-4, "skipped_steps": 0},
           {"step": 2, "mlm/loss": 2.25, "lr": 2e-4, "skipped_steps": 0, "note": "text is not a scalar"}]


def _write(run_dir: Path, report_to: list[str], config: dict | None = None) -> None:
    writer = MetricsWriter(run_dir, report_to, config=config)
    try:
        for record in RECORDS:
            writer.write(record)
    finally:
        writer.close()


def test_tensorboard_gets_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path, ["jsonl", "tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("mlm/loss")] == [(1, 2.5), (2, 2.25)]
    assert read_metrics(tmp_path / "metrics.jsonl")[1]["note"] == "text is not a scalar"


def test_mlflow_gets_the_metrics_in_a_file_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3's file store is opt-in
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "objkit-test")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _write(run_dir, ["mlflow"], config={"train.lr": 1e-4, "model.encoder": "xlmr"})
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("objkit-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params == {"train.lr": "0.0001", "model.encoder": "xlmr"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "mlm/loss")] == [(1, 2.5), (2, 2.25)]
    assert "note" not in run.data.metrics and len(read_metrics(run_dir / "metrics.jsonl")) == 2  # jsonl: always


def test_mlflow_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra (mlflow-skinny) is not installed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "objkit-nosuch://store")
    with pytest.raises(UserError) as exc:
        MetricsWriter(tmp_path, ["jsonl", "mlflow"])
    assert str(exc.value).startswith("train.report_to: 'mlflow' could not start: ") and "\n" not in str(exc.value)
    assert "MLFLOW_TRACKING_URI" in str(exc.value)


WANDB_SCRIPT = """
import sys
from pathlib import Path
from objkit.train.reporting import MetricsWriter
writer = MetricsWriter(Path(sys.argv[1]), ["jsonl", "wandb"], config={"train.lr": 0.0001})
writer.write({"step": 1, "mlm/loss": 2.5})
writer.write({"step": 2, "mlm/loss": 2.25})
writer.close()
"""


def test_wandb_offline_run(tmp_path):
    """In a process of its own: wandb starts a service process that lives as long as its parent."""
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
           "WANDB_PROJECT": "objkit-test"}
    (tmp_path / "wb").mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = subprocess.run([sys.executable, "-c", WANDB_SCRIPT, str(run_dir)], env=env, capture_output=True,
                            text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    (offline,) = (tmp_path / "wb" / "wandb").glob("offline-run-*")
    (log,) = offline.glob("run-*.wandb")  # what `wandb sync` uploads: protobuf records (wandb has no reader in Python)
    data = log.read_bytes()
    assert b"mlm/loss" in data and b"2.25" in data and b"2.5" in data and b"train.lr" in data and b"objkit-test" in data
    assert len(read_metrics(run_dir / "metrics.jsonl")) == 2


def test_only_the_enabled_rank_reports(tmp_path):
    writer = MetricsWriter(tmp_path, ["jsonl", "tensorboard", "wandb", "mlflow"], enabled=False)
    writer.write(RECORDS[0])
    writer.close()
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_name_is_one_line_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(ROOT / "recipes/quickstart.toml"), "--set", 'train.report_to=["jsonl", "comet"]'])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "train.report_to" in err and "comet" in err
    with pytest.raises(UserError, match=r"train.report_to: unknown 'comet'"):
        MetricsWriter(Path("."), ["comet"])


@pytest.mark.parametrize(("name", "module"), [("wandb", "wandb"), ("mlflow", "mlflow"),
                                              ("tensorboard", "torch.utils.tensorboard")])
def test_a_missing_library_is_one_line_naming_the_extra(tmp_path, name, module):
    """The library made unimportable in a child process (as when its extra is not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from pathlib import Path\nfrom objkit.contract.errors import UserError\nfrom objkit.train.reporting import MetricsWriter\n"
            f"try:\n    MetricsWriter(Path(sys.argv[1]), ['jsonl', {name!r}])\n"
            "except UserError as exc:\n    print(exc)\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == (f"train.report_to: {name!r} needs the {name} package: "
                                     f"pip install 'objkit[{name}]'")
    assert not (tmp_path / "metrics.jsonl").exists() or (tmp_path / "metrics.jsonl").read_text() == ""
