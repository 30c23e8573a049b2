"""Vocabulary extension for new languages (Glot500's method; ImaniGooghari et al., ACL 2023).

``objkit tokenizer extend BASE FILES... -o DIR --add N``: train a SentencePiece unigram model
on the new text, take its highest-scoring pieces that the base model lacks (at most ``N``) and
append them, with their scores, to the base model's pieces. Every base piece keeps its id;
the HF tokenizer written to DIR (XLM-R layout) puts ``<mask>`` after the new pieces, so its id
moves to the end. Where this departs from Glot500: Glot500 merges a whole new model of a fixed
size; here ``--add`` bounds what is appended: characters the base lacks first, then pieces by score.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import click

from objkit.errors import UserError
from objkit.tokenizer import SPM_FILE, _spm_train


def _base_model(base: str) -> bytes:
    """The SentencePiece model of ``base`` (a directory, or a hub id in the local HF cache)."""
    path = Path(base)
    if path.is_dir():
        model = path / SPM_FILE
        if not model.is_file():
            raise UserError(f"BASE: {base} has no {SPM_FILE} (extension needs a SentencePiece tokenizer such as "
                            "XLM-R's or one objkit trained)")
        return model.read_bytes()
    from transformers import AutoTokenizer

    from objkit.hub import offline_unless_reachable

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=offline_unless_reachable(base))
    except (OSError, ValueError) as exc:
        raise UserError(f"BASE: cannot load a tokenizer from {base!r} ({str(exc).splitlines()[0][:120]})") from None
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if not vocab_file or not Path(vocab_file).is_file():
        raise UserError(f"BASE: {base!r} has no SentencePiece model file")
    return Path(vocab_file).read_bytes()


def extend_tokenizer(base: str, texts: list[str], out_dir: Path, *, add: int, seed: int = 0,
                     character_coverage: float = 0.9995) -> tuple[Any, list[str]]:
    """Write the extended tokenizer to ``out_dir``; return it (loaded) and the pieces added."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import AutoTokenizer, XLMRobertaTokenizer

    if not texts:
        raise UserError("FILES: no non-empty text to train on")
    base_proto = pb.ModelProto()
    base_proto.ParseFromString(_base_model(base))
    have = {p.piece for p in base_proto.pieces}
    try:
        new_bytes = _spm_train(texts, vocab_size=max(add * 2, 100), character_coverage=character_coverage, seed=seed,
                               num_threads=1, hard_vocab_limit=False)
    except RuntimeError as exc:
        raise UserError(f"tokenizer extension: training on FILES failed: {str(exc).strip().splitlines()[-1]}") from None
    new_proto = pb.ModelProto()
    new_proto.ParseFromString(new_bytes)
    normal = pb.ModelProto.SentencePiece.NORMAL
    # characters the base lacks first (else their text stays <unk>), then the best-scoring pieces
    candidates = sorted((p for p in new_proto.pieces if p.type == normal and p.piece not in have),
                        key=lambda p: (len(p.piece.lstrip("\u2581")) > 1, -p.score))
    added = []
    for piece in itertools.islice(candidates, add):
        entry = base_proto.pieces.add()
        entry.piece, entry.score, entry.type = piece.piece, piece.score, normal
        added.append(piece.piece)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPM_FILE).write_bytes(base_proto.SerializeToString())
    XLMRobertaTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir)), added


@click.command("extend")
@click.argument("base")
@click.argument("files", nargs=-1, required=True)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="directory to write (loadable with transformers.AutoTokenizer)")
@click.option("--add", "add", required=True, type=click.IntRange(min=1), help="append at most this many pieces")
@click.option("--lang", default=None, help="language of FILES (recorded in DIR/objkit_extension.json)")
@click.option("--max-sentences", default=200_000, show_default=True, type=click.IntRange(min=1))
@click.option("--field", default="text", show_default=True, help="text column of .jsonl/.parquet files")
@click.option("--seed", default=0, show_default=True, type=int)
def extend_command(base: str, files: tuple[str, ...], output: str, add: int, lang: str | None, max_sentences: int,
                   field: str, seed: int) -> None:
    """Extend BASE (a SentencePiece tokenizer: a directory or hub id) with pieces learned from
    FILES: a unigram model is trained on them and its best pieces BASE lacks are appended
    (Glot500's method). Every existing piece keeps its id; <mask> moves to the end.

    \b
    Examples:
      objkit tokenizer extend runs/quickstart/export corpus/cs.txt -o tok-cs --add 2000 --lang cs
      objkit tokenizer extend xlm-roberta-base sw/*.txt -o tok-sw --add 20000 --lang sw
    """
    import json

    from objkit.data.sources import expand, iter_source_texts
    from objkit.schema import TextSource

    for pattern in files:
        expand(pattern, "FILES", None)
    source = TextSource.model_validate(
        {"type": "text", "files": [{"path": p, "lang": lang or "und", "field": field} for p in files]})
    texts = list(iter_source_texts(source, max_sentences, name="FILES"))
    tokenizer, added = extend_tokenizer(base, texts, Path(output), add=add, seed=seed)
    (Path(output) / "objkit_extension.json").write_text(json.dumps(
        {"base": base, "lang": lang, "added": len(added), "files": list(files)}, indent=1) + "\n")
    click.echo(f"appended {len(added)} pieces to {base}: {len(tokenizer)} ids -> {output}")
