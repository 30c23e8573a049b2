"""The default encoder: transformers' XLM-R (``XLMRobertaModel`` + LM head), SDPA attention.

The LM head is applied to gathered positions only (``lm_logits(hidden[masked])``): with
XLM-R's 250,002-token vocabulary, full ``[batch, length, vocab]`` logits would be most of
the step's compute and memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

from objkit.errors import UserError
from objkit.hookspecs import PLUGIN_API_VERSION, hookimpl
from objkit.hub import hub_unreachable_reason, offline_unless_reachable
from objkit.interfaces import Encoder
from objkit.momentum import make_momentum_copy
from objkit.recipe import ModelConfig

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 512},
    "small": {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096},
}
XLMR_VOCAB_SIZE = 250_002


def architecture(config: ModelConfig, vocab_size: int, pad_token_id: int = 1) -> XLMRobertaConfig:
    """An XLM-R config from a preset and/or explicit dims (for fresh models and dry runs)."""
    dims = dict(PRESETS[config.preset or "base"])
    explicit = {
        "num_hidden_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
    }
    dims.update({k: v for k, v in explicit.items() if v is not None})
    if dims["hidden_size"] % dims["num_attention_heads"]:
        raise UserError(
            f"model: hidden_size {dims['hidden_size']} is not divisible by num_heads {dims['num_attention_heads']}"
        )
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
        **dims,
    )


class XLMREncoder(Encoder):
    """XLM-R body + LM head. ``forward`` returns hidden states ``[h_0 .. h_L]``."""

    name: ClassVar[str] = "xlmr"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, mlm: XLMRobertaForMaskedLM) -> None:
        nn.Module.__init__(self)
        self.mlm = mlm
        cfg = mlm.config
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.vocab_size = cfg.vocab_size
        self.lm_head_chunk_rows = 0  # objkit.lm_head_loss: LM-head rows per chunk (0: one piece)
        self._checkpointing_ready = False
        self._compile_options: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: ModelConfig, vocab_size: int | None = None, load_weights: bool = True) -> XLMREncoder:
        """From ``config.init`` (hub id or directory) or fresh from the preset/dims.

        ``load_weights=False`` builds the init checkpoint's architecture without weights, from
        its ``config.json`` if that is local (a directory or the HF cache; the network is not
        used), else from the recipe's preset/dims (``--dry-run``).
        """
        if config.init is not None and load_weights:
            overrides = {}
            if config.dropout is not None:
                overrides = {"hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout}
            offline = offline_unless_reachable(config.init)
            try:
                mlm = XLMRobertaForMaskedLM.from_pretrained(
                    config.init, attn_implementation="sdpa", local_files_only=offline, **overrides
                )
            except OSError as exc:
                why = hub_unreachable_reason() if offline and not Path(config.init).is_dir() else None
                reason = f"not a local directory nor in the HF cache, and {why}" if why else str(exc).splitlines()[0]
                raise UserError(
                    f"model.init: cannot load {config.init!r} ({reason}); give a hub id "
                    "that is reachable or a local directory holding config.json and the weights "
                    "(e.g. --set model.init=/path/to/xlm-roberta-base)"
                ) from None
            return cls(mlm)
        if config.init is not None:
            try:
                hf_config = AutoConfig.from_pretrained(config.init, local_files_only=True)
            except (OSError, ValueError):
                hf_config = architecture(config, vocab_size or XLMR_VOCAB_SIZE)
        else:
            hf_config = architecture(config, vocab_size or XLMR_VOCAB_SIZE)
        hf_config._attn_implementation = "sdpa"
        return cls(XLMRobertaForMaskedLM(hf_config))

    @classmethod
    def from_hf_config(cls, hf_config: XLMRobertaConfig) -> XLMREncoder:
        hf_config._attn_implementation = "sdpa"
        return cls(XLMRobertaForMaskedLM(hf_config))

    # ------------------------------------------------------------------ Encoder API
    def body(self) -> XLMRobertaModel:
        return self.mlm.roberta

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return run_body(self.body(), input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm.lm_head(hidden)

    def copy_body(self, up_to_layer: int | None = None) -> nn.Module:
        """A frozen fp32 copy of the body keeping only its first ``up_to_layer`` blocks."""
        body = self.body()
        if up_to_layer is None:
            return make_momentum_copy(body)
        with truncated_layers(body, up_to_layer):
            return make_momentum_copy(body)

    def run_copy(
        self,
        body: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        if self._compile_options is not None:
            _compile_layers(body, self._compile_options)
        return run_body(body, input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)

    # ------------------------------------------------------------------ memory and speed
    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each transformer block's activations in the backward pass instead of keeping
        them (``train.activation_checkpointing``): transformers' own activation checkpointing of
        the blocks, through ``torch.utils.checkpoint`` with ``use_reentrant=False``. Only forwards
        that record gradients in training mode checkpoint; momentum copies (taken before, run under
        ``no_grad``) never do. Cheap to toggle between objectives; weights, ``state_dict`` and the
        export are unchanged."""
        if enabled and not self._checkpointing_ready:
            kwargs = {"use_reentrant": False}
            enable = getattr(self.mlm, "activation_checkpointing_enable", None)  # transformers >= 5.2x
            if enable is not None:
                enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.mlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            self._checkpointing_ready = True
        for module in self.body().modules():  # the blocks (and, in transformers 4, the block stack)
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enabled and self._checkpointing_ready

    def compile_blocks(self, **options: Any) -> None:
        """``torch.compile`` the ``forward`` of every transformer block (``train.compile``); the
        blocks of momentum copies are compiled on their first :meth:`run_copy`. The modules, their
        parameter names and the export are unchanged (no ``_orig_mod.`` prefix)."""
        self._compile_options = dict(options)
        _compile_layers(self.body(), self._compile_options)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the body (``AutoModel``) and LM head (``AutoModelForMaskedLM``) in HF format."""
        self.mlm.save_pretrained(str(path), safe_serialization=True)


def _compile_layers(body: nn.Module, options: dict[str, Any]) -> None:
    """Replace each block's ``forward`` by its ``torch.compile``d version, once per block."""
    for layer in body.encoder.layer:
        if not getattr(layer, "_objkit_compiled", False):
            layer.forward = torch.compile(layer.forward, **options)
            layer._objkit_compiled = True


