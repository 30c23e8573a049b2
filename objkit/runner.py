"""``objkit run``: check, resolve, record, train, evaluate, export.

A run directory belongs to one recipe: re-running ``objkit run RECIPE -o DIR`` with the same
recipe resumes from DIR's newest intact checkpoint, a different recipe is refused (unless
``--fresh``, which removes the previous run's files and starts over). A run stopped by a signal
exits :data:`objkit.faults.EXIT_STOPPED` (75) and prints the command that resumes it. Keys that cannot change
the trained weights (:data:`NEUTRAL_KEYS`) may differ.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from pathlib import Path
from typing import Any

import click

from objkit.checkpoint import atomic_write_text, list_checkpoints
from objkit.device import thread_counts, training_device
from objkit.distributed import env_world, process_group
from objkit.errors import UserError
from objkit.faults import RunStopped, write_error
from objkit.eval.periodic import EvalCallback, PeriodicEval
from objkit.recipe import ResolvedRecipe
from objkit.registry import Registry
from objkit.runlock import RunLock

# Recipe keys that may differ between a run and its resumption: they do not change the weights.
NEUTRAL_KEYS = {
    ("name",), ("description",), ("eval",), ("callbacks",),
    ("train", "log_every"), ("train", "checkpoint_every"), ("train", "keep_checkpoints"),
    ("train", "report_to"), ("train", "max_bad_steps"), ("train", "collective_timeout"), ("data", "cache_dir"),
    ("train", "checkpoint_format"), ("train", "checkpoint_async"),
    # memory and speed: the same losses up to float rounding (tested), so a run may resume with them changed
    ("train", "activation_checkpointing"), ("train", "lm_head_chunk_rows"), ("train", "compile"),
}
RUN_FILES = ("checkpoints", "export", "export.tmp", "export.old", "eval-transfer.tmp", "metrics.jsonl", "tensorboard",
             "recipe.toml", "versions.json")


def recipe_differences(old: Any, new: Any, path: tuple[str, ...] = ()) -> list[str]:
    """``"train.lr: 0.001 in the run directory, 0.002 now"`` for every key that differs."""
    if path in NEUTRAL_KEYS:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = (*path, str(key))
            if sub in NEUTRAL_KEYS:
                continue
            if key not in old:
                out.append(f"{'.'.join(sub)}: not set in the run directory, {_short(new[key])} now")
            elif key not in new:
                out.append(f"{'.'.join(sub)}: {_short(old[key])} in the run directory, not set now")
            else:
                out.extend(recipe_differences(old[key], new[key], sub))
        return out
    if old != new:
        return [f"{'.'.join(path)}: {_short(old)} in the run directory, {_short(new)} now"]
    return []


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_run_dir(resolved: ResolvedRecipe, run_dir: Path, fresh: bool = False) -> None:
    """Refuse a run directory that holds a run of another recipe; with ``fresh``, clear it.
    Call it holding the directory's :class:`RunLock` (``run_recipe`` does)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"-o {run_dir}: exists and is not a directory")
    if not run_dir.exists():
        return
    if fresh:
        removed = [name for name in RUN_FILES if (run_dir / name).exists()]
        for name in removed:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        if removed:
            click.echo(f"--fresh: removed the previous run's {', '.join(removed)} from {run_dir}", err=True)
        return
    recorded = run_dir / "recipe.toml"
    if not recorded.exists():
        checkpoints = list_checkpoints(run_dir)
        recorded = checkpoints[-1] / "recipe.toml" if checkpoints else recorded
    if not recorded.exists():
        return
    try:
        old = tomllib.loads(recorded.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{recorded}: cannot read the run's recipe ({exc}); use --fresh to start over") from None
    new = tomllib.loads(resolved.to_toml())
    differences = recipe_differences(old, new)
    if differences:
        more = f" and {len(differences) - 3} more" if len(differences) > 3 else ""
        raise UserError(
            f"{run_dir} holds a run of a different recipe ({'; '.join(differences[:3])}{more}): "
            "re-run with --fresh to start over there, or choose another -o"
        )


def check_data(resolved: ResolvedRecipe) -> None:
    """Every data file of the recipe exists, is not empty, is UTF-8, parallel files align,
    bitext parses, hf sources have their columns. A source whose every objective has a cache
    entry (``data.cache_dir``) built from these very files (sizes, mtimes) was checked when the
    entry was built, and is not scanned again."""
    from objkit.data.cache import files_unchanged
    from objkit.data.sources import check_source_files, source_files
    from objkit.prepare import cache_dir_of

    resolved.check_complete()  # keys left "???" first: named, instead of a missing file "???"
    cache_dir = cache_dir_of(resolved)
    recipe = resolved.recipe
    for name, source in recipe.data.items():
        users = [n for n, e in recipe.enabled_objectives().items() if e.data == name]
        if cache_dir is not None and not source.streaming and users:
            try:
                files = source_files(name, source)
            except UserError:
                files = None  # a missing file: the check below names it
            if files is not None and files_unchanged(cache_dir, users, source.model_dump(mode="json"), files):
                continue
        check_source_files(name, source)


def check_before_training(resolved: ResolvedRecipe) -> None:
    """What ``objkit run`` checks before it trains, beyond the recipe itself (``objkit validate``
    checks it too): the batch splits into micro-batches on this many ranks, and the data files."""
    from objkit.build import accumulation_steps

    accumulation_steps(resolved.recipe.train, env_world())
    check_data(resolved)


def run_recipe(
    resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool = True, fresh: bool = False,
    resume_command: str | None = None,
) -> Path | None:
    """Train ``resolved`` into ``run_dir`` (resuming if it holds checkpoints of the same recipe).
    Returns the export directory, or ``None`` when a signal stopped the run early (after its
    checkpoint; with ``resume_command``, the command that resumes it, :class:`RunStopped` is
    raised instead, saying so: exit :data:`objkit.faults.EXIT_STOPPED`)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"-o {run_dir}: exists and is not a directory")
    if env_world().is_main:  # once: the other ranks wait for rank 0 in the rendezvous
        check_before_training(resolved)
    evaluate = PeriodicEval(resolved.recipe.eval, resolved.recipe.model.max_length) if resolved.recipe.eval else None
    try:
        if env_world().is_main:  # the other ranks find it once they join rank 0 in the process group
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {run_dir}: cannot create the run directory: {exc.strerror or exc}") from None
    # rank 0 (or the single process) holds the directory for the whole run, and only it
    # compares or (--fresh) clears what is there: the other ranks wait for it in the rendezvous
    lock = RunLock(run_dir) if env_world().is_main else None
    try:
        if lock is not None:
            try:
                lock.acquire()
            except OSError as exc:  # read-only, not ours: as for a directory that cannot be created
                raise UserError(f"-o {run_dir}: cannot write in the run directory: {exc.strerror or exc}") from None
            check_run_dir(resolved, run_dir, fresh)
            from objkit.export import check_export_target

            check_export_target(run_dir)  # export/ holding files objkit did not write: refused now, not after training
        return _train(resolved, run_dir, registry, progress, evaluate, resume_command)
    except OSError as exc:  # an unwritable directory, a full disk: one line, what is intact
        raise write_error(exc, "", intact(run_dir)) from None
    finally:
        if lock is not None:
            lock.release()


def intact(run_dir: Path) -> str:
    checkpoints = list_checkpoints(run_dir)
    return f"the last complete checkpoint, {checkpoints[-1]}, is intact" if checkpoints else "no checkpoint written yet"


def _train(resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool,
           evaluate: PeriodicEval | None, resume_command: str | None = None) -> Path | None:
    from objkit.trainer import Trainer

    started = time.perf_counter()
    train = resolved.recipe.train
    with process_group(training_device(train.device, env_world().rank), train.collective_timeout) as world:
        trainer = Trainer(resolved, run_dir, registry, progress=progress, world=world)
        if trainer.world.is_main:
            atomic_write_text(run_dir / "recipe.toml", resolved.to_toml())
            versions = {"objkit": _version(), "plugins": registry.versions(), "threads": thread_counts()}
            atomic_write_text(run_dir / "versions.json", json.dumps(versions, indent=1) + "\n")
            click.echo(f"resolved recipe and plugin versions written to {run_dir}", err=True)
        trainer.fit([EvalCallback(evaluate, trainer)] if evaluate is not None else [])
        if trainer.stopped_by is not None:
            message = ""
            if trainer.world.is_main:
                checkpoints = list_checkpoints(run_dir)
                where = checkpoints[-1] if checkpoints else run_dir
                resume = f"resume with: {resume_command}" if resume_command else "run the same command to resume"
                message = (f"stopped by {trainer.stopped_by} at step {trainer.step} of {resolved.recipe.train.steps}: "
                           f"checkpoint {where} written; {resume}")
            if resume_command is None:
                if message:
                    click.echo(message, err=True)
                return None
            stopped = RunStopped(message)  # raised once out of the process group (its barrier: a clean exit)
        else:
            export = trainer.export()
            if trainer.world.is_main:
                ranks = f" on {trainer.world.world_size} ranks" if trainer.world.world_size > 1 else ""
                click.echo(f"done: {trainer.step} steps{ranks} in {time.perf_counter() - started:.0f}s; "
                           f"export at {export}", err=True)
            return export
    raise stopped


def _version() -> str:
    from objkit import __version__

    return __version__
