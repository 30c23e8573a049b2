"""The built-in encoders: transformers masked LMs (``*ForMaskedLM``: body + LM head), SDPA attention.

:class:`MaskedLMEncoder` is what every BERT-layout masked LM of transformers shares (a body with
``embeddings`` and ``encoder.layer`` blocks, an LM head); :class:`XLMREncoder` (``xlmr``, the
default) is XLM-R (Conneau et al., 2020) on it; the ``bert`` encoder (mBERT, Devlin et al.,
2019) is in :mod:`objkit.bert`. Nothing outside these modules knows a body's layout: objectives
and evaluators use the :class:`~objkit.interfaces.Encoder` interface.

The LM head is applied to gathered positions only (``lm_logits(hidden[masked])``): with
XLM-R's 250,002-token vocabulary, full ``[batch, length, vocab]`` logits would be most of
the step's compute and memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel, XLMRobertaConfig, XLMRobertaForMaskedLM
from transformers.activations import gelu

from objkit.errors import UserError
from objkit.hookspecs import PLUGIN_API_VERSION, hookimpl
from objkit.hub import hub_unreachable_reason, offline_unless_reachable
from objkit.interfaces import Encoder, EncoderConfig, EncoderContext, MomentumCopy
from objkit.momentum import make_momentum_copy
from objkit.tokenizer import model_max_tokens

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 512},
    "small": {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096},
}
XLMR_VOCAB_SIZE = 250_002


class PresetEncoderConfig(EncoderConfig):
    """``[model]`` of a transformers encoder: the generic keys plus a preset and/or explicit dims."""

    preset: Literal["tiny", "small", "base", "large"] | None = Field(
        None, description="architecture for from-scratch runs (or for --dry-run without the checkpoint)"
    )
    num_layers: int | None = Field(None, gt=0)
    hidden_size: int | None = Field(None, gt=0)
    num_heads: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _init_or_architecture(self) -> PresetEncoderConfig:
        if self.init is None and self.preset is None and self.hidden_size is None:
            raise ValueError("give model.init (checkpoint) or model.preset / explicit dims for a fresh model")
        return self


# Kept under its old name: ``objkit.schema.ModelConfig`` is now the core's generic part.
XLMRConfig = PresetEncoderConfig


def preset_dims(config: PresetEncoderConfig) -> dict[str, int]:
    """Layers, hidden size, heads and FFN size from the preset (default ``base``) and explicit keys."""
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
    return dims


def dropout_of(config: EncoderConfig) -> dict[str, float]:
    """The transformers config keys ``model.dropout`` sets (nothing when it is not given)."""
    if config.dropout is None:
        return {}
    return {"hidden_dropout_prob": config.dropout, "attention_probs_dropout_prob": config.dropout}


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


class MaskedLMEncoder(Encoder):
    """A transformers ``*ForMaskedLM`` with a BERT-layout body (``embeddings``, ``encoder.layer``).

    Subclasses name the transformers class (``model_class``), its LM head (:meth:`head`) and a
    fresh architecture (:meth:`fresh_config`); the rest -- truncated forward passes, momentum
    copies, FSDP units, token-type growth, export -- is common."""

    model_class: ClassVar[type[PreTrainedModel]]
    default_vocab_size: ClassVar[int] = XLMR_VOCAB_SIZE

    def __init__(self, mlm: PreTrainedModel) -> None:
        nn.Module.__init__(self)
        self.mlm = mlm
        cfg = mlm.config
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.vocab_size = cfg.vocab_size
        self.lm_head_chunk_rows = 0  # objkit.lm_head_loss: LM-head rows per chunk (0: one piece)
        self.lm_head_grad_in_place = False  # objkit.lm_head_loss: decoder gradient straight into .grad
        self._checkpointing_ready = False
        self._compile_options: dict[str, Any] | None = None
        self.intermediate_size = cfg.intermediate_size
        self.first_position_id, self.pad_position_id = self.position_layout(cfg)
        self.max_tokens = model_max_tokens(cfg)

    # ------------------------------------------------------------------ what subclasses say
    @classmethod
    def fresh_config(cls, config: Any, vocab_size: int) -> PretrainedConfig:
        """The transformers config of a fresh model (preset/dims; dry runs without the checkpoint)."""
        raise NotImplementedError

    @staticmethod
    def position_layout(hf_config: PretrainedConfig) -> tuple[int, int]:
        """(position id of the first token, position id of padding). Default: BERT's (0, 0)."""
        return 0, 0

    def head(self) -> nn.Module:
        """The LM head: ``[N, d] -> [N, vocab]``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, config: Any, ctx: EncoderContext | None = None) -> MaskedLMEncoder:
        """From ``config.init`` (hub id or directory) or fresh from the preset/dims.

        ``ctx.load_weights=False`` builds the init checkpoint's architecture without weights, from
        its ``config.json`` if that is local (a directory or the HF cache; the network is not
        used), else from the recipe's preset/dims (``--dry-run``).
        """
        ctx = ctx or EncoderContext()
        vocab_size = ctx.vocab_size or cls.default_vocab_size
        if config.init is not None and ctx.load_weights:
            offline = offline_unless_reachable(config.init)
            try:
                mlm = cls.model_class.from_pretrained(
                    config.init, attn_implementation="sdpa", local_files_only=offline, **dropout_of(config)
                )
            except OSError as exc:
                why = hub_unreachable_reason() if offline and not Path(config.init).is_dir() else None
                reason = f"not a local directory nor in the HF cache, and {why}" if why else str(exc).splitlines()[0]
                raise UserError(
                    f"model.init: cannot load {config.init!r} ({reason}); give a hub id "
                    "that is reachable or a local directory holding config.json and the weights "
                    "(e.g. --set model.init=/path/to/checkpoint)"
                ) from None
            return cls(mlm)
        hf_config = None
        if config.init is not None:
            try:
                hf_config = AutoConfig.from_pretrained(config.init, local_files_only=True)
            except (OSError, ValueError):
                hf_config = None
        if hf_config is None:
            hf_config = cls.fresh_config(config, vocab_size)
        return cls.from_hf_config(hf_config)

    @classmethod
    def from_hf_config(cls, hf_config: PretrainedConfig) -> MaskedLMEncoder:
        hf_config._attn_implementation = "sdpa"
        return cls(cls.model_class(hf_config))

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
        return run_body(self.body(), input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head()(hidden)

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

    def momentum_copy(self, depth: int | None = None) -> MomentumCopy:
        body = self.copy_body(depth)
        return MomentumCopy(body, self.run_copy, units=list(blocks_of(body)))  # compiled with train.compile

    def shard_units(self) -> list[nn.Module]:
        return list(blocks_of(self.body()))

    def resize_token_types(self, count: int) -> None:
        embeddings = self.body().embeddings
        table = embeddings.token_type_embeddings
        if table.num_embeddings >= count:
            return
        grown = nn.Embedding(count, table.embedding_dim, device=table.weight.device, dtype=table.weight.dtype)
        nn.init.normal_(grown.weight, std=0.02)
        with torch.no_grad():
            grown.weight[: table.num_embeddings] = table.weight
        embeddings.token_type_embeddings = grown
        self.mlm.config.type_vocab_size = count

    def resize_vocab(self, row_sources: Sequence[Sequence[int]]) -> None:
        """transformers' ``resize_token_embeddings`` (which keeps the decoder tied to the word
        embeddings and grows the LM-head bias, updating ``config.vocab_size``), then every row --
        word embedding, untied decoder row, bias -- set to the mean of its sources' old rows."""
        inputs, outputs = self.mlm.get_input_embeddings(), self.mlm.get_output_embeddings()
        tied = outputs.weight is inputs.weight
        old = {"embeddings": inputs.weight.detach().clone()}
        if not tied:
            old["decoder"] = outputs.weight.detach().clone()
        if getattr(outputs, "bias", None) is not None:
            old["bias"] = outputs.bias.detach().clone()
        self.mlm.resize_token_embeddings(len(row_sources), mean_resizing=False)
        inputs, outputs = self.mlm.get_input_embeddings(), self.mlm.get_output_embeddings()
        new = {"embeddings": inputs.weight, "decoder": outputs.weight, "bias": getattr(outputs, "bias", None)}
        with torch.no_grad():
            for name, table in old.items():
                new[name].copy_(mean_of_rows(table, row_sources))
        for module in self.mlm.modules():  # an untied head keeps a `bias` beside its decoder's (`lm_head.bias`)
            decoder, bias = getattr(module, "decoder", None), getattr(module, "bias", None)
            if isinstance(decoder, nn.Linear) and isinstance(bias, nn.Parameter) and decoder.bias is not None \
                    and bias.shape != decoder.bias.shape:
                module.bias = nn.Parameter(decoder.bias.detach().clone())
        self.vocab_size = len(row_sources)

    def save_pretrained(self, path: str | Path) -> None:
        """Write the body (``AutoModel``) and LM head (``AutoModelForMaskedLM``) in HF format."""
        self.mlm.save_pretrained(str(path), safe_serialization=True)


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


