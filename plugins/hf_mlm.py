"""The ``hf_mlm`` encoder: any transformers masked LM (``AutoModelForMaskedLM``) whose base model
is a stack of transformer blocks -- BERT, RoBERTa / XLM-R, DistilBERT, ELECTRA's generator, ...

Not a paper's method but an adapter: it implements the :class:`objkit.Encoder` contract for a
model objkit has no dedicated encoder for, by discovering what it needs through transformers'
public API instead of per-family internals:

* the body is ``model.base_model``; its blocks are the one ``nn.ModuleList`` in it that holds
  ``config.num_hidden_layers`` distinct modules (a truncated pass runs the body with that list
  cut to its first ``L`` blocks, and reads ``output_hidden_states``);
* the LM head is the masked LM's own ``forward`` with the body's output replaced by the given
  hidden vectors, so ``lm_logits(h)`` is exactly the family's head (BERT's ``cls``, RoBERTa's
  ``lm_head``, DistilBERT's ``vocab_*`` layers, ELECTRA's generator head), on ``[N, d]`` rows only;
* positions start at ``padding_idx + 1`` when the position table (the ``nn.Embedding`` with
  ``config.max_position_embeddings`` rows) has a ``padding_idx`` (fairseq's layout, RoBERTa /
  XLM-R), else at 0; the token-type table is the ``nn.Embedding`` with ``config.type_vocab_size``
  rows, and token types are passed only to bodies whose ``forward`` takes ``token_type_ids``.

Departures from the dedicated encoders (``xlmr``, ``bert``): no ``train.compile`` (no
``compile_blocks``); a fresh model is ``AutoConfig.for_model(family, **hf_config)`` (the family's
own defaults and key names) rather than objkit's presets. A family that does not fit (ALBERT's
shared blocks, a body without a block list, a model without an LM head) is refused in one line.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import nn

from objkit import (
    PLUGIN_API_VERSION,
    Encoder,
    EncoderConfig,
    EncoderContext,
    MomentumCopy,
    UserError,
    find_block_list,
    hookimpl,
    make_momentum_copy,
    truncated_blocks,
)

DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")
"""Config keys ``model.dropout`` sets where the family's config has them (BERT's names, DistilBERT's)."""


class HFMaskedLMConfig(EncoderConfig):
    """``[model]`` with ``encoder = "hf_mlm"``: ``init`` (hub id or directory of any masked LM),
    or ``family`` (a transformers model type) for a fresh model; ``hf_config`` overrides config keys."""

    encoder: str = "hf_mlm"
    family: str | None = Field(
        None, description="transformers model type of a fresh model (AutoConfig.for_model): bert, xlm-roberta, "
                          "distilbert, electra, ...")
    hf_config: dict[str, Any] = Field(
        default_factory=dict, description="transformers config keys in the family's own names (num_hidden_layers, "
                                          "hidden_size, ...; DistilBERT: n_layers, dim, hidden_dim)")

    @model_validator(mode="after")
    def _init_or_family(self) -> HFMaskedLMConfig:
        from transformers import CONFIG_MAPPING

        if self.init is None and self.family is None:
            raise ValueError("give model.init (a masked LM's hub id or directory) or model.family (a transformers "
                             "model type, e.g. \"bert\") for a fresh model")
        if self.family is not None and self.family not in CONFIG_MAPPING:
            raise ValueError(f"model.family: {self.family!r} is not a transformers model type (e.g. bert, xlm-roberta, "
                             "distilbert, electra)")
        return self


