"""Train an XLM-R-style SentencePiece unigram tokenizer (or a BERT-style WordPiece one), cache it,
and the ``objkit tokenizer`` CLI.

The SentencePiece model is trained with ``unk=0, bos=1, eos=2`` (no pad) like XLM-R's, and
wrapped as ``transformers.XLMRobertaTokenizer``, which applies fairseq's id layout:
``<s>=0, <pad>=1, </s>=2, <unk>=3``, SentencePiece piece ``i >= 3`` at ``i + 1``, ``<mask>``
last. The directory also keeps ``sentencepiece.bpe.model`` (fairseq / slow-tokenizer use).
"""

from __future__ import annotations

import hashlib
import io
import collections
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objkit.contract.defaults import model_max_tokens, save_tokenizer_for  # re-exported here
from objkit.contract.errors import UserError

if TYPE_CHECKING:  # imported where used: `objkit tokenizer --help` loads neither torch nor pydantic models
    from objkit.contract.interfaces import TokenizerTraining

log = logging.getLogger(__name__)

SPM_FILE = "sentencepiece.bpe.model"
MARKER_FILE = "objkit_tokenizer.json"
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")


def _spm_train(sentences: list[str], *, vocab_size: int, character_coverage: float, seed: int,
               num_threads: int, hard_vocab_limit: bool) -> bytes:
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        character_coverage=character_coverage, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=num_threads,
        hard_vocab_limit=hard_vocab_limit, minloglevel=2,
    )
    return model.getvalue()


def _read_sentences(texts: Iterable[str], max_sentences: int, progress: bool) -> list[str]:
    """The first ``max_sentences`` non-empty texts, one line each; with ``progress``, a bar on a terminal."""
    from tqdm.auto import tqdm

    with tqdm(total=max_sentences, desc="tokenizer: reading", unit=" sentences", disable=None if progress else True,
              dynamic_ncols=True, leave=False) as bar:
        sentences = []
        for t in itertools.islice((t for t in texts if t and t.strip()), max_sentences):
            sentences.append(t.strip().replace("\n", " "))
            bar.update(1)
    return sentences


def train_tokenizer(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 8000,
                    character_coverage: float = 0.9995, max_sentences: int = 200_000, seed: int = 0,
                    num_threads: int = 1, progress: bool = False) -> Any:
    """Train a SentencePiece unigram model on the first ``max_sentences`` non-empty texts and save an
    XLM-R tokenizer to ``out_dir`` (loadable by ``transformers.AutoTokenizer``); return it loaded.

    Deterministic for a given input: no input shuffling or sampling (the first ``max_sentences``
    are used, so callers should interleave languages), fixed RNG seed, ``num_threads`` threads
    (1 by default; more threads may change float summation order). ``vocab_size`` counts
    SentencePiece pieces (the tokenizer has ``vocab_size + 2`` ids: ``<pad>`` and ``<mask>`` are
    added). If the corpus cannot fill ``vocab_size`` pieces, the limit is made soft and a
    warning says how many were learned. ``progress``: a bar while reading the texts, on a terminal.
    """
    from transformers import AutoTokenizer, XLMRobertaTokenizer

    sentences = _read_sentences(texts, max_sentences, progress)
    if not sentences:
        raise UserError("tokenizer training: no non-empty text to train on")
    opts: dict[str, Any] = dict(vocab_size=vocab_size, character_coverage=character_coverage, seed=seed,
                                num_threads=num_threads)
    try:
        proto = _spm_train(sentences, hard_vocab_limit=True, **opts)
    except RuntimeError as exc:
        match = _TOO_HIGH.search(str(exc))
        if match is None:
            reason = str(exc).strip().splitlines()[-1]
            raise UserError(f"tokenizer training failed (vocab_size={vocab_size}, "
                            f"character_coverage={character_coverage}): {reason}") from None
        log.warning("tokenizer: %d sentences are too few for vocab_size=%d (at most %s pieces); "
                    "training with a soft vocabulary limit", len(sentences), vocab_size, match.group(2))
        proto = _spm_train(sentences, hard_vocab_limit=False, **opts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SPM_FILE).write_bytes(proto)
    XLMRobertaTokenizer.from_pretrained(str(out_dir)).save_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    log.info("tokenizer: trained %d ids on %d sentences -> %s", len(tokenizer), len(sentences), out_dir)
    return tokenizer


BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_alphabet(sentences: list[str], character_coverage: float) -> list[str]:
    """The characters a WordPiece vocabulary keeps: the most frequent ones that cover
    ``character_coverage`` of the characters of ``sentences`` (whitespace aside), as
    SentencePiece's ``character_coverage`` does; ties broken by code point (deterministic)."""
    counts = collections.Counter(c for s in sentences for c in s if not c.isspace())
    total = sum(counts.values())
    kept, covered = [], 0
    for char, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if covered >= character_coverage * total:
            break
        kept.append(char)
        covered += n
    return kept


