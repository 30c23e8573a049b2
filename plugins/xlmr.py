"""The ``xlmr`` encoder (the default): XLM-R (Conneau et al., 2020, "Unsupervised Cross-lingual
Representation Learning at Scale") as released in ``xlm-roberta-base`` / ``-large``.

A transformers ``XLMRobertaForMaskedLM`` (SDPA attention): a RoBERTa body with fairseq's position
layout (positions count from ``padding_idx + 1``, padding sits at ``padding_idx``), one token type,
and RoBERTa's LM head (dense + GELU + LayerNorm + the decoder tied to the word embeddings), over a
250,002-piece SentencePiece vocabulary (``<s> a </s></s> b </s>``). A fresh model takes
``model.preset`` / explicit dims (:data:`objkit.PRESETS`). Everything else -- truncated passes,
momentum copies, FSDP units, the run options, export -- is :class:`objkit.MaskedLMEncoder`'s.

Written against the public ``objkit`` API only, and registered through the ``objkit`` entry
points exactly like a third party's encoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PretrainedConfig, XLMRobertaConfig, XLMRobertaForMaskedLM
from transformers.activations import gelu

from objkit import PLUGIN_API_VERSION, MaskedLMEncoder, PresetEncoderConfig, hookimpl, preset_dims

XLMR_VOCAB_SIZE = 250_002
"""XLM-R's vocabulary (a fresh model's, when the run's tokenizer is not known: dry runs)."""

XLMRConfig = PresetEncoderConfig  # ``[model]`` of the xlmr encoder: the generic keys, a preset and/or dims


def architecture(config: PresetEncoderConfig, vocab_size: int, pad_token_id: int = 1) -> XLMRobertaConfig:
    """An XLM-R config from a preset and/or explicit dims (for fresh models and dry runs)."""
    dropout = 0.1 if config.dropout is None else config.dropout
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=config.max_length + pad_token_id + 1,
        pad_token_id=pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        type_vocab_size=1,
        **preset_dims(config),
    )


class XLMREncoder(MaskedLMEncoder):
    """XLM-R body + LM head (``XLMRobertaForMaskedLM``). ``forward`` returns hidden states ``[h_0 .. h_L]``."""

    name: ClassVar[str] = "xlmr"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[PresetEncoderConfig]] = PresetEncoderConfig
    model_class = XLMRobertaForMaskedLM
    default_vocab_size = XLMR_VOCAB_SIZE

    @classmethod
    def fresh_config(cls, config: Any, vocab_size: int) -> PretrainedConfig:
        return architecture(config, vocab_size)

    @staticmethod
    def position_layout(hf_config: PretrainedConfig) -> tuple[int, int]:
        pad = hf_config.pad_token_id if hf_config.pad_token_id is not None else 1
        return pad + 1, pad  # fairseq: positions count from padding_idx + 1; padding sits at padding_idx

    def head(self) -> nn.Module:
        return self.mlm.lm_head

    def lm_head_parts(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor | None]:
        head = self.mlm.lm_head  # XLMRobertaLMHead: dense, GELU, layer norm, then the decoder

        def transform(hidden: torch.Tensor) -> torch.Tensor:
            return head.layer_norm(gelu(head.dense(hidden)))

        return transform, head.decoder.weight, head.decoder.bias


@hookimpl
def objkit_plugins() -> list[type]:
    return [XLMREncoder]
