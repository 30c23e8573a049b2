"""``objkit eval NAME`` for an evaluator plugin without a command of its own: the command is built
from the plugin's ``Config`` (:meth:`objkit.Evaluator.command`).

One ``--option`` per field (``max_lines`` -> ``--max-lines``; a boolean is ``--x/--no-x``; any other
value is read as TOML, as ``--set`` reads it, falling back to a string: ``--k 4``, ``--langs
'["de","fr"]'``), then the Config validates them. Every MODEL (PATH or NAME=PATH) is loaded with
``AutoModel``/``AutoTokenizer`` and scored by ``evaluate``; ``--json`` prints one object per model,
``--markdown FILE`` writes a row per model."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import click

from objkit.contract.errors import UserError


def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _parse(text: str) -> Any:
    """A value as TOML (``4``, ``0.5``, ``["a", "b"]``), else the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _metavar(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    for word, shown in (("int", "INTEGER"), ("float", "FLOAT"), ("str", "TEXT"), ("list", "TOML-LIST"),
                        ("dict", "TOML-TABLE"), ("Literal", "CHOICE")):
        if word in text:
            return shown
    return "VALUE"


def config_params(config: type) -> list[click.Parameter]:
    """Click options for the fields of a pydantic ``config`` model."""
    params: list[click.Parameter] = []
    for name, field in config.model_fields.items():
        help_text = field.description or ""
        if field.annotation is bool:
            flag = name.replace("_", "-")
            params.append(click.Option([f"--{flag}/--no-{flag}", name], default=bool(field.default),
                                       show_default=True, help=help_text))
            continue
        required = field.is_required()
        if not required:
            default = field.get_default(call_default_factory=True)
            help_text = f"{help_text} [default: {json.dumps(default)}]".strip()
        params.append(click.Option([_option_name(name), name], type=str, default=None, required=required,
                                   metavar=_metavar(field.annotation), help=help_text))
    return params


def _validation_error(exc: Any) -> UserError:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    option = _option_name(str(err["loc"][0])) if err["loc"] else "options"
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict) else ""
    return UserError(f"{option}{loc[len(str(err['loc'][0])):] if err['loc'] else ''}: "
                     f"{err['msg'].removeprefix('Value error, ')}{shown}")


def model_specs(models: tuple[str, ...]) -> list[Any]:
    """MODEL arguments as :class:`~objkit.eval.transfer.ModelSpec` (PATH or NAME=PATH), names unique."""
    from objkit.eval.transfer import ModelSpec

    specs = [ModelSpec.parse(m) for m in models]
    names = [m.name for m in specs]
    if len(set(names)) != len(names):
        raise UserError(f"two models are named {next(n for n in names if names.count(n) > 1)!r}: "
                        "name them with NAME=PATH")
    return specs


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"


def write_markdown(path: Path, text: str) -> None:
    """``--markdown FILE``: written whole, never over a file objkit did not write."""
    from objkit.data.ownership import write_report

    write_report(path, text, "objkit eval", "--markdown")


def config_command(cls: Any) -> click.Command:
    """The ``objkit eval NAME`` command of evaluator class ``cls``, built from its ``Config``."""
    name = cls.name
    required = [n for n, f in cls.Config.model_fields.items() if f.is_required()]
    example = " ".join(f"{_option_name(n)} {n.upper()}" for n in required)
    epilog = (f"\b\nExamples:\n  objkit eval {name} runs/qi/export {example}".rstrip() +
              f"\n  objkit eval {name} qi=runs/qi/export xlmr=xlm-roberta-base {example} --json".rstrip() + "\n")
    doc = (cls.__doc__ or f"The {name} evaluator.").strip().split("\n\n")[0]

    def run(models: tuple[str, ...], device: str, as_json: bool, markdown: Path | None, **options: Any) -> None:
        from pydantic import ValidationError

        keys = {k: (_parse(v) if isinstance(v, str) else v) for k, v in options.items() if v is not None}
        try:
            config = cls.Config.model_validate(keys)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        run_evaluator(cls(config), models, device, as_json, markdown)

    params = [click.Argument(["models"], nargs=-1, required=True, metavar="MODEL [MODEL ...]"),
              *config_params(cls.Config),
              click.Option(["--device"], type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
              click.Option(["--json", "as_json"], is_flag=True, help="Print one JSON object per MODEL, one a line."),
              click.Option(["--markdown"], type=click.Path(dir_okay=False, path_type=Path), default=None,
                           help="Also write the results as a Markdown table (a row per model) to this file.")]
    return click.Command(name, callback=run, params=params, epilog=epilog,
                         help=f"{doc}\n\nMODEL is a transformers model directory or hub id, as PATH or NAME=PATH; "
                              f"the options are the {name} evaluator's config keys (its plugin's Config).")


def run_evaluator(evaluator: Any, models: tuple[str, ...], device: str, as_json: bool, markdown: Path | None) -> None:
    """Score every MODEL with ``evaluator`` and print (or ``--json``) / ``--markdown`` the results."""
    from objkit.distributed.device import resolve_device
    from objkit.eval.retrieval import load_encoder
    from objkit.contract.evaluator import EvalContext

    specs = model_specs(models)
    if markdown is not None:  # before evaluating: a file of the user's there is never replaced
        from objkit.data.ownership import check_replaceable

        check_replaceable(markdown, "--markdown")
    head: list[str] = []
    rows: list[list[str]] = []
    for i, spec in enumerate(specs):
        model, tokenizer = load_encoder(spec.path, device)
        ctx = EvalContext(model=model, tokenizer=tokenizer, device=resolve_device(device), name=spec.name,
                          model_dir=spec.path)
        results = {k: float(v) for k, v in evaluator.evaluate(ctx).items()}
        head = head or list(results)
        rows.append([spec.name, *(f"{results[k]:.4g}" if k in results else "-" for k in head)])
        if as_json:
            click.echo(json.dumps({"model": spec.path, "name": spec.name, "evaluator": evaluator.name, **results}))
            continue
        if i:
            click.echo("")
        click.echo(f"model: {spec.path}  evaluator: {evaluator.name}")
        width = max((len(k) for k in results), default=0)
        for key, value in results.items():
            click.echo(f"{key:<{width}}  {value:.4g}")
    if markdown is not None:
        write_markdown(markdown, markdown_table(["model", *head], rows))


__all__ = ["config_command", "config_params", "markdown_table", "model_specs", "run_evaluator", "write_markdown"]