@contextlib.contextmanager
def truncated_layers(body: XLMRobertaModel, up_to_layer: int) -> Iterator[None]:
    """Temporarily keep only the first ``up_to_layer`` transformer blocks (shared, not copied)."""
    layers = body.encoder.layer
    _install_capture_hooks(body)
    if not 0 <= up_to_layer <= len(layers):
        raise ValueError(f"up_to_layer must be in [0, {len(layers)}] (got {up_to_layer})")
    body.encoder.layer = layers[:up_to_layer]
    try:
        yield
    finally:
        body.encoder.layer = layers


def _install_capture_hooks(body: XLMRobertaModel) -> None:
    """transformers 5 collects hidden states with hooks installed on the blocks present at the
    first call; install them on all blocks before any truncated call (no-op on 4.x)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(body)


def run_body(
    body: XLMRobertaModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    up_to_layer: int | None = None,
    position_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Hidden states ``[h_0 .. h_L]`` of an XLM-R body, running only ``L`` blocks."""
    depth = len(body.encoder.layer) if up_to_layer is None else up_to_layer
    if depth == 0:  # no block runs, so no hidden states are captured: the embeddings alone
        return [body.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)]
    kwargs = {"position_ids": position_ids, "token_type_ids": token_type_ids}
    with truncated_layers(body, depth):
        out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    return list(out.hidden_states)


@hookimpl
def objkit_plugins() -> list[type]:
    return [XLMREncoder]
