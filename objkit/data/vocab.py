"""Vocabulary extension for new languages (Glot500's method; ImaniGooghari et al., ACL 2023).

``objkit tokenizer extend BASE FILES... -o DIR --add N``: train a SentencePiece unigram model
on the new text, take its highest-scoring pieces that the base model lacks (at most ``N``) and
append them, with their scores, to the base model's pieces. Every base piece keeps its id;
the HF tokenizer written to DIR (XLM-R layout) puts ``<mask>`` after the new pieces, so its id
moves to the end. Where this departs from Glot500: Glot500 merges a whole new model of a fixed
size; here ``--add`` bounds what is appended: characters the base lacks first, then pieces by score.

A recipe that initialises from a checkpoint and names an extended tokenizer gets the checkpoint's
vocabulary resized before anything is trained (:func:`fit_vocabulary`): a new piece's row (word
embedding and LM-head bias) starts as the mean of the rows of the pieces the *base* tokenizer
splits its surface string into (Glot500 initialises new rows randomly; the mean follows
Gee et al., 2022 and "Fast Vocabulary Transfer"), the mean of every row where the base has none.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from objkit.contract.errors import UserError
from objkit.data.ownership import check_replaceable, write_folder
from objkit.data.tokenizer import SPM_FILE, _spm_train

if TYPE_CHECKING:
    from objkit.contract.interfaces import Encoder
    from objkit.recipe.loader import ResolvedRecipe

EXTENSION_RECORD = "objkit_extension.json"
WORD_START = "\u2581"  # SentencePiece's word-start mark


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

    from objkit.blocks.hub import offline_unless_reachable

    try:
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=offline_unless_reachable(base))
    except (OSError, ValueError) as exc:
        raise UserError(f"BASE: cannot load a tokenizer from {base!r} ({str(exc).splitlines()[0][:120]})") from None
    vocab_file = getattr(tokenizer, "vocab_file", None)
    if not vocab_file or not Path(vocab_file).is_file():
        raise UserError(f"BASE: {base!r} has no SentencePiece model file")
    return Path(vocab_file).read_bytes()


def check_not_base(base: str, output: Path) -> None:
    """Refuse ``-o`` that is BASE, inside it or holds it (BASE a directory): one line, exit 2."""
    if not Path(base).is_dir():
        return
    base_path, out = Path(base).resolve(), Path(output).resolve()
    if out == base_path or base_path in out.parents or out in base_path.parents:
        where = "is" if out == base_path else "is inside" if base_path in out.parents else "contains"
        raise UserError(f"-o {output}: {where} BASE {base}; write the extended tokenizer to a directory of its own")


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
    model = base_proto.SerializeToString()
    # the HF tokenizer is built from the new model alone (in a folder of its own: a tokenizer.json
    # already in out_dir would be loaded instead), then written beside it
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / SPM_FILE).write_bytes(model)
        XLMRobertaTokenizer.from_pretrained(scratch).save_pretrained(str(out_dir))
    (out_dir / SPM_FILE).write_bytes(model)
    return AutoTokenizer.from_pretrained(str(out_dir)), added


@click.command("extend", epilog="""\b
Examples:
  objkit tokenizer extend runs/quickstart/export corpus/cs.txt -o tok-cs --add 2000 --lang cs
  objkit tokenizer extend xlm-roberta-base sw/*.txt -o tok-sw --add 20000 --lang sw
""")
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
    """
    import json

    from objkit.data.sources import expand, iter_source_texts
    from objkit.recipe.schema import TextSource

    for pattern in files:
        expand(pattern, "FILES", None)
    source = TextSource.model_validate(
        {"type": "text", "files": [{"path": p, "lang": lang or "und", "field": field} for p in files]})
    check_not_base(base, Path(output))
    check_replaceable(Path(output), "-o")  # before training
    texts = list(iter_source_texts(source, max_sentences, name="FILES"))
    result: list[Any] = []

    def build(tmp: Path) -> None:
        result.extend(extend_tokenizer(base, texts, tmp, add=add, seed=seed))
        (tmp / EXTENSION_RECORD).write_text(json.dumps(
            {"base": base, "lang": lang, "added": len(result[1]), "files": list(files)}, indent=1) + "\n")

    # a private temporary folder renamed into place: every file of DIR from this extension
    write_folder(Path(output), build, "objkit tokenizer extend", "-o")
    tokenizer, added = result
    click.echo(f"appended {len(added)} pieces to {base}: {len(tokenizer)} ids -> {output}")


def surface_pieces(base: Any, piece: str, vocab: dict[str, int] | None = None) -> list[int]:
    """Ids of the pieces ``base`` splits ``piece``'s surface string into, in the position the
    piece takes: a word-start piece (``"\u2581dům"``, WordPiece's ``"dům"``) as a word of its own, a
    word-inner piece (``"ová"``, ``"##ová"``) without the word-start mark the split would put first
    (a lone ``"\u2581"`` is dropped; ``"\u2581ov"`` becomes ``"ov"`` where the base has it). Unknown
    pieces are left out. ``vocab``: ``base.get_vocab()``, when the caller has it."""
    vocab = base.get_vocab() if vocab is None else vocab
    wordpiece = piece.startswith("##")
    inner = wordpiece or not piece.startswith(WORD_START)
    text = piece[2:] if wordpiece else piece.replace(WORD_START, " ").strip()
    if not text:
        return []
    pieces = base.tokenize(text)
    if inner and pieces:
        first = pieces[0]
        if first == WORD_START:
            pieces = pieces[1:]
        elif first.startswith(WORD_START) and first[1:] in vocab:
            pieces = [first[1:], *pieces[1:]]
        elif wordpiece and "##" + first in vocab:
            pieces = ["##" + first, *pieces[1:]]
    ids = [vocab[p] for p in pieces if p in vocab]
    return [i for i in ids if i != base.unk_token_id]


def row_sources(base: Any, extended: Any, rows: int, *, key: str = "model.tokenizer") -> list[list[int]]:
    """For every id of ``extended``: the rows of a checkpoint trained with ``base`` whose mean
    starts its row -- its own row for a piece ``base`` has (specials such as ``<mask>`` may move),
    the rows of its surface pieces (:func:`surface_pieces`) for a new one, none (the caller's
    fallback) where the base has no piece for it. A ``UserError`` naming ``key`` when ``extended``
    does not keep every piece of ``base`` at its id."""
    base_vocab = base.get_vocab()
    ext_vocab = extended.get_vocab()
    specials = set(base.all_special_tokens)
    for piece, old_id in sorted(base_vocab.items(), key=lambda item: item[1]):
        new_id = ext_vocab.get(piece)
        if new_id is None or (new_id != old_id and piece not in specials):
            where = "is missing" if new_id is None else f"has id {new_id}"
            raise UserError(f"{key}: does not extend the checkpoint's tokenizer: its piece {piece!r} (id {old_id} "
                            f"there) {where}; extend that tokenizer with `objkit tokenizer extend`")
    sources: list[list[int]] = []
    for piece in extended.convert_ids_to_tokens(list(range(len(extended)))):
        old_id = base_vocab.get(piece)
        ids = [old_id] if old_id is not None else surface_pieces(base, piece, base_vocab)
        sources.append([i for i in ids if i < rows])
    return sources


def fit_vocabulary(resolved: ResolvedRecipe, encoder: Encoder, tokenizer: Any) -> list[list[int]] | None:
    """Resize ``encoder``'s vocabulary to ``tokenizer``'s when the recipe initialises from a
    checkpoint and names a larger (extended) tokenizer; returns the row sources used (None: no
    resize). The base tokenizer is the checkpoint's (``model.init``), else the one the extension
    recorded (``objkit_extension.json``). A tokenizer smaller than the checkpoint's vocabulary, or
    one that moves the base's pieces, is a ``UserError``."""
    import json

    from transformers import AutoTokenizer

    from objkit.blocks.hub import offline_unless_reachable

    model = resolved.recipe.model
    if model.init is None or not isinstance(model.tokenizer, str) or model.tokenizer == model.init:
        return None
    size, rows = len(tokenizer), encoder.vocab_size
    if size == rows:
        return None
    if size < rows:
        raise UserError(f"model.tokenizer: {model.tokenizer} has {size} ids but the checkpoint model.init "
                        f"{model.init} has {rows} embedding rows; a tokenizer for it keeps at least its vocabulary")
    candidates = [model.init]
    record = Path(model.tokenizer) / EXTENSION_RECORD
    if record.is_file():
        candidates.append(json.loads(record.read_text())["base"])
    base = None
    for spec in candidates:
        try:
            base = AutoTokenizer.from_pretrained(spec, local_files_only=offline_unless_reachable(spec))
            break
        except (OSError, ValueError, TypeError):
            continue
    if base is None:
        raise UserError(f"model.tokenizer: {model.tokenizer} has {size} ids, more than the {rows} rows of model.init "
                        f"{model.init}, and neither the checkpoint nor {record} names a base tokenizer to map the "
                        "new pieces onto")
    sources = row_sources(base, tokenizer, rows)
    encoder.resize_vocab(sources)
    return sources
