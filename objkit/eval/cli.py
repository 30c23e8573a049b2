"""``objkit eval``: cross-lingual retrieval on two aligned files, or on the Tatoeba benchmark."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from objkit.eval.retrieval import (
    POOLINGS,
    check_layer,
    default_layer,
    evaluate_pair,
    load_encoder,
    read_aligned,
)
from objkit.eval.tatoeba import discover_languages, evaluate_tatoeba, format_table, select_languages

eval_group = click.Group(
    "eval",
    help="Evaluate an encoder: cross-lingual sentence retrieval (top-1 accuracy, percent) and "
    "word alignment (AER, percent).",
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
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _load(model_dir: str, layer: int | None, device: str) -> tuple[Any, Any, int]:
    model, tokenizer = load_encoder(model_dir, device)
    n_layers = int(model.config.num_hidden_layers)
    layer = default_layer(n_layers) if layer is None else layer
    check_layer(layer, n_layers)
    return model, tokenizer, layer


def _progress() -> bool:
    return sys.stderr.isatty()


@eval_group.command("retrieval")
@click.argument("model_dir")
@click.option("--src", "src", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Source sentences, one a line.")
@click.option("--tgt", "tgt", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Their translations, line-aligned with --src.")
@_encoder_options
def retrieval_command(
    model_dir: str, src: Path, tgt: Path, layer: int | None, pooling: str,
    batch_size: int, max_length: int, device: str, as_json: bool,
) -> None:  # fmt: skip
    """Top-1 retrieval accuracy between two line-aligned files.

    MODEL_DIR is a transformers model directory (config.json, weights and tokenizer files,
    e.g. a checkpoint saved by objkit) or a hub id. Each sentence of --src is matched to its
    cosine nearest neighbour among the --tgt sentences and vice versa; line i is the right
    answer for line i.

    \b
    Examples:
      objkit eval retrieval runs/xlco/export --src val.de --tgt val.en
      objkit eval retrieval runs/xlco/export --src val.de --tgt val.en --layer 12 --pooling cls
      objkit eval retrieval runs/xlco/export --src val.fr --tgt val.en --json
    """
    src_lines, tgt_lines = read_aligned(src, tgt)
    model, tokenizer, layer = _load(model_dir, layer, device)
    res = evaluate_pair(
        model, tokenizer, src_lines, tgt_lines, layer=layer, pooling=pooling,  # type: ignore[arg-type]
        batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps({"model": model_dir, "src": str(src), "tgt": str(tgt), **res}))
        return
    click.echo(f"model: {model_dir}  layer: {layer}  pooling: {pooling}  pairs: {res['n']}")
    click.echo(f"src→tgt  {res['src2tgt']:6.2f}")
    click.echo(f"tgt→src  {res['tgt2src']:6.2f}")
    click.echo(f"mean     {res['mean']:6.2f}")


@eval_group.command("tatoeba")
@click.argument("model_dir")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder with the LASER files tatoeba.XXX-eng.XXX and tatoeba.XXX-eng.eng.")
@click.option("--langs", default="infoxlm14", show_default=True,
              help="infoxlm14 (the 14 XNLI languages), xtreme36, all, or codes: deu,fra.")
@_encoder_options
def tatoeba_command(
    model_dir: str, data_dir: Path, langs: str, layer: int | None, pooling: str,
    batch_size: int, max_length: int, device: str, as_json: bool,
) -> None:  # fmt: skip
    """Tatoeba sentence retrieval, xx→en and en→xx, per language and averaged.

    Languages are LASER ISO 639-3 codes (deu, fra, cmn, ...); XTREME's two-letter codes
    are accepted in a list too. Accuracies are top-1 percent; averages are unweighted over
    languages, as in XTREME and InfoXLM.

    \b
    Examples:
      objkit eval tatoeba runs/xlco/export --data-dir data/tatoeba
      objkit eval tatoeba runs/xlco/export --data-dir data/tatoeba --langs xtreme36
      objkit eval tatoeba xlm-roberta-base --data-dir data/tatoeba --langs deu,fra --json
    """
    chosen = select_languages(langs, discover_languages(data_dir))
    model, tokenizer, layer = _load(model_dir, layer, device)
    res = evaluate_tatoeba(
        model, tokenizer, data_dir, chosen, layer=layer, pooling=pooling,  # type: ignore[arg-type]
        batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps({"model": model_dir, "data_dir": str(data_dir), **res}))
        return
    click.echo(f"model: {model_dir}  layer: {layer}  pooling: {pooling}  languages: {len(chosen)}")
    click.echo(format_table(res))


@eval_group.command("align")
@click.argument("model_dir")
@click.option("--src", "src", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Source sentences, whitespace-tokenised words, one a line.")
@click.option("--tgt", "tgt", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Their translations, line-aligned with --src.")
@click.option("--gold", "gold", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Gold links: 'SENT I J [S|P]' (1-based, I indexes --src) or Pharaoh 'i-j ipj' (0-based).")
@click.option("--layer", default=None, metavar="N|all",
              help="Hidden layer of the word vectors (0 = embeddings), or 'all' to score every layer. "
                   "Default: 8 for 12 layers, else round(2/3 of the depth).")
@click.option("--method", type=click.Choice(["argmax", "itermax", "match"]), default="argmax",
              show_default=True, help="SimAlign's link extraction (match needs scipy).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--max-length", type=click.IntRange(min=3), default=512, show_default=True,
              help="Tokens per sentence, specials included (clipped to the model's positions); "
                   "words past it get no link.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def align_command(
    model_dir: str, src: Path, tgt: Path, gold: Path, layer: str | None, method: str,
    batch_size: int, max_length: int, device: str, as_json: bool,
) -> None:  # fmt: skip
    """Word alignment error rate (AER) against gold links, SimAlign's protocol.

    Each word's vector is the mean of its subword vectors at the layer (each side encoded on
    its own), links come from the (cos+1)/2 similarity matrix (argmax: mutual argmax; itermax:
    SimAlign's iterative argmax; match: Hungarian), and precision (against possible links),
    recall (against sure links), F1 and AER = 1 - (|A&S| + |A&P|) / (|A| + |S|) are summed
    over the corpus, in percent.

    \b
    Examples:
      objkit eval align runs/qi/export --src de-en/test.de --tgt de-en/test.en --gold de-en/alignv2.txt
      objkit eval align xlm-roberta-base --src test.en --tgt test.fr --gold alignv2.txt --layer all
      objkit eval align runs/qi/export --src a.txt --tgt b.txt --gold a-b.pharaoh --method itermax --json
    """
    from objkit.eval.align import align_corpus, format_table, parse_layers, read_corpus

    src_words, tgt_words, sentences, fmt = read_corpus(src, tgt, gold)
    model, tokenizer = load_encoder(model_dir, device)
    n_layers = int(model.config.num_hidden_layers)
    layers = parse_layers(layer, n_layers, default_layer(n_layers))
    res = align_corpus(
        model, tokenizer, src_words, tgt_words, sentences, layers=layers, method=method,
        batch_size=batch_size, max_length=max_length, device=device, progress=_progress(),
    )  # fmt: skip
    nulls = sum(sentence.null_links for sentence in sentences)
    if nulls:
        click.echo(f"note: {gold}: {nulls} gold link(s) to a negative index (NULL) skipped", err=True)
    if res["truncated"]:
        click.echo(f"warning: {res['truncated']} sentences longer than {res['max_tokens']} tokens (--max-length, "
                   "clipped to the model's positions): their last words get no link", err=True)  # fmt: skip
    if as_json:
        out = {"model": model_dir, "src": str(src), "tgt": str(tgt), "gold": str(gold), "gold_format": fmt,
               "method": method, "null_links": nulls, **res, "layers": {str(k): v for k, v in res["layers"].items()}}  # fmt: skip
        click.echo(json.dumps(out))
        return
    click.echo(f"model: {model_dir}  method: {method}  pairs: {res['n']}  gold: {fmt} "
               "(percent; AER lower is better)")  # fmt: skip
    click.echo(format_table(res))


__all__ = ["align_command", "eval_group", "retrieval_command", "tatoeba_command"]
