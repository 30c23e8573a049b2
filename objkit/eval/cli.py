"""``objkit eval``: cross-lingual retrieval on two aligned files or on the Tatoeba benchmark,
zero-shot cross-lingual transfer, word alignment.

The commands agree: each takes one or more MODEL (PATH or NAME=PATH), ``--json`` (stdout),
``--markdown FILE`` (a row per model) and ``--device``. Nothing heavy is imported before a
command runs, so that every ``--help`` is fast."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from objkit.contract.errors import UserError
from objkit.eval.generic import markdown_table, model_specs, write_markdown
from objkit.eval.tasks import TASKS

POOLINGS = ("mean", "cls")  # objkit.eval.retrieval.POOLINGS (not imported here: it loads torch)

# The built-in evaluator plugins' commands (objkit_plugins.retrieval ... return these): resolved
# without loading the registry, so that their --help stays fast; any other NAME is looked up.
BUILTIN = ("retrieval", "tatoeba", "transfer", "align")


class EvalGroup(click.Group):
    """``objkit eval NAME``: NAME is an evaluator plugin (plugin kind ``evaluator``): its own
    command (:meth:`objkit.Evaluator.command`) or one built from its ``Config``."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*BUILTIN, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        if cmd_name in BUILTIN:
            return {"retrieval": retrieval_command, "tatoeba": tatoeba_command, "transfer": transfer_command,
                    "align": align_command}[cmd_name]
        from objkit.eval.generic import config_command
        from objkit.contract.registry import default_registry

        cls = default_registry().get(cmd_name, kind="evaluator").cls  # unknown: one line naming the valid ones
        return cls.command() or config_command(cls)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        with formatter.section("Evaluator plugins"):
            formatter.write_text("Every evaluator plugin installed is a command too: objkit list-plugins lists "
                                 "them (kind evaluator); objkit eval NAME --help shows its options.")


eval_group = EvalGroup(
    "eval",
    help="Evaluate encoders: sentence retrieval (top-1 accuracy, percent), zero-shot cross-lingual "
         "transfer (fine-tune in one language, test in many), word alignment (AER, percent) and any "
         "evaluator plugin. Each command takes one or more MODEL (a directory or hub id, as PATH or "
         "NAME=PATH), --json (to stdout), --markdown FILE (a row per model) and --device.",
    epilog="""\b
Examples:
  objkit eval retrieval runs/qi/export xlmr=xlm-roberta-base --src val.de --tgt val.en --markdown ret.md
  objkit eval tatoeba runs/qi/export --data-dir data/tatoeba --json
  objkit eval transfer runs/qi/export --task sib200 --data-dir data/sib200 --train-langs eng_Latn
  objkit eval align runs/qi/export --src data/alignment/de-en/test.de --tgt data/alignment/de-en/test.en \\
      --gold data/alignment/de-en/alignv2.txt
""",
)


def _encoder_options(f: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--layer", type=int, default=None,
                     help="Hidden layer to pool (0 = embeddings). Default: 8 for 12 layers, "
                          "else round(2/3 of the depth)."),
        click.option("--pooling", type=click.Choice(POOLINGS), default="mean", show_default=True,
                     help="mean: average of the tokens incl. <s>, </s> (XTREME); cls: first token."),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--max-length", type=click.IntRange(min=2), default=128, show_default=True,
                     help="Tokens per sentence, specials included; longer ones are truncated."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                     show_default=True),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object per MODEL, one a line."),
        click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Also write the results as a Markdown table (a row per model) to this file."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


_models = model_specs
_markdown = markdown_table


def _load(model_dir: str, layer: int | None, device: str) -> tuple[Any, Any, int]:
    from objkit.eval.retrieval import check_layer, default_layer, load_encoder

    model, tokenizer = load_encoder(model_dir, device)
    n_layers = int(model.config.num_hidden_layers)
    layer = default_layer(n_layers) if layer is None else layer
    check_layer(layer, n_layers)
    return model, tokenizer, layer


def _progress() -> bool:
    return sys.stderr.isatty()


