"""The ``objkit`` command line (click). Every command's help ends with examples."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

import click
from typing import Any

from objkit.contract.errors import UserError
from objkit.cli.lazygroup import LazyGroup

# The subcommands defined in modules of their own: name -> ("module:attribute", short help for
# `objkit --help`). Adding a command is one line here; its module is imported only when the
# command runs or its own --help is asked (keep torch/transformers/datasets imports inside
# the command's function, so that its --help stays fast: tests/test_cli.py checks every one).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "data": ("objkit.data.fetch.cli:data_group", "Download evaluation sets and parallel text into objkit's layout."),
    "eval": ("objkit.eval.cli:eval_group", "Evaluate encoders: retrieval, cross-lingual transfer, word alignment."),
    "export": ("objkit.train.export:export_command", "Export any checkpoint of a run: encoder, tokenizer, model card."),
    "new-plugin": ("objkit.cli.scaffold:new_plugin_command", "Write a new plugin distribution to start from."),
    "plot": ("objkit.cli.plot:plot_command", "Plot the metrics of one or more runs into an image."),
    "prepare": ("objkit.cli.prepare:prepare_command", "Tokenize a recipe's data once, into a cache runs start from."),
    "recipes": ("objkit.cli.recipes:recipes_group", "List the packaged recipes, or copy one to edit (ls, cp)."),
    "tokenizer": ("objkit.cli.tokenizer:tokenizer_group", "Train a tokenizer, or extend one with new pieces."),
}


def _recipe_options(func, several: bool = False):  # noqa: ANN001, ANN202 - click decorator
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a recipe key; VALUE is parsed as TOML (falls back to a string). Repeatable.",
    )(func)
    if several:
        return click.argument("recipes", nargs=-1, required=True, metavar="RECIPE [RECIPE ...]",
                              type=click.Path(dir_okay=False, path_type=Path))(func)
    return click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))(func)


def _several_recipes_options(func):  # noqa: ANN001, ANN202 - click decorator
    return _recipe_options(func, several=True)


@click.group(
    cls=LazyGroup,
    lazy_subcommands=SUBCOMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Examples:
  objkit list-plugins
  objkit recipes
  objkit validate quickstart
  objkit run quickstart -o runs/quickstart
  objkit recipes cp infoxlm_base my_recipe.toml
  objkit run infoxlm_large --dry-run
  objkit --plugin no:translation_ranking list-plugins
  OBJKIT_DISABLE_PLUGIN_AUTOLOAD=1 objkit --plugin translation_ranking list-plugins
""",
)
@click.version_option(package_name="objkit")
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    metavar="NAME|no:NAME",
    help="Load plugin entry point (or distribution, or module) NAME even when "
    "OBJKIT_DISABLE_PLUGIN_AUTOLOAD=1 is set; no:NAME blocks it. Repeatable; before the command.",
)
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...]) -> None:
    """Compose pretraining objectives for cross-lingual encoders from plugins and recipes."""
    if not plugins:  # nothing to set (the registry, which imports torch, stays unloaded for --help)
        return
    from objkit.contract import registry

    registry.configure(plugins)
    ctx.call_on_close(lambda: registry.configure(()))


