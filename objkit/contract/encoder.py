"""The encoder contract's configuration and context types: the ``[model]`` keys every encoder
shares (:class:`EncoderKeys`, :class:`EncoderConfig`, :class:`TokenizerTraining`), what
:meth:`objkit.contract.interfaces.Encoder.build` gets beside its config (:class:`EncoderContext`,
:class:`EncoderRunOptions`), the token ids objectives need (:class:`VocabInfo`), and
:class:`PluginConfig`, the base of every plugin's config model. Re-exported by
:mod:`objkit.contract.interfaces`, where the plugin kinds live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class PluginConfig(BaseModel):
    """Base of every plugin's config model: unknown keys are errors, defaults are typed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class VocabInfo:
    """The token ids objectives need (XLM-R layout: ``<s>``=0, ``<pad>``=1, ``</s>``=2)."""

    bos_id: int
    eos_id: int
    mask_id: int
    pad_id: int
    vocab_size: int
    special_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> VocabInfo:
        """Token ids of ``tokenizer``; a BERT-style tokenizer without ``<s>``/``</s>`` gives its
        ``[CLS]``/``[SEP]`` as ``bos_id``/``eos_id`` (``[CLS] a [SEP] b [SEP]`` is BERT's layout)."""
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        return cls(
            bos_id=bos,
            eos_id=eos,
            mask_id=tokenizer.mask_token_id,
            pad_id=tokenizer.pad_token_id,
            vocab_size=len(tokenizer),
            special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
        )

    @classmethod
    def xlmr(cls, vocab_size: int = 250_002) -> VocabInfo:
        """XLM-R's layout, for dry runs without the checkpoint's tokenizer."""
        return cls(0, 2, vocab_size - 1, 1, vocab_size, (0, 1, 2, 3, vocab_size - 1))


class TokenizerTraining(BaseModel):
    """``[model.tokenizer]`` as a table: train a tokenizer on the recipe's data (from-scratch runs).
    ``algorithm``: a SentencePiece unigram model in XLM-R's layout, or a cased WordPiece
    vocabulary in BERT's (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ``[MASK]``); default the
    encoder's (:attr:`Encoder.tokenizer_algorithm`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    vocab_size: int = Field(8000, ge=100)
    sources: list[str] | None = Field(None, description="data source names to train on (default: all)")
    max_sentences: int = Field(200_000, gt=0)
    character_coverage: float = Field(0.9995, gt=0, le=1, description=(
        "the share of the text's characters the vocabulary must cover (SentencePiece's "
        "character_coverage; for wordpiece: the alphabet kept)"))
    algorithm: Literal["unigram", "wordpiece"] | None = Field(
        None, description="unigram (SentencePiece, XLM-R layout) or wordpiece (BERT layout); default: the encoder's")


class EncoderKeys(BaseModel):
    """The ``[model]`` keys every encoder shares and the core reads, declared once: the base of
    :class:`EncoderConfig` and of the recipe schema's ``[model]`` table."""

    model_config = ConfigDict(allow_inf_nan=False)

    encoder: str = Field("xlmr", description="encoder plugin name")
    init: str | None = Field(None, description="HF hub id or local directory to continue training from")
    dropout: float | None = Field(None, ge=0, lt=1, description="hidden and attention dropout (None: keep)")
    max_length: int = Field(128, ge=8, description="tokens per sequence (incl. special tokens)")
    tokenizer: str | TokenizerTraining | None = Field(
        None, description="HF id/dir, or a table to train one; default: the init checkpoint's"
    )


class EncoderConfig(PluginConfig, EncoderKeys):
    """Base of every encoder plugin's ``Config``, which validates the whole ``[model]`` table:
    the generic keys of :class:`EncoderKeys`, read by the core, plus the encoder's own
    (architecture, presets). (API 1.2)"""

    @model_validator(mode="after")
    def _fresh_model_needs_tokenizer(self) -> EncoderConfig:
        if self.init is None and self.tokenizer is None:
            raise ValueError("a fresh model needs model.tokenizer (a path, or a table to train one)")
        return self


@dataclass(frozen=True)
class EncoderRunOptions:
    """The run options an encoder honours, declared (API 1.6): objkit passes them to
    :meth:`Encoder.build` in :attr:`EncoderContext.options`, the encoder keeps what it honours in
    :attr:`Encoder.run_options`, and the memory methods of docs/guides/memory.md read them there.

    * ``activation_checkpointing``: the objective instances whose encoder passes recompute their
      activations in the backward pass (``train.activation_checkpointing``; empty: none). Needs
      ``set_activation_checkpointing(enabled)``.
    * ``lm_head_chunk_rows``: :func:`objkit.lm_head_loss` computes the head in chunks of this many
      rows, recomputed in the backward (``train.lm_head_chunk_rows``; 0: one piece).
    * ``lm_head_grad_in_place``: :func:`objkit.lm_head_loss` (chunked, or in one piece) adds the
      decoder weight's gradient straight into its ``.grad`` (one process and DDP; not FSDP2).
    * ``embedding_grad_in_place``: the encoder's ``nn.Embedding`` lookups add their gradient rows
      straight into ``.grad`` (:class:`objkit.train.memory.GradIntoEmbedding`; one process only).
    * ``compile``: ``torch.compile`` the transformer blocks (``train.compile``). Needs
      ``compile_blocks(**options)``.
    * ``packed_attention``: the kernel :meth:`Encoder.forward_documents` runs packed rows with
      (``train.packed_attention``): ``mask`` (a block-diagonal mask through SDPA, any device),
      ``varlen`` (a variable-length kernel, e.g. FlashAttention-2's, on CUDA) or ``auto`` (the
      encoder picks; it keeps ``mask`` or ``varlen`` here). Only read for packed rows (an objective's
      ``packing = "documents"``).
    * ``precision``: the autocast precision the step runs the encoder under (``fp32``, ``bf16``,
      ``fp16``; resolved for the device). The step applies it; an encoder may read it (e.g. to pick
      an attention kernel) but need not do anything.

    An encoder that cannot honour ``lm_head_grad_in_place`` or ``embedding_grad_in_place`` keeps a
    copy with them off (``dataclasses.replace``): they only save memory, the results are the same."""

    activation_checkpointing: frozenset[str] = frozenset()
    lm_head_chunk_rows: int = 0
    lm_head_grad_in_place: bool = False
    embedding_grad_in_place: bool = False
    compile: bool = False
    precision: str = "fp32"
    packed_attention: str = "auto"


@dataclass(frozen=True)
class EncoderContext:
    """What :meth:`Encoder.build` gets beside its config. (API 1.2)

    ``vocab_size``: ids of the run's tokenizer (None in a dry run without it: use the init
    checkpoint's or the encoder's default). ``load_weights=False`` (``--dry-run``, under
    ``torch.device("meta")``): build the architecture only, without touching the network.
    ``options`` (API 1.6): the run options the encoder is to honour (:class:`EncoderRunOptions`)."""

    vocab_size: int | None = None
    load_weights: bool = True
    options: EncoderRunOptions = field(default_factory=EncoderRunOptions)
