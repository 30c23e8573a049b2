"""Fast tokenization of raw text: SentencePiece's own C++ ``encode``, ids mapped onto the HF tokenizer's.

An XLM-R-style tokenizer (``sentencepiece.bpe.model`` beside it; objkit's trained and extended
tokenizers, XLM-R's own) gives the same pieces through the SentencePiece library, several
times faster per core than through ``tokenizers``' Unigram. :class:`TextEncoder` uses it when
the model file is there, maps each SentencePiece id to the HF id of the same piece (the
fairseq layout: +1, ``<unk>`` -> 3, appended pieces and ``<mask>`` wherever the HF vocabulary
has them), and spot-checks texts of every batch against the HF tokenizer: a batch where they
differ (a normalisation the two do not share) is tokenized by the HF tokenizer instead.
Without the model file it is the HF tokenizer.

:meth:`TextEncoder.encode_flat` is the bulk path of the data layer: SentencePiece encodes a
batch on ``threads`` C++ threads (one process uses every core, no worker start-up or pickling),
the ids are mapped with numpy, and :func:`list_array` cuts and packs them into one Arrow list
array that ``datasets`` writes without converting Python lists.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

SPM_FILE = "sentencepiece.bpe.model"
CHECKED = 16  # the first texts an encoder sees, tokenized both ways
SPOT_CHECKED = 2  # then the first texts of every batch


def _model_file(tokenizer: Any) -> Path | None:
    """The tokenizer's SentencePiece model file, if it has one (a WordPiece tokenizer's
    ``vocab_file`` is ``vocab.txt``: not one)."""
    for candidate in (getattr(tokenizer, "vocab_file", None), Path(str(tokenizer.name_or_path)) / SPM_FILE):
        if candidate and Path(candidate).suffix == ".model" and Path(candidate).is_file():
            return Path(candidate)
    return None


class TextEncoder:
    """``encoder(texts) -> ids`` (no special tokens), picklable for ``num_proc`` workers."""

    def __init__(self, tokenizer: Any, threads: int = 1) -> None:
        self.tokenizer = tokenizer
        self.threads = max(1, int(threads))  # SentencePiece's C++ threads per batch
        self.model: bytes | None = None
        self.id_map: list[int] | None = None
        self._id_array: np.ndarray | None = None
        path = _model_file(tokenizer)
        if path is None:
            return
        import sentencepiece as spm

        model = path.read_bytes()
        try:
            sp = spm.SentencePieceProcessor(model_proto=model)
        except RuntimeError:  # not a SentencePiece model after all: the HF tokenizer alone
            return
        vocab = tokenizer.get_vocab()
        unk = tokenizer.unk_token_id
        self.model = model
        self.id_map = [vocab.get(sp.id_to_piece(i), unk) for i in range(sp.get_piece_size())]
        self._id_array = np.asarray(self.id_map, dtype=np.int32)
        self._sp: Any = sp

    @property
    def threaded(self) -> bool:
        """True when batches are tokenized by SentencePiece on ``threads`` threads (so callers
        need no worker processes)."""
        return self.id_map is not None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_sp", "_seen")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _hf(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _processor(self) -> Any:
        sp = self.__dict__.get("_sp")
        if sp is None:
            import sentencepiece as spm

            sp = self._sp = spm.SentencePieceProcessor(model_proto=self.model)
        return sp

    def __call__(self, texts: list[str]) -> list[list[int]]:
        values, lengths = self.encode_flat(texts)
        return [row.tolist() for row in np.split(values, np.cumsum(lengths[:-1]))] if texts else []

    def encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of ``texts`` as one flat int32 array and the row lengths (int64).

        SentencePiece's ids are checked against the HF tokenizer's on the first ``CHECKED``
        texts an encoder sees, then on the first ``SPOT_CHECKED`` of every batch (the HF
        tokenizer is ~20x slower per text); a batch that differs is the HF tokenizer's."""
        if not texts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        if self.id_map is None:
            return flatten(self._hf(texts))
        return self._finish(texts, self._encode_pieces(texts))

    def encode_batches(self, batches: Iterable[list[str]]) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
        """``(texts, values, lengths)`` of :meth:`encode_flat` for each batch, SentencePiece
        encoding the next batch on a worker thread (its C++ part without the GIL) while this one
        is flattened, mapped and checked here."""
        if self.id_map is None:
            yield from ((texts, *self.encode_flat(texts)) for texts in batches)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="objkit-encode") as pool:
            pending: tuple[list[str], Future[list[list[int]]]] | None = None
            for texts in batches:
                future = pool.submit(self._encode_pieces, texts)
                if pending is not None:
                    yield pending[0], *self._finish(pending[0], pending[1].result())
                pending = (texts, future)
            if pending is not None:
                yield pending[0], *self._finish(pending[0], pending[1].result())

    def _encode_pieces(self, texts: list[str]) -> list[list[int]]:
        with gc_paused():  # the id lists hold no cycles: collections would only rescan them
            return self._processor().encode(texts, num_threads=self.threads) if texts else []

    def _finish(self, texts: list[str], rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """SentencePiece's ``rows`` of ``texts`` flattened and mapped onto the HF ids, spot-checked."""
        with gc_paused():
            values, lengths = flatten(rows)
        del rows
        assert self._id_array is not None
        values = self._id_array[values]
        seen = self.__dict__.get("_seen", 0)
        n = min(len(texts), max(CHECKED - seen, SPOT_CHECKED))
        self._seen = seen + len(texts)
        if n:
            ids = np.split(values[: int(lengths[:n].sum())], np.cumsum(lengths[: n - 1]))
            if [row.tolist() for row in ids] != self._hf(texts[:n]):
                return flatten(self._hf(texts))
        return values, lengths

    @property
    def fingerprint(self) -> str:
        """A hash of everything the ids depend on (the SentencePiece model, the id map and the
        HF tokenizer), computed once: ``datasets`` would otherwise pickle and hash the encoder
        for every ``map``."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            from datasets.fingerprint import Hasher

            hf = getattr(self.tokenizer, "backend_tokenizer", None)
            hasher = Hasher()
            hasher.update(hf.to_str() if hf is not None else self.tokenizer)
            hasher.update(type(self.tokenizer).__name__)
            hasher.update(self.model or b"")
            hasher.update(self._id_array.tobytes() if self._id_array is not None else b"")
            cached = self._fingerprint = hasher.hexdigest()
        return cached


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off inside (id lists and line lists hold no cycles:
    collections would only rescan millions of them); as it was after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def flatten(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Nested id lists as (flat int32 values, int64 lengths)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
    return values, lengths


def list_array(values: np.ndarray, lengths: np.ndarray, max_tokens: int | None = None,
               keep: np.ndarray | None = None) -> pa.ListArray:
    """Rows ``values[offset:offset + length]`` as an Arrow ``list<int32>`` array: each cut to
    ``max_tokens``, and only the rows where ``keep`` (bool per row) is true."""
    if keep is not None and not keep.all():
        values = values[np.repeat(keep, lengths)]
        lengths = lengths[keep]
    if max_tokens is not None and len(lengths) and int(lengths.max()) > max_tokens:
        starts = np.cumsum(lengths) - lengths
        position = np.arange(len(values)) - np.repeat(starts, lengths)
        values = values[position < max_tokens]
        lengths = np.minimum(lengths, max_tokens)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)  # one map batch: far below 2**31 ids
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))