def mean_of_rows(table: torch.Tensor, row_sources: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[len(row_sources), *table.shape[1:]]``: row ``i`` the mean of ``table``'s rows
    ``row_sources[i]`` (exactly the row for one source), the mean of all rows for none. One
    sparse averaging matrix times the table: fast at XLM-R's 250,002 rows."""
    lengths = torch.tensor([len(ids) for ids in row_sources], dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(row_sources)), lengths)
    cols = torch.tensor([i for ids in row_sources for i in ids], dtype=torch.long)
    weights = (1.0 / lengths.clamp(min=1).float())[rows]
    flat = table.reshape(table.shape[0], -1).float()
    averaging = torch.sparse_coo_tensor(torch.stack([rows, cols]), weights, (len(row_sources), table.shape[0]),
                                        check_invariants=True)
    out = torch.sparse.mm(averaging, flat)
    out[lengths == 0] = flat.mean(dim=0)
    return out.reshape(len(row_sources), *table.shape[1:]).to(table.dtype)


def blocks_of(body: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT-layout body (``body.encoder.layer``)."""
    return body.encoder.layer


def _compile_layers(body: nn.Module, options: dict[str, Any]) -> None:
    """Replace each block's ``forward`` by its ``torch.compile``d version, once per block."""
    for layer in blocks_of(body):
        if not getattr(layer, "_objkit_compiled", False):
            layer.forward = torch.compile(layer.forward, **options)
            layer._objkit_compiled = True


@contextlib.contextmanager
def truncated_layers(body: nn.Module, up_to_layer: int) -> Iterator[None]:
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


def _install_capture_hooks(body: nn.Module) -> None:
    """transformers 5 collects hidden states with hooks installed on the blocks present at the
    first call; install them on all blocks before any truncated call (no-op on 4.x)."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    maybe_install_capturing_hooks(body)


def pairwise_mask(body: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """A ``[B, Lq, Lk]`` mask as the 4-D mask transformers 5 passes to attention unchanged:
    boolean ``[B, 1, Lq, Lk]`` (True = attend) for SDPA, additive float for eager attention."""
    allowed = attention_mask.bool()[:, None]
    if getattr(body.config, "_attn_implementation", "sdpa") == "eager":
        dtype = next(body.parameters()).dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def run_body(
    body: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    up_to_layer: int | None = None,
    position_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Hidden states ``[h_0 .. h_L]`` of a BERT-layout body, running only ``L`` blocks.

    ``attention_mask`` is ``[B, L]`` (1 = a real token) or (API 1.5) ``[B, L, L]`` (query row
    ``q`` may attend key ``k`` where nonzero), passed on as transformers' prepared 4-D mask."""
    depth = len(body.encoder.layer) if up_to_layer is None else up_to_layer
    if attention_mask.dim() == 3:
        attention_mask = pairwise_mask(body, attention_mask)
    if depth == 0:  # no block runs, so no hidden states are captured: the embeddings alone
        return [body.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)]
    kwargs = {"position_ids": position_ids, "token_type_ids": token_type_ids}
    with truncated_layers(body, depth):
        out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    return list(out.hidden_states)


@hookimpl
def objkit_plugins() -> list[type]:
    return [XLMREncoder]