@cli.command("list-plugins", epilog="""\b
Examples:
  objkit list-plugins
  objkit list-plugins --json | python -m json.tool
""")
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print a JSON list of {name, kind, distribution, version, module, plugin_api, status[, error|reason]}.",
)
def list_plugins(as_json: bool) -> None:
    """List installed plugins (built-in and third-party) by kind; broken and disabled entry
    points are listed with their error or reason (the command still succeeds)."""
    from objkit.contract.registry import current_selection, load_registry

    registry = load_registry(current_selection())
    rows = [_row(registry, info) for info in registry.infos()] + [s.as_dict() for s in registry.skipped.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("name", "kind", "distribution", "version", "module", "api", "status")
    table = [
        [r["name"], r["kind"] or "-", r["distribution"], r["version"], r["module"], r["plugin_api"] or "-", r["status"]]
        for r in rows
    ]
    widths = [max(len(h), *(len(row[i]) for row in table)) if table else len(h) for i, h in enumerate(header)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for row in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    for skipped in registry.skipped.values():
        click.echo(f"{skipped.status}: {skipped.line()}")
    for name in registry.conflicts():
        click.echo(f"conflict: {registry.conflict_line(name)}")


def _row(registry, info) -> dict:  # noqa: ANN001 - Registry, PluginInfo (imported lazily)
    """A plugin's list-plugins row: ``conflict`` while another distribution provides its name
    and nothing chose, ``disabled`` when ``--plugin DIST:NAME`` chose the other one."""
    row = info.as_dict()
    if info.name in registry.conflicts():
        row.update(status="conflict", error=registry.conflict_line(info.name))
    elif info.name in registry.chosen and registry.chosen[info.name] != info:
        chosen = registry.chosen[info.name]
        row.update(status="disabled", reason=f"--plugin {chosen.distribution}:{info.name} chose {chosen.distribution}'s")
    return row


@cli.command(epilog="""\b
Examples:
  objkit validate recipes/infoxlm_base.toml
  objkit validate recipes/quickstart.toml --set train.steps=50 --set train.lr=1e-3
  objkit validate recipes/quickstart.toml --set 'data.mono={type="text",files=[{path="a.txt",lang="en"}]}'
  objkit validate recipes/*.toml --quiet
""")
@click.option("-q", "--quiet", is_flag=True, help="Print only RECIPE: ok (or its errors), not the resolved TOML.")
@_several_recipes_options
def validate(recipes: tuple[Path, ...], overrides: tuple[str, ...], quiet: bool = False) -> None:
    """Validate each RECIPE and print it fully resolved (extends, overrides, defaults) as TOML.

    With several recipes, each is printed after a `# RECIPE` line; every one is checked, the
    errors of each are printed, and the exit code is 2 if any is invalid.
    """
    from objkit.recipe.loader import load_recipe
    from objkit.train.runner import check_before_training

    failed: list[UserError] = []
    for recipe in recipes:
        try:
            resolved = load_recipe(recipe, list(overrides))
            if not resolved.unset:  # a full-size recipe's unset data keys: shown, checked when filled in
                check_before_training(resolved)  # what run checks before it trains, beyond the recipe
        except UserError as exc:
            if len(recipes) == 1:
                raise
            failed.append(exc)
            for line in str(exc).splitlines():
                click.echo(line, err=True)
            continue
        if quiet:
            click.echo(f"{recipe}: ok")
            continue
        if len(recipes) > 1:
            click.echo(f"# {recipe}")
        click.echo(resolved.to_toml(), nl=False)
    if failed:
        raise UserError(f"validate: {len(failed)} of {len(recipes)} recipes are invalid (above)")


@cli.command(epilog="""\b
Examples:
  objkit run quickstart -o runs/quickstart
  objkit recipes cp infoxlm_base my_recipe.toml
  objkit run recipes/quickstart_infoxlm.toml -o runs/qi --set train.steps=100
  objkit run recipes/quickstart.toml -o runs/quickstart --fresh
  objkit run infoxlm_large --dry-run
  objkit run recipes/infoxlm_large.toml --dry-run --nproc 8 --json
  objkit run recipes/quickstart_infoxlm.toml -o runs/qi2 --nproc 2
  objkit run recipes/quickstart.toml -o runs/q2 --cache-dir cache/quickstart   (objkit prepare first, or built once)
  torchrun --standalone --nproc_per_node 8 -m objkit run recipes/infoxlm_base.toml -o runs/base \\
      --set model.init=/models/xlm-roberta-base --set 'data.mono={...}'
""")
@_recipe_options
@click.option("-o", "--output", type=click.Path(file_okay=False), help="Run directory (resumes if it holds checkpoints).")
@click.option("--dry-run", is_flag=True, help="Build everything on the meta device and print the plan; no training.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as one JSON object.")
@click.option("--no-progress", is_flag=True, help="Disable the progress bars.")
@click.option("--fresh", is_flag=True, help="Start over in OUTPUT: remove a previous run's checkpoints, metrics and export.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Tokenized cache (objkit prepare): sets data.cache_dir.")
@click.option(
    "--nproc", type=click.IntRange(min=1), metavar="N",
    help="Run N processes on this machine (torchrun --standalone --nproc_per_node N, its launcher in this process).",
)
def run(
    recipe: Path, overrides: tuple[str, ...], output: str | None, dry_run: bool, no_progress: bool,
    fresh: bool, nproc: int | None, cache_dir: str | None = None, as_json: bool = False,
) -> None:
    """Train the model RECIPE describes into OUTPUT (metrics, checkpoints, export/).

    Re-running the same command resumes from OUTPUT's newest intact checkpoint; a different
    recipe is refused unless --fresh. SIGTERM or Ctrl-C finish the current step, write a
    checkpoint, print the command that resumes and exit 75 (EX_TEMPFAIL: stopped, resumable);
    0 means the run finished and exported.
    """
    from objkit.recipe.loader import load_recipe
    from objkit.contract.registry import default_registry

    registry = default_registry()
    if cache_dir is not None:
        overrides = (*overrides, f"data.cache_dir={json.dumps(cache_dir)}")
    resolved = load_recipe(recipe, list(overrides), registry)
    if dry_run:
        from objkit.train.plan import dry_run_plan

        rows = dry_run_plan(resolved, registry, world_size=nproc)  # --nproc: plan for that many ranks
        if as_json:
            plan = {key: value for key, value in rows if key != "note"}
            notes = [value for key, value in rows if key == "note"]
            click.echo(json.dumps({"recipe": str(recipe), "plan": plan, "notes": notes}))
            return
        width = max(len(k) for k, _ in rows)
        click.echo(f"plan for {recipe} (dry run: nothing trained)")
        for key, value in rows:
            click.echo(f"  {key.ljust(width)}  {value}")
        return
    if as_json:
        raise UserError("run: --json goes with --dry-run (a run writes RUN/metrics.jsonl)")
    resolved.check_complete()  # keys left "???" (the full-size recipes' data files): named in one line
    if output is None:
        raise UserError("run: -o/--output DIR is required (where metrics, checkpoints and the export go)")
    if not output.strip():
        raise UserError("-o: empty path (expected a run directory; use -o . for the current directory)")
    if nproc is not None and "LOCAL_RANK" not in os.environ:  # not already a torchrun worker
        _check_unlocked(Path(output))  # the launcher's early answer; rank 0 then takes the lock
        if fresh:  # once, here, before any worker starts (the workers then find nothing to remove)
            _clear_once(resolved, Path(output))
        from objkit.distributed.processes import launch_ranks

        args = ["-m", "objkit", *torchrun_plugin_args(), "run", str(recipe), "-o", str(output)]
        args += [arg for override in overrides for arg in ("--set", override)]
        args += ["--no-progress"] if no_progress else []
        click.echo(f"torchrun (in this process): {nproc} ranks of {shlex.join([sys.executable, '-u', *args])}", err=True)
        resume = shlex.join(["objkit", *args[2:], "--nproc", str(nproc)])  # without --fresh
        failure = launch_ranks(nproc, args, resume)
        if failure is not None:
            from objkit.train.runner import intact

            raise failure.error(intact(Path(output)), resume)
        return
    from objkit.distributed.processes import RESUME_ENV, launched_by_torchrun
    from objkit.train.runner import run_recipe


    if no_progress:
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()  # "Loading weights" of model.init
    args = [*torchrun_plugin_args(), "run", str(recipe), "-o", str(output)]
    args += [arg for override in overrides for arg in ("--set", override)] + (["--no-progress"] if no_progress else [])
    resume = (os.environ.get(RESUME_ENV) or "the same torchrun command") if launched_by_torchrun() else \
        shlex.join(["objkit", *args])  # without --fresh
    run_recipe(resolved, Path(output), registry, progress=not no_progress, fresh=fresh, resume_command=resume)


def torchrun_plugin_args() -> list[str]:
    """This process's ``--plugin`` options, for the workers' command line: they load the plugin set
    that validated the recipe (``OBJKIT_DISABLE_PLUGIN_AUTOLOAD`` reaches them through the environment)."""
    from objkit.contract.registry import cli_specs

    return [arg for spec in cli_specs() for arg in ("--plugin", spec)]


def _clear_once(resolved: Any, output: Path) -> None:
    """``--fresh`` with ``--nproc``: remove the previous run's files holding the run lock, before torchrun."""
    from objkit.data.runlock import RunLock
    from objkit.train.runner import check_run_dir

    if not output.exists():
        return
    lock = RunLock(output)
    lock.acquire()
    try:
        check_run_dir(resolved, output, fresh=True)
    finally:
        lock.release()


def _check_unlocked(output: Path) -> None:
    """Refuse (exit 2) an existing run directory that another run holds, before launching the ranks."""
    from objkit.data.runlock import RunLock

    if (output / ".lock").is_file():
        lock = RunLock(output)
        try:
            lock.acquire()
        except OSError:
            return  # rank 0 reports what cannot be written
        lock.release()


def _stop_now(*_: object) -> None:
    """Exit 130 at once, saying so in one line (no cleanup left to interrupt, no traceback)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os.write(2, b"interrupted\n")
    os._exit(130)


def _interrupt(*_: object) -> None:
    """Ctrl-C outside training (which :class:`objkit.distributed.faults.StopRequest` handles): the first
    unwinds (files being written are cleaned up), any further one exits at once."""
    signal.signal(signal.SIGINT, _stop_now)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    previous = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    handle = previous is not None and previous is not signal.SIG_IGN  # ignored (a background job): stays so
    if handle:
        signal.signal(signal.SIGINT, _interrupt)
    try:
        _main(argv)
    finally:
        if handle and signal.getsignal(signal.SIGINT) is _interrupt:  # not interrupted: as it was
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None) -> None:
    from objkit.distributed.processes import die_with_launcher, launched_by_torchrun, quiet_rank, record_failure

    rank = launched_by_torchrun()
    if rank:  # a rank: never outlive torchrun (it starts ranks in sessions of their own)
        die_with_launcher()

    def fail(code: int, lines: list[str], internal: BaseException | None = None) -> None:
        """Exit ``code`` after one line (a rank: recorded for the launcher, which prints it under --nproc)."""
        if rank:
            record_failure(code, "\n".join(lines), internal)
        if internal is not None and not quiet_rank():
            raise internal
        if not quiet_rank():
            for line in lines:
                click.echo(line, err=True)
        sys.exit(code)

    try:
        cli.main(args=argv, prog_name="objkit", standalone_mode=False)
    except UserError as exc:
        fail(exc.exit_code, str(exc).splitlines())
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # Ctrl-C while a (lazily loaded) command starts
            signal.signal(signal.SIGINT, _stop_now)
            fail(130, ["interrupted"])
        fail(130, ["aborted"])
    except click.ClickException as exc:
        if rank:
            record_failure(exc.exit_code, exc.format_message())
        exc.show()
        sys.exit(2 if isinstance(exc, click.UsageError) else exc.exit_code)
    except OSError as exc:  # a fault no command turned into its own message: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        fail(1, [f"objkit: {where}{exc.strerror or exc}"])
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, _stop_now)  # a further Ctrl-C while exiting: no traceback either
        fail(130, ["interrupted"])
    except Exception as exc:  # a bug, or a collective failing because another rank died
        if not rank:
            raise
        fail(1, [], exc)  # the launcher (objkit run --nproc) shows it if no other rank failed first