@click.command("retrieval", epilog="""\b
Examples:
  objkit eval retrieval runs/xlco/export --src val.de --tgt val.en
  objkit eval retrieval runs/xlco/export --src val.de --tgt val.en --layer 12 --pooling cls
  objkit eval retrieval runs/xlco/export --src val.fr --tgt val.en --json
  objkit eval retrieval xlco=runs/xlco/export xlmr=xlm-roberta-base --src val.de --tgt val.en --markdown r.md
""")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--src", "src", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Source sentences, one a line.")
@click.option("--tgt", "tgt", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Their translations, line-aligned with --src.")
@_encoder_options
def retrieval_command(
    models: tuple[str, ...], src: Path, tgt: Path, layer: int | None, pooling: str,
    batch_size: int, max_length: int, device: str, as_json: bool, markdown: Path | None = None,
) -> None:  # fmt: skip
    """Top-1 retrieval accuracy between two line-aligned files.

    MODEL is a transformers model directory (config.json, weights and tokenizer files,
    e.g. a checkpoint saved by objkit) or a hub id, as PATH or NAME=PATH. Each sentence of --src is matched to its
    cosine nearest neighbour among the --tgt sentences and vice versa; line i is the right
    answer for line i.
    """
    from objkit.eval.retrieval import evaluate_pair, read_aligned

    specs = _models(models)
    src_lines, tgt_lines = read_aligned(src, tgt)
    rows = []
    for spec in specs:
        model, tokenizer, used = _load(spec.path, layer, device)
        res = evaluate_pair(
            model, tokenizer, src_lines, tgt_lines, layer=used, pooling=pooling,  # type: ignore[arg-type]
            batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
        )  # fmt: skip
        scores = [f"{res[k]:.2f}" for k in ("src2tgt", "tgt2src", "mean")]
        rows.append([spec.name, str(used), pooling, str(res["n"]), *scores])
        if as_json:
            click.echo(json.dumps({"model": spec.path, "name": spec.name, "src": str(src), "tgt": str(tgt), **res}))
            continue
        if len(rows) > 1:
            click.echo("")
        click.echo(f"model: {spec.path}  layer: {used}  pooling: {pooling}  pairs: {res['n']}")
        click.echo(f"src→tgt  {res['src2tgt']:6.2f}")
        click.echo(f"tgt→src  {res['tgt2src']:6.2f}")
        click.echo(f"mean     {res['mean']:6.2f}")
    if markdown is not None:
        head = ["model", "layer", "pooling", "pairs", "src→tgt", "tgt→src", "mean"]
        _write_atomic(markdown, _markdown(head, rows))


@click.command("tatoeba", epilog="""\b
Examples:
  objkit eval tatoeba runs/xlco/export --data-dir data/tatoeba
  objkit eval tatoeba runs/xlco/export --data-dir data/tatoeba --langs xtreme36
  objkit eval tatoeba xlm-roberta-base --data-dir data/tatoeba --langs deu,fra --json
  objkit eval tatoeba qi=runs/qi/export xlmr=xlm-roberta-base --data-dir data/tatoeba --markdown tatoeba.md
""")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with the LASER files tatoeba.XXX-eng.XXX and tatoeba.XXX-eng.eng.")
@click.option("--langs", default="infoxlm14", show_default=True,
              help="infoxlm14 (the 14 XNLI languages), xtreme36, all, or codes: deu,fra.")
@_encoder_options
def tatoeba_command(
    models: tuple[str, ...], data_dir: Path, langs: str, layer: int | None, pooling: str,
    batch_size: int, max_length: int, device: str, as_json: bool, markdown: Path | None = None,
) -> None:  # fmt: skip
    """Tatoeba sentence retrieval, xx→en and en→xx, per language and averaged, for each MODEL
    (a directory or hub id, as PATH or NAME=PATH).

    Languages are LASER ISO 639-3 codes (deu, fra, cmn, ...); XTREME's two-letter codes
    are accepted in a list too. Accuracies are top-1 percent; averages are unweighted over
    languages, as in XTREME and InfoXLM.
    """
    from objkit.eval.tatoeba import discover_languages, evaluate_tatoeba, format_table, select_languages

    specs = _models(models)
    chosen = select_languages(langs, discover_languages(data_dir))
    rows = []
    for i, spec in enumerate(specs):
        model, tokenizer, used = _load(spec.path, layer, device)
        res = evaluate_tatoeba(
            model, tokenizer, data_dir, chosen, layer=used, pooling=pooling,  # type: ignore[arg-type]
            batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
        )  # fmt: skip
        means = [f"{r['mean']:.2f}" for r in res["languages"].values()]
        rows.append([spec.name, *means, f"{res['average']['mean']:.2f}"])
        if as_json:
            click.echo(json.dumps({"model": spec.path, "name": spec.name, "data_dir": str(data_dir), **res}))
            continue
        if i:
            click.echo("")
        click.echo(f"model: {spec.path}  layer: {used}  pooling: {pooling}  languages: {len(chosen)}")
        click.echo(format_table(res))
    if markdown is not None:
        _write_atomic(markdown, _markdown(["model (mean of xx→en, en→xx)", *res["languages"], "average"], rows))


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1,2,3 (got {text!r})") from None
    if not values:
        raise click.BadParameter("at least one seed")
    return values


_write_atomic = write_markdown


@click.command("transfer", epilog="""\b
Examples:
  objkit eval transfer runs/qi/export runs/qn/export --task sib200 --data-dir data/sib200 \\
      --train-langs eng_Latn --seeds 1,2,3 --lr 5e-4 --epochs 10 --std
  objkit eval transfer xlm-roberta-base --task xnli --data-dir download/xnli   # the paper's setting
  objkit eval transfer infoxlm=runs/base/export --task xnli --data-dir download/xnli \\
      --setting translate-train-all --json > xnli.json
  objkit eval transfer runs/qi/export --task panx --data-dir download/panx --langs en,de,fr
  objkit eval transfer runs/qi/export --task custom --data-dir mydata --columns text=sentence,label=topic
""")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--task", type=click.Choice(list(TASKS)), required=True,
              help="xnli/pawsx: DIR/{split}-{lang}.tsv (text_a, text_b, label); sib200: DIR/{lang}/{split}.tsv; "
                   "panx/udpos: DIR/{split}-{lang}.tsv, token<TAB>label, blank line between sentences; "
                   "custom: either layout, .tsv or .jsonl, with --columns.")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True,
              help="The task's files; or a hub dataset id (xnli, paws-x, Davlan/sib200, xtreme for panx) "
                   "loaded through datasets, from its cache when the hub is unreachable (needs --langs).")
