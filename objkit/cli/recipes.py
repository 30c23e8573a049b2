"""``objkit recipes``: the recipes objkit ships (torchtune's ``tune ls`` / ``tune cp``).

``objkit recipes`` (or ``recipes ls``) lists them, one line each: the name, its size (model
preset and depth, and the checkpoint it continues from), the published result it reproduces
(the recipe's ``reference``) and what it trains (``description``). ``objkit recipes cp NAME
FILE`` writes a copy to edit; ``objkit run NAME`` / ``objkit validate NAME`` use one as it is.
Reads TOML only (no torch): listing is instant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from objkit.contract.errors import UserError

# depth of each [model] preset (objkit.blocks.encoder.PRESETS, which imports torch; tests/test_recipes_cmd.py
# keeps the two equal)
PRESET_LAYERS = {"tiny": 4, "small": 6, "base": 12, "large": 24}


def recipe_summary(name: str) -> dict[str, str]:
    """``{name, size, reference, trains}`` of the packaged recipe ``name`` (``extends`` followed)."""
    from objkit.recipe.files import packaged_path, read_toml

    path = packaged_path(name)
    if path is None:
        raise UserError(f"{name}: no packaged recipe of that name")
    raw = read_toml(path)
    model: dict[str, Any] = raw.get("model") if isinstance(raw.get("model"), dict) else {}
    preset = model.get("preset") or "base"
    size = f"{preset} ({PRESET_LAYERS.get(preset, '?')} layers)"
    if isinstance(model.get("encoder"), str) and model["encoder"] != "xlmr":
        size += f", {model['encoder']}"
    size += f", from {model['init']}" if isinstance(model.get("init"), str) else ", from scratch"
    return {
        "name": name,
        "size": size,
        "reference": str(raw.get("reference") or "-"),
        "trains": str(raw.get("description") or "-"),
    }


@click.group("recipes", invoke_without_command=True, epilog="""\b
Examples:
  objkit recipes
  objkit recipes cp infoxlm_base my.toml
  objkit run quickstart -o runs/quickstart
  objkit run infoxlm_large --dry-run
""")
@click.pass_context
def recipes_group(ctx: click.Context) -> None:
    """The recipes objkit ships. Without a command: list them (as `recipes ls`). A recipe's
    name works wherever a recipe file does (objkit run NAME, objkit validate NAME, extends = "NAME")."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_command)


@recipes_group.command("ls", epilog="""\b
Examples:
  objkit recipes ls
  objkit recipes ls --json
""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {name, size, reference, trains}.")
def list_command(as_json: bool = False) -> None:
    """List the packaged recipes: name, size, the paper row it reproduces, what it trains."""
    import json

    from objkit.recipe.files import packaged_names

    rows = [recipe_summary(name) for name in packaged_names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    keys = ("name", "size", "reference")
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) if rows else len(k) for k in keys}
    click.echo("  ".join(k.ljust(widths[k]) for k in keys) + "  trains")
    for row in rows:
        click.echo("  ".join(row[k].ljust(widths[k]) for k in keys) + "  " + row["trains"])


@recipes_group.command("cp", epilog="""\b
Examples:
  objkit recipes cp infoxlm_base my_infoxlm.toml
  objkit recipes cp quickstart configs/
  objkit validate my_infoxlm.toml
""")
@click.argument("name")
@click.argument("file", type=click.Path(path_type=Path))
def copy_command(name: str, file: Path) -> None:
    """Write the packaged recipe NAME to FILE (or FILE/NAME.toml for a folder) to edit. An
    existing file is never replaced. `extends` in the copy still finds the packaged recipe it names."""
    from objkit.recipe.files import close_names, packaged_path

    source = packaged_path(name)
    if source is None:
        raise UserError(f"{name}: no packaged recipe of that name; {close_names(name)}objkit recipes lists them")
    target = file / source.name if file.is_dir() else file
    if target.exists() or target.is_symlink():
        raise UserError(f"{target}: already exists; not replaced (choose another FILE or remove it first)")
    if not target.parent.is_dir():
        raise UserError(f"{target}: folder {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(source.read_bytes())
        os.link(tmp, target)  # fails if target appeared meanwhile: never replaces a file
    except FileExistsError:
        raise UserError(f"{target}: already exists; not replaced (choose another FILE or remove it first)") from None
    except OSError as exc:
        raise UserError(f"{target}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    click.echo(f"wrote {target} (packaged recipe {source.stem}); edit it, then: objkit validate {target}")
