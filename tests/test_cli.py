"""The command line: list-plugins, validate, run --dry-run, user errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from objkit.cli import cli, main

ROOT = Path(__file__).parent.parent


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def test_list_plugins_json(capsys):
    code, out, _ = run_main(capsys, "list-plugins", "--json")
    assert code == 0
    plugins = {p["name"]: p for p in json.loads(out)}
    for name in ("mlm", "tlm"):
        assert plugins[name]["kind"] == "objective"
        assert plugins[name]["distribution"] == "objkit"
        assert plugins[name]["version"]
        assert plugins[name]["module"] == f"objkit_plugins.{name}"
        assert plugins[name]["plugin_api"] == "1.7" and plugins[name]["status"] == "ok"
    for name, kind, module in [("adamw", "optimizer", "adamw"), ("linear", "schedule", "schedules"),
                               ("constant", "schedule", "schedules"), ("cosine", "schedule", "schedules")]:
        assert (plugins[name]["kind"], plugins[name]["distribution"]) == (kind, "objkit")
        assert plugins[name]["module"] == f"objkit_plugins.{module}" and plugins[name]["status"] == "ok"


def test_plugin_option_disables_and_resets(capsys):
    code, out, _ = run_main(capsys, "--plugin", "no:tlm", "list-plugins", "--json")
    assert code == 0
    rows = {p["name"]: p for p in json.loads(out)}
    assert rows["tlm"]["status"] == "disabled" and rows["tlm"]["reason"] == "--plugin no:tlm"
    assert rows["mlm"]["status"] == "ok"
    code, _, err = run_main(capsys, "--plugin", "no:tlm", "validate", str(ROOT / "recipes/quickstart.toml"))
    assert code == 2 and 'objective plugin "tlm" from objkit' in err and "is disabled (--plugin no:tlm)" in err
    code, out, _ = run_main(capsys, "list-plugins", "--json")  # the next invocation starts afresh
    assert {p["name"]: p for p in json.loads(out)}["tlm"]["status"] == "ok"


def test_list_plugins_table_has_status_column(capsys):
    code, out, _ = run_main(capsys, "--plugin", "no:mixup", "list-plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "kind", "distribution", "version", "module", "api", "status"]
    assert any(line.split()[0] == "mlm" and line.split()[-1] == "ok" for line in lines[1:])
    assert 'disabled: objkit plugin "mixup" from objkit' in out


def test_validate_prints_resolved_toml(capsys):
    code, out, _ = run_main(capsys, "validate", str(ROOT / "recipes/quickstart.toml"), "--set", "train.steps=7")
    assert code == 0
    assert "steps = 7" in out and "mask_prob = 0.15" in out


def test_bad_recipe_exits_2_naming_every_problem(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    text = (ROOT / "recipes/quickstart.toml").read_text().replace("steps = 300", 'steps = "many"')
    bad.write_text(text + '\n[objectives.xlmc]\ndata = "parallel"\n')
    code, out, err = run_main(capsys, "validate", str(bad))
    assert code == 2 and out == ""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert any(f"{bad}: train.steps:" in line and "'many'" in line for line in lines)
    assert any(f"{bad}: objectives.xlmc.plugin: unknown objective plugin" in line for line in lines)


def test_missing_checkpoint_is_one_line_error(capsys, tmp_path):
    code, _, err = run_main(
        capsys, "run", str(ROOT / "recipes/quickstart.toml"), "-o", str(tmp_path / "r"),
        "--set", f"model.init={tmp_path / 'no-such-model'}", "--set", f"model.tokenizer={tmp_path / 'no-such-model'}",
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "no-such-model" in err


def test_unreachable_hub_id_fails_fast_in_one_line(capsys, tmp_path, monkeypatch):
    """A hub id that is not cached, with the hub unreachable: one line at once, no retries."""
    from objkit.blocks import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.hub_unreachable_reason.cache_clear()
    code, _, err = run_main(
        capsys, "run", str(ROOT / "recipes/quickstart.toml"), "-o", str(tmp_path / "r"),
        "--set", "model.init=objkit-tests/no-such-model", "--set", "model.tokenizer=objkit-tests/no-such-model",
    )
    hub.hub_unreachable_reason.cache_clear()
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert "objkit-tests/no-such-model" in err and "HF_HUB_OFFLINE" in err


def test_dry_run_quickstart(capsys, tmp_path):
    code, out, _ = run_main(capsys, "run", str(ROOT / "recipes/quickstart.toml"), "--dry-run", "-o", str(tmp_path))
    assert code == 0
    assert "query encoder parameters" in out and "tokens per step" in out and "memory: total" in out


HELP_SCRIPT = r"""
import contextlib, io, json, sys
from objkit.cli import cli, main

HEAVY = ("torch", "transformers", "datasets")
out = {}

def check(path):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main([*path, "--help"])
    text = buf.getvalue()
    out[" ".join(path) or "objkit"] = {
        "heavy": [m for m in HEAVY if m in sys.modules],
        "examples": "Examples:" in text.strip().split("\n\n")[-1],
    }

