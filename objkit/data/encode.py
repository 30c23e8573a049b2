"""Fast tokenization of raw text: SentencePiece's own C++ ``encode``, ids mapped onto the HF tokenizer's.

An XLM-R-style tokenizer (``sentencepiece.bpe.model`` beside it; objkit's trained and extended
tokenizers, XLM-R's own) gives the same pieces through the SentencePiece library, several
times faster per core than through ``tokenizers``' Unigram. :class:`TextEncoder` uses it when
the model file is there, maps each SentencePiece id to the HF id of the same piece (the
fairseq layout: +1, ``<unk>`` -> 3, appended pieces and ``<mask>`` wherever the HF vocabulary
has them), and checks the first texts of every batch against the HF tokenizer: a batch where
they differ (a normalisation the two do not share) is tokenized by the HF tokenizer instead.
Without the model file it is the HF tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPM_FILE = "sentencepiece.bpe.model"
CHECKED = 16  # texts of each batch tokenized both ways


def _model_file(tokenizer: Any) -> Path | None:
    """The tokenizer's SentencePiece model file, if it has one (a WordPiece tokenizer's
    ``vocab_file`` is ``vocab.txt``: not one)."""
    for candidate in (getattr(tokenizer, "vocab_file", None), Path(str(tokenizer.name_or_path)) / SPM_FILE):
        if candidate and Path(candidate).suffix == ".model" and Path(candidate).is_file():
            return Path(candidate)
    return None


class TextEncoder:
    """``encoder(texts) -> ids`` (no special tokens), picklable for ``num_proc`` workers."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.model: bytes | None = None
        self.id_map: list[int] | None = None
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
        self._sp: Any = sp

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_sp"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _hf(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.id_map is None:
            return self._hf(texts)
        sp = self.__dict__.get("_sp")
        if sp is None:
            import sentencepiece as spm

            sp = self._sp = spm.SentencePieceProcessor(model_proto=self.model)
        m = self.id_map
        ids = [[m[i] for i in row] for row in sp.encode(texts)]
        if CHECKED and self._hf(texts[:CHECKED]) != ids[:CHECKED]:
            return self._hf(texts)
        return ids


def encode_texts(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids of ``texts`` without special tokens, from a :class:`TextEncoder` or an HF tokenizer."""
    if not texts:
        return []
    if isinstance(tokenizer, TextEncoder):
        return tokenizer(texts)
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