def train_wordpiece(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 8000, character_coverage: float = 0.9995,
                    max_sentences: int = 200_000, progress: bool = False) -> Any:
    """Train a cased WordPiece vocabulary (mBERT's: BERT pre-tokenization, no lower-casing, accents
    kept, ``##`` continuation pieces) on the first ``max_sentences`` non-empty texts with
    ``tokenizers``, and save it as ``transformers.BertTokenizerFast`` (ids: ``[PAD]=0, [UNK]=1,
    [CLS]=2, [SEP]=3, [MASK]=4``; loadable by ``AutoTokenizer``); return it loaded.
    Deterministic for a given input.

    The alphabet is the characters covering ``character_coverage`` of the text
    (:func:`wordpiece_alphabet`), not the trainer's default of the 1,000 most frequent: with
    Chinese in the text that default left a fifth of a Chinese sentence's characters ``[UNK]``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import AutoTokenizer, BertTokenizerFast

    sentences = _read_sentences(texts, max_sentences, progress)
    if not sentences:
        raise UserError("tokenizer training: no non-empty text to train on")
    trainer = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    alphabet = wordpiece_alphabet(sentences, character_coverage)
    trainer.train_from_iterator(sentences, vocab_size=vocab_size, min_frequency=1, special_tokens=list(BERT_SPECIALS),
                                limit_alphabet=len(alphabet), initial_alphabet=alphabet,
                                show_progress=progress and sys.stderr.isatty())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out_dir))  # vocab.txt
    BertTokenizerFast.from_pretrained(str(out_dir), do_lower_case=False, strip_accents=False,
                                      tokenize_chinese_chars=True).save_pretrained(str(out_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    log.info("tokenizer: trained %d WordPiece ids on %d sentences -> %s", len(tokenizer), len(sentences), out_dir)
    return tokenizer


# ----------------------------------------------------------------------------- recipe cache
def _config_json(config: TokenizerTraining) -> dict[str, Any]:
    """The training config as cached; ``algorithm`` only when set (keys of unigram tokenizers trained
    before it existed stay valid)."""
    return config.model_dump(mode="json", exclude={"algorithm"} if config.algorithm is None else None)


def tokenizer_cache_key(config: TokenizerTraining, sources: Mapping[str, Any], *,
                        base_dir: Path | None = None, seed: int = 0) -> str:
    """Hash of the training config, the source definitions used and their files' sizes/mtimes."""
    from objkit.data.sources import source_files

    names = _training_sources(config, sources)
    payload = {
        "version": 1,
        "seed": seed,
        "config": _config_json(config),
        "sources": {n: sources[n].model_dump(mode="json") for n in names},
        "files": {n: source_files(n, sources[n], base_dir) for n in names},
    }
    if config.algorithm == "wordpiece":  # objkit 0.7: the alphabet follows character_coverage (was 1,000 chars)
        payload["wordpiece_alphabet"] = "character_coverage"
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _training_sources(config: TokenizerTraining, sources: Mapping[str, Any]) -> list[str]:
    from objkit.contract.registry import did_you_mean

    names = list(config.sources) if config.sources is not None else list(sources)
    for i, n in enumerate(names):
        if n not in sources:
            raise UserError(f"model.tokenizer.sources[{i}]: no data source named {n!r}; "
                            f"{did_you_mean(n, list(sources))}")
    if not names:
        raise UserError("model.tokenizer.sources: empty; name at least one data source")
    return names


def ensure_tokenizer(config: TokenizerTraining, sources: Mapping[str, Any], cache_dir: Path, *,
                     base_dir: Path | None = None, seed: int = 0, progress: bool | None = None) -> Path:
    """Directory of the tokenizer trained from ``config`` on ``sources``, training it only once.

    The result lives in ``cache_dir/<tokenizer_cache_key>/``; training writes a temporary
    sibling directory and renames it into place, so a finished directory is always complete.
    Each source contributes up to ``ceil(max_sentences / number of sources)`` sentences. In a
    distributed job call it on one rank first, then on the others after a barrier. ``progress``:
    a reading bar on a terminal; None follows datasets' progress-bar switch (which ``run
    --no-progress`` and ``prepare --no-progress`` turn off), as the tokenization bars do.
    """
    from objkit.data.sources import iter_source_texts

    cache_dir = Path(cache_dir)
    key = tokenizer_cache_key(config, sources, base_dir=base_dir, seed=seed)
    target = cache_dir / key
    if (target / MARKER_FILE).exists():
        log.info("tokenizer: reusing %s", target)
        return target
    names = _training_sources(config, sources)
    if progress is None:
        import datasets

        progress = datasets.is_progress_bar_enabled()
    per_source = math.ceil(config.max_sentences / len(names))
    texts = itertools.chain.from_iterable(
        iter_source_texts(sources[n], per_source, name=n, base_dir=base_dir) for n in names)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        if config.algorithm == "wordpiece":
            train_wordpiece(texts, tmp, vocab_size=config.vocab_size, character_coverage=config.character_coverage,
                            max_sentences=config.max_sentences,
                            progress=progress)
        else:
            train_tokenizer(texts, tmp, vocab_size=config.vocab_size, character_coverage=config.character_coverage,
                            max_sentences=config.max_sentences, seed=seed, progress=progress)
        (tmp / MARKER_FILE).write_text(json.dumps(
            {"key": key, "sources": names, "config": _config_json(config)}, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / MARKER_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