def walk(group, path):
    import click
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        check([*path, name])
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            walk(command, [*path, name])

check([])
walk(cli, [])
print(json.dumps(out))
"""


def test_every_help_is_fast_to_load_and_ends_with_examples():
    """`objkit --help`, then every command's and subcommand's --help, in one fresh process: none
    imports torch, transformers or datasets (what made --help take seconds), and each ends with
    an Examples epilog."""
    result = subprocess.run([sys.executable, "-c", HELP_SCRIPT], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    helps = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"objkit", "run", "validate", "list-plugins", "eval", "eval transfer", "eval retrieval", "eval tatoeba",
            "eval align", "tokenizer", "tokenizer train", "tokenizer extend", "prepare", "plot", "new-plugin"} <= set(helps)
    assert {path: h["heavy"] for path, h in helps.items() if h["heavy"]} == {}
    assert [path for path, h in helps.items() if not h["examples"]] == []


def test_lazy_subcommands_load_the_command_they_name():
    """Each SUBCOMMANDS line resolves to a click command of that name (a typo fails here, not in a user's shell)."""
    import click

    from objkit.cli import SUBCOMMANDS

    ctx = click.Context(cli)
    for name, (target, short_help) in SUBCOMMANDS.items():
        command = cli.get_command(ctx, name)
        assert isinstance(command, click.Command) and command.name == name, target
        assert short_help and not short_help.endswith("..."), name
    assert set(SUBCOMMANDS) < set(cli.list_commands(ctx))


def test_python_dash_m_objkit():
    result = subprocess.run([sys.executable, "-m", "objkit", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "list-plugins" in result.stdout and "Examples:" in result.stdout


def test_run_nproc_launches_the_ranks_with_the_same_arguments(capsys, monkeypatch, tmp_path):
    """The worker command line and the resume command (the real launch: test_distributed)."""
    from objkit.distributed.processes import RankFailure

    launches: list[tuple[int, list[str], str]] = []

    def record_launch(nproc: int, args: list[str], resume: str) -> RankFailure:
        launches.append((nproc, args, resume))
        return RankFailure(0, 75, "stopped by SIGTERM at step 1 of 3: ...")

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr("objkit.distributed.processes.launch_ranks", record_launch)
    recipe, out = str(ROOT / "recipes/quickstart.toml"), str(tmp_path / "r")
    code, _, err = run_main(capsys, "run", recipe, "-o", out, "--set", "train.steps=3", "--nproc", "2", "--no-progress")
    assert code == 75 and err.strip().splitlines()[-1] == "stopped by SIGTERM at step 1 of 3: ..."
    assert launches == [(2, ["-m", "objkit", "run", recipe, "-o", out, "--set", "train.steps=3", "--no-progress"],
                         f"objkit run {recipe} -o {out} --set train.steps=3 --no-progress --nproc 2")]
    code, out_text, _ = run_main(capsys, "run", recipe, "--dry-run", "--nproc", "4")  # plans 4 ranks, no launch
    assert code == 0 and len(launches) == 1 and "× 4 ranks" in out_text


def test_ctrl_c_twice_during_startup_is_one_line(tmp_path):
    """Ctrl-C (twice) while objkit is still loading torch and building the run: no traceback."""
    import signal
    import subprocess
    import sys
    import time

    recipe = Path(__file__).parent.parent / "recipes" / "quickstart.toml"
    proc = subprocess.Popen([sys.executable, "-m", "objkit", "run", str(recipe), "-o", str(tmp_path / "run")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 120
    while "libtorch" not in maps.read_text():  # the command is running: it imports torch lazily
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode in (130, -signal.SIGINT) and err.strip() == "interrupted", err


def test_validate_several_recipes_checks_each(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nsteps = "many"\n')
    quickstart, mlm = str(ROOT / "recipes/quickstart.toml"), str(ROOT / "recipes/quickstart_mlm.toml")
    code, out, err = run_main(capsys, "validate", quickstart, mlm)
    assert code == 0 and out.startswith(f"# {quickstart}\n") and f"\n# {mlm}\n" in out and "[train]" in out
    code, out, err = run_main(capsys, "validate", quickstart, str(bad), mlm, "--quiet")
    assert code == 2 and out == f"{quickstart}: ok\n{mlm}: ok\n"
    assert f"{bad}: train.steps:" in err and err.strip().endswith("validate: 1 of 3 recipes are invalid (above)")


def test_dry_run_json(capsys):
    code, out, _ = run_main(capsys, "run", str(ROOT / "recipes/quickstart.toml"), "--dry-run", "--json", "--nproc", "2")
    assert code == 0
    data = json.loads(out)
    assert data["recipe"].endswith("quickstart.toml") and "query encoder parameters" in data["plan"]
    assert any(key.startswith("tokens per step") for key in data["plan"]) and isinstance(data["notes"], list)
    code, _, err = run_main(capsys, "run", str(ROOT / "recipes/quickstart.toml"), "--json", "-o", "x")
    assert code == 2 and "--json goes with --dry-run" in err
