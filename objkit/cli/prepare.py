"""``objkit prepare``: the command line of :func:`objkit.train.prepare.prepare_cache` (kept apart so
that ``objkit prepare --help`` imports neither datasets nor torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from objkit.contract.errors import UserError


@click.command("prepare", epilog="""\b
Examples:
  objkit prepare recipes/quickstart.toml -o cache/quickstart
  objkit run recipes/quickstart.toml -o runs/q --cache-dir cache/quickstart
  objkit prepare recipes/quickstart.toml -o cache/quickstart --json
  objkit prepare recipes/xlm_mlm_tlm.toml -o /shared/cache/xlm --set 'data.mono={type="hf",path="cc100_sw",text_column="text",lang="sw"}'
""")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Cache directory (data.cache_dir of the runs that use it).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key; VALUE is parsed as TOML (falls back to a string). Repeatable.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: {cache_dir, entries: [{name, rows, tokens, how, seconds, path}]}.")
@click.option("--no-progress", is_flag=True, help="Disable the progress bars (tokenizer training, tokenization).")
def prepare_command(recipe: Path, output: str, overrides: tuple[str, ...], as_json: bool = False,
                    no_progress: bool = False) -> None:
    """Tokenize (and pack, where the objective packs) every map-style source of RECIPE once,
    into OUTPUT: Arrow files keyed by the files, tokenizer, max length and objective keys.
    Runs with data.cache_dir = OUTPUT (or --cache-dir OUTPUT) start from it; an entry that
    does not match its recipe is rebuilt here and refused by a run. Streamed sources are
    not cached. Multi-node runs need OUTPUT on a filesystem every node sees.
    """
    from objkit.data import cache as data_cache
    from objkit.train.prepare import prepare_cache
    from objkit.recipe.loader import load_recipe
    from objkit.contract.registry import default_registry
    from objkit.train.runner import check_data

    if not output.strip():
        raise UserError("-o: empty path (expected a cache directory)")
    registry = default_registry()
    resolved = load_recipe(recipe, [*overrides, f"data.cache_dir={json_string(output)}"], registry)
    check_data(resolved)
    try:
        Path(output).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"-o {output}: cannot create the cache directory: {exc.strerror or exc}") from None
    # measure tokenization, not datasets' own cache of an earlier run's map() (this cache replaces it)
    import datasets

    datasets.disable_caching()
    if no_progress:
        datasets.disable_progress_bars()
    entries = []
    for p in prepare_cache(resolved, registry, Path(output)):
        entries.append({"name": p.name, "rows": len(p.rows), "tokens": p.tokens, "how": p.how,
                        "seconds": round(p.seconds, 3), "path": str(Path(output) / p.name)})
        if as_json:
            continue
        rate = f", {p.tokens / p.seconds:,.0f} tokens/s on {data_cache.cores()} core(s)" if p.how == "built" and \
            p.seconds > 0 else ""
        click.echo(f"{p.name}: {len(p.rows):,} rows, {p.tokens:,} tokens {p.how} in {p.seconds:.1f}s{rate} "
                   f"-> {Path(output) / p.name}")
    if as_json:
        click.echo(json.dumps({"cache_dir": str(output), "entries": entries}))


def json_string(value: str) -> str:
    """``value`` as a TOML string for ``--set`` (quoted, escaped)."""
    return json.dumps(value)
