"""``objkit tokenizer``: train a tokenizer (:func:`objkit.data.tokenizer.train_tokenizer`) or extend
one (``objkit tokenizer extend``, :mod:`objkit.data.vocab`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from objkit.cli.lazygroup import LazyGroup
from objkit.data.tokenizer import train_tokenizer


@click.group("tokenizer", cls=LazyGroup, lazy_subcommands={
    "extend": ("objkit.data.vocab:extend_command", "Add pieces learned from new text to an existing tokenizer."),
}, epilog="""\b
Examples:
  objkit tokenizer train corpus/*.txt -o tok/ --vocab-size 8000
  objkit tokenizer extend xlm-roberta-base sw/*.txt -o tok-sw --add 20000 --lang sw
""")
def tokenizer_group() -> None:
    """Train a SentencePiece tokenizer, or extend an existing one with new pieces."""


@tokenizer_group.command("train", epilog="""\b
Examples:
  objkit tokenizer train corpus/*.txt -o tok/ --vocab-size 8000
  objkit tokenizer train en.jsonl de.jsonl -o tok/ --field sentence --max-sentences 50000
""")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False),
              help="directory to write (loadable with transformers.AutoTokenizer)")
@click.option("--vocab-size", default=8000, show_default=True, type=click.IntRange(min=100),
              help="SentencePiece pieces (the tokenizer adds <pad> and <mask>)")
@click.option("--character-coverage", default=0.9995, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--max-sentences", default=200_000, show_default=True, type=click.IntRange(min=1),
              help="train on at most this many sentences, read round-robin over FILES")
@click.option("--field", default="text", show_default=True, help="text column of .jsonl/.parquet files")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-progress", is_flag=True, help="Disable the progress bar.")
def train_command(files: tuple[str, ...], output: str, vocab_size: int, character_coverage: float,
                  max_sentences: int, field: str, seed: int, no_progress: bool = False) -> None:
    """Train an XLM-R-style unigram tokenizer on FILES (.txt, .jsonl, .parquet; globs allowed).
    """
    from objkit.data.sources import expand, iter_source_texts
    from objkit.recipe.schema import TextSource

    for pattern in files:
        expand(pattern, "FILES", None)
    source = TextSource.model_validate(
        {"type": "text", "files": [{"path": p, "lang": "und", "field": field} for p in files]})
    texts = iter_source_texts(source, max_sentences, name="FILES")
    from objkit.data.ownership import write_folder

    trained: list[Any] = []
    # a private temporary folder renamed into place: a non-empty DIR objkit did not write is refused
    # before training, one objkit wrote is replaced whole, a failed training leaves DIR as it was
    write_folder(Path(output), lambda tmp: trained.append(train_tokenizer(
        texts, tmp, vocab_size=vocab_size, character_coverage=character_coverage, max_sentences=max_sentences,
        seed=seed, progress=not no_progress)), "objkit tokenizer train", "-o")
    tokenizer = trained[0]
    click.echo(f"wrote tokenizer with {len(tokenizer)} ids ({type(tokenizer).__name__}) to {output}")
