"""Kill -9 a run, re-run the same command, compare with an uninterrupted run to the bit.

Three ``objkit run`` processes of one recipe (default: ``quickstart_infoxlm`` with
``train.steps=60, train.checkpoint_every=10``), the same command line each time except ``-o``:

1. ``straight``: uninterrupted.
2. ``killed``: SIGKILL'ed as soon as its checkpoint ``--kill-after`` (default 20, the second)
   is in place -- the script polls for the directory, so the process is somewhere in the
   following steps -- then the same command is run again and resumes from that checkpoint.
3. ``mid-write`` (unless ``--no-mid-write``): parked by the ``OBJKIT_TEST_PAUSE=save-mid@N`` hook
   halfway through writing checkpoint ``--kill-after + checkpoint_every`` (``model.safetensors``
   written, the rest not), SIGKILL'ed there, then re-run: the half-written ``.tmp`` directory
   must be ignored and the run must resume from the checkpoint before it.

Each re-run's ``export/model.safetensors`` is compared with the straight run's, tensor by
tensor: max |Δw| over all tensors and the number of tensors that differ in any bit. Losses in
``metrics.jsonl`` are compared too. Results go to ``OUT/summary.json`` and stdout::

    python benchmarks/kill_resume.py -o bench-out/kill_resume
    python benchmarks/kill_resume.py -o bench-out/kr --recipe recipes/quickstart.toml --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file



def objkit_cmd(recipe: str, out: Path, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "objkit", "run", recipe, "-o", str(out), "--no-progress"]
    for override in overrides:
        cmd += ["--set", override]
    return cmd


def run_to_end(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, check=False)
    text = log.read_text()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return time.perf_counter() - started, text


def compare(a: Path, b: Path) -> dict[str, object]:
    wa, wb = load_file(str(a / "export" / "model.safetensors")), load_file(str(b / "export" / "model.safetensors"))
    if wa.keys() != wb.keys():
        return {"same_keys": False}
    max_abs, differing, elements = 0.0, [], 0
    for key in sorted(wa):
        x, y = wa[key], wb[key]
        elements += x.numel()
        if not torch.equal(x, y):
            differing.append(key)
        if x.is_floating_point():
            max_abs = max(max_abs, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
    ma = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    mb = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    losses = lambda m: [{k: v for k, v in r.items() if k.endswith("loss")} for r in m]  # noqa: E731
    return {"same_keys": True, "tensors": len(wa), "elements": elements, "max_abs_diff": max_abs,
            "tensors_differing": differing, "bit_identical": not differing,
            "metrics_steps_equal": [r["step"] for r in ma] == [r["step"] for r in mb],
            "losses_equal": losses(ma) == losses(mb)}


def checkpoint_names(run: Path) -> list[str]:
    root = run / "checkpoints"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def rerun_and_compare(recipe: str, overrides: list[str], run: Path, straight: Path, state: dict[str, object],
                      log: Path) -> dict[str, object]:
    """Re-run the same command in the killed ``run``; add its resume line, time and the comparison
    of its export with the uninterrupted run's to ``state``."""
    seconds, text = run_to_end(objkit_cmd(recipe, run, overrides), log)
    state["resume_line"] = next((line for line in text.splitlines() if line.startswith("resumed from")), None)
    state["rerun_seconds"] = round(seconds, 1)
    state["comparison"] = compare(straight, run)
    print(f"re-run: {state['resume_line']}; {json.dumps(state['comparison'])}", flush=True)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--out", type=Path, default=Path("bench-out/kill_resume"))
    parser.add_argument("--recipe", default="recipes/quickstart_infoxlm.toml")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="train.checkpoint_every")
    parser.add_argument("--kill-after", type=int, default=20, help="kill once this step's checkpoint exists")
    parser.add_argument("--no-mid-write", action="store_true", help="skip the kill during a checkpoint write")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [f"train.steps={args.steps}", f"train.checkpoint_every={args.every}", *args.overrides]
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    summary: dict[str, object] = {"recipe": args.recipe, "overrides": overrides,
                                  "command": " ".join(objkit_cmd(args.recipe, Path("DIR"), overrides)[1:])}

    straight = out / "straight"
    seconds, _ = run_to_end(objkit_cmd(args.recipe, straight, overrides), out / "logs" / "straight.log")
    summary["straight_seconds"] = round(seconds, 1)
    print(f"straight run: {seconds:.0f}s, checkpoints {checkpoint_names(straight)}", flush=True)

    # -- kill -9 after checkpoint --kill-after
    killed = out / "killed"
    target = killed / "checkpoints" / f"step_{args.kill_after:07d}"
    log = (out / "logs" / "killed-1.log").open("w")
    proc = subprocess.Popen(objkit_cmd(args.recipe, killed, overrides), stdout=log, stderr=subprocess.STDOUT)
    while not target.is_dir():
        if proc.poll() is not None:
            sys.exit(f"the run ended (exit {proc.returncode}) before {target} appeared; see {log.name}")
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    code = proc.wait()
    log.close()
    state = {"exit_code": code, "checkpoints_at_kill": checkpoint_names(killed),
             "export_exists": (killed / "export").exists()}
    print(f"killed with SIGKILL (exit {code}) once {target.name} existed; left: {state['checkpoints_at_kill']}",
          flush=True)
    summary["kill_after_checkpoint"] = rerun_and_compare(args.recipe, overrides, killed, straight, state,
                                                         out / "logs" / "killed-2.log")

    # -- kill -9 in the middle of writing a checkpoint
    if not args.no_mid_write:
        mid = out / "mid-write"
        step = args.kill_after + args.every
        marker = out / "paused"
        env = dict(os.environ, OBJKIT_TEST_PAUSE=f"save-mid@{step}", OBJKIT_TEST_PAUSE_MARKER=str(marker))
        log = (out / "logs" / "mid-write-1.log").open("w")
        proc = subprocess.Popen(objkit_cmd(args.recipe, mid, overrides), stdout=log, stderr=subprocess.STDOUT,
                                env=env)
        while not marker.exists():
            if proc.poll() is not None:
                sys.exit(f"the run ended (exit {proc.returncode}) before pausing; see {log.name}")
            time.sleep(0.01)
        tmp = mid / "checkpoints" / f"step_{step:07d}.tmp"
        written = sorted(p.name for p in tmp.iterdir())
        os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        log.close()
        state = {"exit_code": code, "checkpoints_at_kill": checkpoint_names(mid), "partial_files": written}
        print(f"killed with SIGKILL (exit {code}) while writing {tmp.name} (holding {written}); "
              f"left: {state['checkpoints_at_kill']}", flush=True)
        summary["kill_during_checkpoint_write"] = rerun_and_compare(args.recipe, overrides, mid, straight, state,
                                                                    out / "logs" / "mid-write-2.log")

    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    ok = all(s["comparison"].get("bit_identical") for k, s in summary.items()  # type: ignore[union-attr]
             if k.startswith("kill"))
    print(f"{'PASS' if ok else 'FAIL'}: summary in {out / 'summary.json'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