@click.option("--setting", type=click.Choice(["cross-lingual", "translate-train-all"]), default="cross-lingual",
              show_default=True, help="Train on --train-langs, or on every language's training split.")
@click.option("--train-langs", default="en", show_default=True,
              help="Training language(s), comma-separated (en also finds eng_Latn).")
@click.option("--langs", default=None, help="Test languages, comma-separated (default: every language in DIR).")
@click.option("--seeds", default="1,2,3,4,5", show_default=True, help="Comma-separated seeds.")
@click.option("--epochs", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-length", type=click.IntRange(min=8), default=128, show_default=True,
              help="Tokens per example, specials included (clipped to the model's positions).")
@click.option("--warmup", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Warmup: a fraction of the steps if < 1, else a number of steps.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Override the model config's dropout.")
@click.option("--eval-every", type=click.IntRange(min=1), default=None,
              help="Select on dev every N steps (default: after every epoch; XTREME's script: 100).")
@click.option("--select", type=click.Choice(["train-dev", "avg-dev"]), default="train-dev", show_default=True,
              help="train-dev: the training languages' dev score (XTREME); avg-dev: all languages' (xTune).")
@click.option("--frozen", is_flag=True, help="Linear probe: freeze the encoder, train the classifier head only.")
@click.option("--columns", default=None,
              help="custom task: text=COL[,text_pair=COL],label=COL (JSON keys, TSV header names or 0-based indices).")
@click.option("--max-train", type=click.IntRange(min=1), default=None, help="Use the first N training examples.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--std", "show_std", is_flag=True, help="Show mean ± standard deviation over seeds.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (every seed, means, settings).")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the table (mean ± std) as Markdown to this file.")
def transfer_command(
    models: tuple[str, ...], task: str, data_dir: Path, setting: str, train_langs: str, langs: str | None,
    seeds: str, epochs: int, lr: float, batch_size: int, max_length: int, warmup: float, weight_decay: float,
    dropout: float | None, eval_every: int | None, select: str, frozen: bool, columns: str | None,
    max_train: int | None, device: str, show_std: bool, as_json: bool, markdown: Path | None,
) -> None:  # fmt: skip
    """Zero-shot cross-lingual transfer: fine-tune each MODEL on the training language(s) of a
    task, test it on every language, and print one table (a row per model, a column per
    language, each cell the mean over seeds, then the average over the languages not trained
    on). Model selection and defaults follow XTREME (lr 2e-5, batch 32, 5 epochs, max length
    128, AdamW, linear decay, clip 1.0; the epoch with the best training-language dev score).

    MODEL is any AutoModel directory (an objkit export, a local XLM-R or mBERT) or hub id, as
    PATH or NAME=PATH. All models get the same data, seeds and settings; each split is
    tokenized once per tokenizer. The majority-class baseline is printed beside them.
    """
    from objkit.eval.finetune import FinetuneSettings
    from objkit.eval.tasks import HUB, Columns, load_hub_task, load_task
    from objkit.eval.transfer import evaluate_transfer, format_table, stderr_log

    seed_list = _int_list(seeds)
    spec = TASKS[task]
    if columns is not None and task != "custom":
        raise UserError(f"--columns: only for --task custom (task {task} has a fixed layout)")
    cols = Columns.parse(columns) if columns else None
    lang_list = [x.strip() for x in langs.split(",") if x.strip()] if langs else None
    train_list = [x.strip() for x in train_langs.split(",") if x.strip()]
    if not data_dir.exists() and not str(data_dir).startswith((".", "/")) and task in HUB:
        data = load_hub_task(spec, str(data_dir), lang_list, train_list, setting, max_train)
    else:
        data = load_task(spec, data_dir, lang_list, train_list, setting, cols, max_train)
    settings = FinetuneSettings(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, warmup=warmup,
                                weight_decay=weight_decay, eval_every=eval_every, select=select,  # type: ignore[arg-type]
                                frozen=frozen, dropout=dropout)
    specs = _models(models)
    if markdown is not None:  # before fine-tuning: a file of the user's there is never replaced
        from objkit.data.ownership import check_replaceable

        check_replaceable(markdown, "--markdown")
    result = evaluate_transfer(specs, data, settings, seed_list, setting=setting, device=device, log=stderr_log)
    if markdown is not None:
        _write_atomic(markdown, format_table(result, std=True, markdown=True))
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(format_table(result, std=show_std))


@click.command("align", epilog="""\b
Examples:
  objkit eval align runs/qi/export --src de-en/test.de --tgt de-en/test.en --gold de-en/alignv2.txt
  objkit eval align xlm-roberta-base --src test.en --tgt test.fr --gold alignv2.txt --layer all
  objkit eval align runs/qi/export --src a.txt --tgt b.txt --gold a-b.pharaoh --method itermax --json
  objkit eval align qi=runs/qi/export xlmr=xlm-roberta-base --src a.txt --tgt b.txt --gold g.txt --markdown a.md
""")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--src", "src", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Source sentences, whitespace-tokenised words, one a line.")
@click.option("--tgt", "tgt", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Their translations, line-aligned with --src.")
@click.option("--gold", "gold", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Gold links: 'SENT I J [S|P]' (1-based, I indexes --src) or Pharaoh 'i-j ipj' (0-based).")
@click.option("--layer", default=None, metavar="N|all",
              help="Hidden layer of the word vectors (0 = embeddings), or 'all' to score every layer. "
                   "Default: 8 for 12 layers, else round(2/3 of the depth).")
@click.option("--method", type=click.Choice(["argmax", "itermax", "match", "xlmalign"]), default="argmax",
              show_default=True,
              help="argmax / itermax / match: SimAlign's extraction, each side encoded alone (match needs "
                   "scipy); xlmalign: XLM-Align's aligner (pair encoded jointly, Sinkhorn, subwords).")
@click.option("--unit", type=click.Choice(["subword", "word"]), default="subword", show_default=True,
              help="subword: align subwords, link two words when any of their subwords are (SimAlign's "
                   "default token_type='bpe'); word: align the means of each word's subwords.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-length", type=click.IntRange(min=3), default=512, show_default=True,
              help="Tokens per sequence, specials included (clipped to the model's positions); "
                   "words past it get no link.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per MODEL, one a line.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the results (each model's best layer) as a Markdown table to this file.")
def align_command(
    models: tuple[str, ...], src: Path, tgt: Path, gold: Path, layer: str | None, method: str, unit: str,
    batch_size: int, max_length: int, device: str, as_json: bool, markdown: Path | None = None,
) -> None:  # fmt: skip
    """Word alignment error rate (AER) against gold links, SimAlign's or XLM-Align's protocol, for
    each MODEL (a directory or hub id, as PATH or NAME=PATH).

    \b
    SimAlign (argmax, itermax, match; its SentenceAligner): each sentence encoded on its own,
    (cos+1)/2 similarity between subwords (--unit subword) or word means (--unit word);
    argmax: mutual argmax; itermax: SimAlign's iterative argmax (2 rounds, alpha 0.9);
    match: maximum-weight matching.
    XLM-Align's aligner (xlmalign; its xlmalign-ot-aligner.py): the pair encoded as one
    sequence <s> src </s> tgt </s>, raw dot products between subwords, 2 Sinkhorn rounds
    (no exponential), mutual argmax of the two transport plans (no itermax). XLM-Align's
    published table is this aligner (XLM-R base, layer 8: de-en 19.11, en-fr 6.83,
    en-hi 33.73, ro-en 28.73), not SimAlign's argmax.

    Subword links link their words. Precision (against possible links), recall (against sure
    links), F1 and AER = 1 - (|A&S| + |A&P|) / (|A| + |S|) are summed over the corpus, in
    percent. Gold links to NULL or past the end of a sentence stay in S/P, unhittable, as
    both references score them; they are counted (JSON: null_links, out_of_range_links).

    \b
    Examples:
      objkit eval align runs/qi/export --src de-en/test.de --tgt de-en/test.en --gold de-en/alignv2.txt
      objkit eval align xlm-roberta-base --src test.en --tgt test.fr --gold alignv2.txt --layer all
      objkit eval align xlm-roberta-base --src test.en --tgt test.hi --gold alignv2.txt --method xlmalign
      objkit eval align base=xlm-roberta-base qi=runs/qi/export --src a.txt --tgt b.txt --gold a-b.pharaoh \\
          --method itermax --unit word --markdown align.md
    """
    from objkit.eval.align import align_corpus, format_table, gold_notes, parse_layers, read_corpus
    from objkit.eval.retrieval import default_layer, load_encoder

    specs = _models(models)
    src_words, tgt_words, sentences, fmt = read_corpus(src, tgt, gold)
    if method == "xlmalign" and unit == "word":
        raise UserError("--method xlmalign aligns subwords (XLM-Align's aligner); --unit word goes with "
                        "argmax, itermax or match")  # fmt: skip
    if markdown is not None:  # before encoding: a file of the user's there is never replaced
        from objkit.data.ownership import check_replaceable

        check_replaceable(markdown, "--markdown")
    for note in gold_notes(gold, sentences):
        click.echo(note, err=True)
    rows = []
    for i, spec in enumerate(specs):
        model, tokenizer = load_encoder(spec.path, device)
        n_layers = int(model.config.num_hidden_layers)
        layers = parse_layers(layer, n_layers, default_layer(n_layers))
        res = align_corpus(
            model, tokenizer, src_words, tgt_words, sentences, layers=layers, method=method, unit=unit,
            batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
        )  # fmt: skip
        best = res["layers"][res["best_layer"]]
        rows.append([spec.name, str(res["best_layer"]), *(f"{best[k]:.2f}" for k in ("aer", "precision", "recall", "f1"))])
        if res["truncated"]:
            click.echo(f"warning: {spec.name}: {res['truncated']} sentences longer than {res['max_tokens']} tokens "
                       "(--max-length, clipped to the model's positions): their last words get no link", err=True)
        if as_json:
            out = {"model": spec.path, "name": spec.name, "src": str(src), "tgt": str(tgt), "gold": str(gold),
                   "gold_format": fmt, "method": method, "unit": unit, **res,
                   "layers": {str(k): v for k, v in res["layers"].items()}}  # fmt: skip
            click.echo(json.dumps(out))
            continue
        if i:
            click.echo("")
        click.echo(f"model: {spec.path}  method: {method}  unit: {unit}  pairs: {res['n']}  gold: {fmt} "
                   "(percent; AER lower is better)")  # fmt: skip
        click.echo(format_table(res))
    if markdown is not None:
        _write_atomic(markdown, _markdown(["model", "layer", "AER", "prec", "recall", "F1"], rows))


__all__ = ["align_command", "eval_group", "retrieval_command", "tatoeba_command", "transfer_command"]
