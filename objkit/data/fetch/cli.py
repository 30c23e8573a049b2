"""``objkit data list`` and ``objkit data get NAME -o DIR``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from objkit.data.fetch.catalog import CATALOG, select_languages, spec


@click.group("data", epilog="""\b
Examples:
  objkit data list
  objkit data get sib200 -o data/sib200
  objkit data get tatoeba -o data/tatoeba --langs deu,fra,ces
""")
def data_group() -> None:
    """Fetch evaluation sets and parallel text from their original public sources, in the layouts
    `objkit eval` and recipes read, with their licence and citation beside the files (SOURCE.md)."""


@data_group.command("list", epilog="""\b
Examples:
  objkit data list
  objkit data list --json | python -m json.tool
""")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of every data set's description.")
def list_command(as_json: bool) -> None:
    """List the data sets `objkit data get` fetches: what each is, where from, and what reads it."""
    if as_json:
        rows = [{"name": s.name, "title": s.title, "kind": s.kind, "about": s.about, "source": s.source,
                 "licence": s.licence, "layout": s.layout, "reads": s.reads, "languages": list(s.languages),
                 **({"url_variable": s.url_variable, "base_url": s.url()} if s.kind == "release" else
                    {"hub_id": s.hub_id})} for s in CATALOG.values()]
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(map(len, CATALOG))
    for s in CATALOG.values():
        click.echo(f"{s.name:<{width}}  {s.about}")
        click.echo(f"{'':<{width}}  from {s.source}; licence: {s.licence}")
        click.echo(f"{'':<{width}}  read by: {s.reads}")


@data_group.command("get", epilog="""\b
Examples:
  objkit data get sib200 -o data/sib200
  objkit data get sib200 -o data/sib200-all --langs eng_Latn,yor_Latn,quy_Latn
  objkit data get tatoeba -o data/tatoeba
  objkit data get alignments -o data/alignment --langs de-en,en-fr
  objkit data get xnli -o data/xnli --langs en,de,fr
  objkit data get panx -o data/panx --from saved/xtreme   # DatasetDict.save_to_disk copies
  OBJKIT_DATA_URL_TATOEBA=http://mirror.example/tatoeba objkit data get tatoeba -o data/tatoeba
""")
@click.argument("name", metavar="NAME")
@click.option("-o", "--output", "dest", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="Folder to create (must be new, empty, or written by `objkit data get` for NAME before).")
@click.option("--langs", default=None, metavar="L1,L2|all",
              help="Languages (pairs for alignments) to fetch; default: those `objkit data list --json` shows.")
@click.option("--from", "source", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              metavar="PATH", help="Hub data sets: read PATH/CONFIG saved with DatasetDict.save_to_disk instead "
              "of the hub.")
@click.option("--translate-train", is_flag=True,
              help="xnli, pawsx: also write the machine-translated train split of every language "
              "(for --setting translate-train-all).")
def get_command(name: str, dest: Path, langs: str | None, source: Path | None, translate_train: bool) -> None:
    """Download data set NAME into DIR, in the layout the objkit command that reads it expects, with
    SOURCE.md (source URL, licence, citation). DIR appears whole or not at all. An unreachable source
    is one line naming the URL and how to place the files by hand (exit 2). Release files come from
    their authors' repositories (set OBJKIT_DATA_URL_<NAME> to use a mirror); hub data sets through
    `datasets` (its cache and HF_HUB_OFFLINE apply)."""
    from objkit.data.fetch.build import get

    s = spec(name)
    chosen = select_languages(s, langs)
    notes = get(s, dest, chosen, source, translate_train)
    for note in notes:
        click.echo(note)
    click.echo(f"{s.name}: {len(chosen)} language{'s' * (len(chosen) != 1)} written to {dest} "
               f"(licence and citation in {dest / 'SOURCE.md'}); read it with: "
               f"{s.reads.replace('DIR', str(dest))}")