def _hf_config(config: HFMaskedLMConfig, vocab_size: int | None, *, local_only: bool) -> Any:
    """The transformers config: the init checkpoint's or ``family``'s, then ``hf_config`` and dropout."""
    from transformers import AutoConfig

    if config.init is not None:
        try:
            hf = AutoConfig.from_pretrained(config.init, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            if config.family is None:
                raise UserError(f"model.init: cannot read the config of {config.init!r} ({str(exc).splitlines()[0]}); "
                                "give a local directory holding config.json or a reachable hub id") from None
            hf = None
        if hf is not None:
            for key, value in config.hf_config.items():
                setattr(hf, key, value)
            _set_dropout(hf, config.dropout)
            return hf
    fresh: dict[str, Any] = {"max_position_embeddings": config.max_length + 2}  # room for fairseq's offset
    if vocab_size is not None:
        fresh["vocab_size"] = vocab_size
    try:
        hf = AutoConfig.for_model(config.family, **{**fresh, **config.hf_config})
    except (TypeError, ValueError) as exc:
        raise UserError(f"model.hf_config: {str(exc).splitlines()[0]}") from None
    _set_dropout(hf, config.dropout)
    return hf


def _set_dropout(hf: Any, dropout: float | None) -> None:
    if dropout is not None:
        for key in DROPOUT_KEYS:
            if hasattr(hf, key):
                setattr(hf, key, dropout)


def _block_list_path(body: nn.Module, count: int) -> str:
    """Where ``body`` keeps its ``count`` transformer blocks (:func:`objkit.find_block_list`)."""
    try:
        return find_block_list(body, count)
    except ValueError as exc:
        raise UserError(f"model.encoder: hf_mlm cannot truncate {type(body).__name__}: {exc}") from None


def _embedding_with_rows(body: nn.Module, rows: Any,
                         skip: tuple[nn.Module, ...] = ()) -> tuple[str, nn.Embedding] | None:
    """The first ``nn.Embedding`` of ``body`` with ``rows`` rows (not one of ``skip``), by path."""
    if not isinstance(rows, int):
        return None
    for name, module in body.named_modules():
        if isinstance(module, nn.Embedding) and module.num_embeddings == rows and not any(module is s for s in skip):
            return name, module
    return None


class HFMaskedLMEncoder(Encoder):
    """Any ``AutoModelForMaskedLM`` with a list of transformer blocks. ``forward`` returns ``[h_0 .. h_L]``."""

    name: ClassVar[str] = "hf_mlm"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[HFMaskedLMConfig]] = HFMaskedLMConfig

    def __init__(self, mlm: nn.Module) -> None:
        nn.Module.__init__(self)
        self.mlm = mlm
        cfg = mlm.config
        body = mlm.base_model
        if body is mlm or mlm.get_output_embeddings() is None:
            raise UserError(f"model.encoder: hf_mlm needs a masked LM with a base model and an LM head; "
                            f"{type(mlm).__name__} has no {'base model' if body is mlm else 'output embeddings'}")
        self.num_layers = int(cfg.num_hidden_layers)
        self.blocks_path = _block_list_path(body, self.num_layers)
        self.hidden_size = int(cfg.hidden_size)
        self.num_heads = int(getattr(cfg, "num_attention_heads", 0) or 0)
        self.vocab_size = int(cfg.vocab_size)
        words = body.get_input_embeddings()
        positions = _embedding_with_rows(body, getattr(cfg, "max_position_embeddings", None), (words,))
        pad = positions[1].padding_idx if positions is not None else None
        self.first_position_id, self.pad_position_id = (pad + 1, pad) if pad is not None else (0, 0)
        if positions is not None:
            self.max_tokens = positions[1].num_embeddings - self.first_position_id
        self.takes_token_types = "token_type_ids" in inspect.signature(body.forward).parameters
        self.takes_positions = "position_ids" in inspect.signature(body.forward).parameters

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: HFMaskedLMConfig, ctx: EncoderContext | None = None) -> HFMaskedLMEncoder:
        """From ``config.init`` (weights) or fresh from ``config.family``; ``ctx.load_weights=False``
        (``--dry-run``, meta device) builds the architecture from the local config only. Keeps
        ``ctx.options`` (it honours them all but ``compile``, which the run then refuses in one line)."""
        from transformers import AutoModelForMaskedLM

        ctx = ctx or EncoderContext()
        hf = _hf_config(config, ctx.vocab_size, local_only=not ctx.load_weights)
        try:
            if config.init is not None and ctx.load_weights:
                mlm = AutoModelForMaskedLM.from_pretrained(config.init, config=hf)
            else:
                mlm = AutoModelForMaskedLM.from_config(hf)
        except OSError as exc:
            raise UserError(f"model.init: cannot load {config.init!r} ({str(exc).splitlines()[0]}); give a reachable "
                            "hub id or a local directory holding config.json and the weights") from None
        except ValueError as exc:  # a config class without a masked-LM model
            raise UserError(f"model.encoder: hf_mlm: {type(hf).__name__} has no AutoModelForMaskedLM class "
                            f"({str(exc).splitlines()[0][:120]})") from None
        encoder = cls(mlm)
        encoder.run_options = ctx.options
        return encoder

    # ------------------------------------------------------------------ Encoder API
    def body(self) -> nn.Module:
        return self.mlm.base_model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return self.run_copy(self.body(), input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)

    def run_copy(
        self,
        body: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states ``[h_0 .. h_L]`` of ``body`` (this encoder's or a copy of it), running ``L`` blocks."""
        depth = len(self._blocks(body)) if up_to_layer is None else up_to_layer
        if attention_mask.dim() != 2:  # API 1.5's [B, L, L] masks: each family reads masks its own way
            raise UserError("model.encoder: hf_mlm takes only a [batch, length] padding mask; a pairwise "
                            "attention mask (camlm, btmlm, packing = \"documents\") needs the xlmr or bert encoder")
        kwargs: dict[str, torch.Tensor] = {}
        if position_ids is not None:
            if not self.takes_positions:
                raise UserError(f"model.encoder: hf_mlm: {type(body).__name__} takes no position_ids")
            kwargs["position_ids"] = position_ids
        if token_type_ids is not None:
            if not self.takes_token_types:
                raise UserError(f"model.encoder: hf_mlm: {type(body).__name__} has no token types")
            kwargs["token_type_ids"] = token_type_ids
        with truncated_blocks(body, depth, self.blocks_path):
            out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                       return_dict=True, **kwargs)
        if depth == 0:  # no block ran: the embeddings' output passed through
            return [out.last_hidden_state]
        return list(out.hidden_states)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The family's own LM head on ``[N, d]`` rows: the masked LM's ``forward`` with its base
        model's output replaced by ``hidden`` (as one sequence of ``N`` positions)."""
        from transformers.modeling_outputs import BaseModelOutput

        rows = hidden.unsqueeze(0)
        body = self.body()
        body.forward = lambda *args, **kwargs: BaseModelOutput(last_hidden_state=rows)  # shadows the class's
        try:
            ids = torch.zeros(rows.shape[:2], dtype=torch.long, device=hidden.device)
            logits = self.mlm(input_ids=ids, return_dict=True).logits
        finally:
            del body.forward
        return logits[0]

    def copy_body(self, up_to_layer: int | None = None) -> nn.Module:
        """A frozen fp32 copy of the body keeping only its first ``up_to_layer`` blocks."""
        body = self.body()
        if up_to_layer is None:
            return make_momentum_copy(body)
        with truncated_blocks(body, up_to_layer, self.blocks_path):
            return make_momentum_copy(body)

    def momentum_copy(self, depth: int | None = None) -> MomentumCopy:
        body = self.copy_body(depth)
        return MomentumCopy(body, self.run_copy, units=list(self._blocks(body)))

    def shard_units(self) -> list[nn.Module]:
        return list(self._blocks(self.body()))

    def resize_token_types(self, count: int) -> None:
        body, cfg = self.body(), self.mlm.config
        found = _embedding_with_rows(body, getattr(cfg, "type_vocab_size", None) if self.takes_token_types else None,
                                     (body.get_input_embeddings(),))
        if found is None:
            raise UserError(f"model.encoder: hf_mlm: {type(body).__name__} has no token-type table "
                            f"to grow to {count} types")
        path, table = found
        if table.num_embeddings >= count:
            return
        grown = nn.Embedding(count, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
        nn.init.normal_(grown.weight, std=getattr(cfg, "initializer_range", 0.02))
        with torch.no_grad():
            grown.weight[: table.num_embeddings] = table.weight
        parent, _, attr = path.rpartition(".")
        setattr(body.get_submodule(parent), attr, grown)
        cfg.type_vocab_size = count

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """transformers' own gradient checkpointing of the blocks (``use_reentrant=False``)."""
        if not getattr(self.mlm, "supports_gradient_checkpointing", False):
            raise UserError(f"train.activation_checkpointing: {type(self.mlm).__name__} does not support it; "
                            "set it to false")
        kwargs = {"use_reentrant": False}
        if hasattr(self.mlm, "activation_checkpointing_enable"):  # transformers >= 5.2x names it so
            if enabled:
                self.mlm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.mlm.activation_checkpointing_disable()
        elif enabled:
            self.mlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.mlm.gradient_checkpointing_disable()

    def save_pretrained(self, path: Any) -> None:
        """Write the masked LM in HF format (``AutoModel`` / ``AutoModelForMaskedLM``), safetensors."""
        self.mlm.save_pretrained(str(path), safe_serialization=True)

    # ------------------------------------------------------------------ blocks
    def _blocks(self, body: nn.Module) -> nn.ModuleList:
        return body.get_submodule(self.blocks_path)


@hookimpl
def objkit_plugins() -> list[type]:
    return [HFMaskedLMEncoder]
