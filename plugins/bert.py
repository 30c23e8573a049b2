"""The ``bert`` encoder: the BERT family (``BertForMaskedLM``), e.g. multilingual BERT.

Follows Devlin et al. (2019) as released in ``bert-base-multilingual-cased`` (mBERT): a BERT
body (absolute positions from 0, two token types) and BERT's LM head (dense + GELU +
LayerNorm + the decoder tied to the word embeddings), a cased WordPiece tokenizer with
``[CLS] a [SEP] b [SEP]`` sequences. Departures: objkit trains it with the recipe's objectives
(MLM on "complete" sentence blocks, no next-sentence prediction, as RoBERTa/XLM-R do), and a
from-scratch run trains its own WordPiece vocabulary on the recipe's data
(``[model.tokenizer]`` table; the algorithm defaults to ``wordpiece`` for this encoder).
Everything else (truncated passes, momentum copies, FSDP units, the run options, export) is
:class:`objkit.MaskedLMEncoder`'s. Written against the public ``objkit`` API only, and registered
through the ``objkit`` entry points exactly like a third party's encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from pydantic import model_validator
from transformers import BertConfig, BertForMaskedLM, PretrainedConfig
from torch import nn

from objkit import PLUGIN_API_VERSION, MaskedLMEncoder, PresetEncoderConfig, TokenizerTraining, hookimpl, preset_dims

MBERT_VOCAB_SIZE = 119_547
"""mBERT's vocabulary (``bert-base-multilingual-cased``)."""


class BertEncoderConfig(PresetEncoderConfig):
    """``[model]`` with ``encoder = "bert"``: a trained tokenizer defaults to WordPiece."""

    encoder: str = "bert"

    @model_validator(mode="after")
    def _wordpiece_by_default(self) -> BertEncoderConfig:
        if isinstance(self.tokenizer, TokenizerTraining) and self.tokenizer.algorithm is None:
            self.tokenizer = self.tokenizer.model_copy(update={"algorithm": "wordpiece"})
        return self


def bert_architecture(config: PresetEncoderConfig, vocab_size: int, pad_token_id: int = 0) -> BertConfig:
    """A BERT config from a preset and/or explicit dims (for fresh models and dry runs)."""
    dropout = 0.1 if config.dropout is None else config.dropout
    return BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=config.max_length,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        type_vocab_size=2,
        **preset_dims(config),
    )


class BertEncoder(MaskedLMEncoder):
    """BERT body + BERT's LM head (``BertForMaskedLM``). ``forward`` returns hidden states ``[h_0 .. h_L]``."""

    name: ClassVar[str] = "bert"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[BertEncoderConfig]] = BertEncoderConfig
    tokenizer_algorithm: ClassVar[str] = "wordpiece"
    model_class = BertForMaskedLM
    default_vocab_size = MBERT_VOCAB_SIZE

    @classmethod
    def fresh_config(cls, config: Any, vocab_size: int) -> PretrainedConfig:
        return bert_architecture(config, vocab_size)

    def head(self) -> nn.Module:
        return self.mlm.cls

    def lm_head_parts(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor | None]:
        predictions = self.mlm.cls.predictions  # BertLMPredictionHead: transform, then the decoder
        return predictions.transform, predictions.decoder.weight, predictions.decoder.bias


@hookimpl
def objkit_plugins() -> list[type]:
    return [BertEncoder]
