"""Building blocks for encoder plugins on transformers masked LMs (public: exported from ``objkit``).

Nothing here knows a model family. The ``xlmr`` (XLM-R) and ``bert`` (mBERT) encoders are plugins
(``plugins/xlmr.py``, ``plugins/bert.py``, registered through the ``objkit`` entry points like any
third party's) written on these blocks:

* :class:`MaskedLMEncoder`: the :class:`~objkit.contract.interfaces.Encoder` contract for a transformers
  ``*ForMaskedLM`` with a BERT-layout body (``embeddings``, ``encoder.layer`` blocks): truncated
  passes, momentum copies, FSDP units, token-type growth, vocabulary resizing, activation
  checkpointing, compiled blocks and the export. A subclass names the transformers class, its LM
  head and a fresh architecture.
* :data:`PRESETS`, :class:`PresetEncoderConfig`, :func:`preset_dims`: the ``[model]`` presets
  (tiny/small/base/large) and explicit dims.
* The truncated run (:func:`find_block_list`, :func:`truncated_blocks`, :func:`run_truncated`):
  run a body's first ``k`` transformer blocks only (XLCO's passes, the evaluators' layer).

The LM head is applied to gathered positions only (``lm_logits(hidden[masked])``): with a
250,002-token vocabulary, full ``[batch, length, vocab]`` logits would be most of the step's
compute and memory.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel

from objkit.contract.errors import UserError
from objkit.blocks.hub import hub_unreachable_reason, offline_unless_reachable
from objkit.contract.interfaces import Encoder, EncoderConfig, EncoderContext, MomentumCopy
from objkit.blocks.momentum import make_momentum_copy
from objkit.blocks.packed import attention_implementation, document_lengths, flash_varlen_available
from objkit.contract.defaults import model_max_tokens

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"num_hidden_layers": 4, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 512},
    "small": {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 4, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16, "intermediate_size": 4096},
}
"""``model.preset``: transformers config dims (layers, hidden size, heads, FFN size) of the
XLM-R / BERT sizes (``base`` and ``large`` are XLM-R's and BERT's base and large)."""


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


class MaskedLMEncoder(Encoder):
    """A transformers ``*ForMaskedLM`` with a BERT-layout body (``embeddings``, ``encoder.layer``).
    (public, API 1.6)

    Subclasses name the transformers class (``model_class``), the vocabulary size of a fresh model
    built without the run's tokenizer (``default_vocab_size``), its LM head (:meth:`head`; and
    :meth:`lm_head_parts` for the fused chunked head) and a fresh architecture
    (:meth:`fresh_config`); the rest -- truncated forward passes, momentum copies, FSDP units,
    token-type growth, vocabulary resizing, activation checkpointing, compiled blocks, export -- is
    common. :meth:`build` keeps ``ctx.options`` in :attr:`run_options` (it honours them all)."""

    model_class: ClassVar[type[PreTrainedModel]]
    default_vocab_size: ClassVar[int]
    blocks_path: ClassVar[str] = "encoder.layer"
    """Where the body keeps its transformer blocks (an ``nn.ModuleList``)."""

    def __init__(self, mlm: PreTrainedModel) -> None:
        nn.Module.__init__(self)
        self.mlm = mlm
        cfg = mlm.config
        self.hidden_size = cfg.hidden_size
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.vocab_size = cfg.vocab_size
        self._checkpointing_ready = False
        self._varlen_kwargs: dict[str, Any] | None = None
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
        if ctx.options.packed_attention == "varlen" and ctx.load_weights and not flash_varlen_available(ctx.options):
            raise UserError("train.packed_attention: varlen needs CUDA, the flash-attn package (FlashAttention-2) and "
                            f"precision bf16 or fp16 (precision is {ctx.options.precision}); set it to \"auto\" "
                            "or \"mask\"")
        encoder = cls._build(config, ctx)
        encoder.run_options = ctx.options
        return encoder

    @classmethod
    def _build(cls, config: Any, ctx: EncoderContext) -> MaskedLMEncoder:
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
        if self._varlen_kwargs is not None:  # inside forward_documents' varlen call: one flattened row
            with attention_implementation(self.body(), "flash_attention_2"):
                return run_truncated(self.body(), input_ids, attention_mask, up_to_layer, position_ids,
                                     token_type_ids, path=self.blocks_path, **self._varlen_kwargs)
        return run_truncated(self.body(), input_ids, attention_mask, up_to_layer, position_ids, token_type_ids,
                             path=self.blocks_path)

    def forward_documents(
        self,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Packed rows (see :meth:`objkit.Encoder.forward_documents`). With ``train.packed_attention``
        ``varlen`` or ``auto`` on CUDA where FlashAttention-2 runs (:func:`flash_varlen_available`),
        the real tokens are flattened into one row and the blocks run transformers'
        ``flash_attention_2`` with the documents' ``cu_seq_lens`` (the padding-free path of
        ``DataCollatorWithFlattening``): no padded slot is computed and no mask is built; the hidden
        states are scattered back to ``[B, L, d]`` (zeros at padding). Elsewhere: the block-diagonal
        mask through SDPA. The varlen path is not exercised by objkit's CPU tests."""
        options = self.run_options
        if (options.packed_attention == "mask" or position_ids is None or not input_ids.is_cuda
                or not flash_varlen_available(options)):
            return super().forward_documents(input_ids, document_ids, up_to_layer, position_ids, token_type_ids)
        real = document_ids > 0
        lengths = document_lengths(document_ids)
        cu_seq_lens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        longest = int(lengths.max())  # one host sync per packed forward (flash-attn takes an int)
        self._varlen_kwargs = {"cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
                               "max_length_q": longest, "max_length_k": longest}
        flat_ids = input_ids[real][None]
        try:
            states = self(flat_ids, torch.ones_like(flat_ids), up_to_layer, position_ids[real][None],
                          None if token_type_ids is None else token_type_ids[real][None])
        finally:
            self._varlen_kwargs = None
        index = real.reshape(-1).nonzero().squeeze(1)
        rows, width = input_ids.shape
        return [h.new_zeros(rows * width, h.shape[-1]).index_copy(0, index, h[0]).view(rows, width, -1)
                for h in states]

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head()(hidden)

    def copy_body(self, up_to_layer: int | None = None) -> nn.Module:
        """A frozen fp32 copy of the body keeping only its first ``up_to_layer`` blocks."""
        body = self.body()
        if up_to_layer is None:
            return make_momentum_copy(body)
        with truncated_blocks(body, up_to_layer, self.blocks_path):
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
            _compile_layers(body.get_submodule(self.blocks_path), self._compile_options)
        return run_truncated(body, input_ids, attention_mask, up_to_layer, position_ids, token_type_ids,
                             path=self.blocks_path)

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
        _compile_layers(self.body().get_submodule(self.blocks_path), self._compile_options)

    def momentum_copy(self, depth: int | None = None) -> MomentumCopy:
        body = self.copy_body(depth)
        return MomentumCopy(body, self.run_copy, units=list(body.get_submodule(self.blocks_path)))  # compiled with train.compile

    def shard_units(self) -> list[nn.Module]:
        return list(self.body().get_submodule(self.blocks_path))

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


def _compile_layers(blocks: nn.ModuleList, options: dict[str, Any]) -> None:
    """Replace each block's ``forward`` by its ``torch.compile``d version, once per block."""
    for layer in blocks:
        if not getattr(layer, "_objkit_compiled", False):
            layer.forward = torch.compile(layer.forward, **options)
            layer._objkit_compiled = True


# ---------------------------------------------------------------------- the truncated run (public, API 1.6)
def find_block_list(body: nn.Module, count: int | None = None) -> str:
    """Where ``body`` keeps its transformer blocks: the path of the one ``nn.ModuleList`` in it
    holding ``count`` distinct modules (default ``body.config.num_hidden_layers``), found through
    the module tree, not a family's layout (BERT / XLM-R ``encoder.layer``, DistilBERT
    ``transformer.layer``, ELECTRA ``encoder.layer``). A ``ValueError`` saying what was found
    when there is not exactly one (ALBERT shares one block across its layers: none)."""
    if count is None:
        count = getattr(getattr(body, "config", None), "num_hidden_layers", None)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"{type(body).__name__} does not say how many transformer blocks it has (config.num_hidden_layers)")
    found = [name for name, module in body.named_modules()
             if isinstance(module, nn.ModuleList) and len(module) == count
             and len({id(m) for m in module}) == count]
    if len(found) != 1:
        why = "none" if not found else f"{len(found)} ({', '.join(found)})"
        raise ValueError(f"it needs one list of num_hidden_layers = {count} distinct transformer blocks in the base "
                         f"model, found {why}")
    return found[0]


@contextlib.contextmanager
def truncated_blocks(body: nn.Module, depth: int, path: str = "encoder.layer") -> Iterator[nn.ModuleList]:
    """Temporarily keep only the first ``depth`` transformer blocks of ``body`` (the
    ``nn.ModuleList`` at ``path``; :func:`find_block_list` finds it for any family): inside, a
    call of ``body`` runs those blocks only, and a ``copy.deepcopy(body)`` holds only them. The
    blocks are shared, not copied; the full list (yielded) is put back on exit. transformers 5's
    hidden-state capture hooks are installed on every block first."""
    blocks = body.get_submodule(path)
    _install_capture_hooks(body)
    if not 0 <= depth <= len(blocks):
        raise ValueError(f"up_to_layer must be in [0, {len(blocks)}] (got {depth})")
    parent_path, _, attr = path.rpartition(".")
    parent = body.get_submodule(parent_path)
    setattr(parent, attr, blocks[:depth])
    try:
        yield blocks
    finally:
        setattr(parent, attr, blocks)


def truncated_layers(body: nn.Module, up_to_layer: int) -> contextlib.AbstractContextManager[nn.ModuleList]:
    """:func:`truncated_blocks` of a BERT-layout body (``encoder.layer``)."""
    return truncated_blocks(body, up_to_layer, "encoder.layer")


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


def run_truncated(
    body: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    up_to_layer: int | None = None,
    position_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    *,
    path: str = "encoder.layer",
    **attention_kwargs: Any,
) -> list[torch.Tensor]:
    """Hidden states ``[h_0 .. h_L]`` of a BERT-layout body (``embeddings`` and the blocks at
    ``path``), running only ``L = up_to_layer`` blocks (default: all); blocks past ``L`` are not
    run, so a caller that needs layer 8 pays for 8 blocks. Under the caller's grad and train/eval
    modes.

    ``attention_mask`` is ``[B, L]`` (1 = a real token) or (API 1.5) ``[B, L, L]`` (query row
    ``q`` may attend key ``k`` where nonzero), passed on as transformers' prepared 4-D mask.
    ``attention_kwargs`` go to the attention kernels (e.g. FlashAttention's ``cu_seq_lens_q``)."""
    depth = len(body.get_submodule(path)) if up_to_layer is None else up_to_layer
    if attention_mask.dim() == 3:
        attention_mask = pairwise_mask(body, attention_mask)
    if depth == 0:  # no block runs, so no hidden states are captured: the embeddings alone
        return [body.embeddings(input_ids=input_ids, position_ids=position_ids, token_type_ids=token_type_ids)]
    kwargs = {"position_ids": position_ids, "token_type_ids": token_type_ids, **attention_kwargs}
    with truncated_blocks(body, depth, path):
        out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    return list(out.hidden_states)


run_body = run_truncated  # its name before API 1.6


# ---------------------------------------------------------------------- deprecated names (docs/plugin-api.md)
_MOVED = {
    "XLMREncoder": "objkit_plugins.xlmr", "XLMRConfig": "objkit_plugins.xlmr", "architecture": "objkit_plugins.xlmr",
    "XLMR_VOCAB_SIZE": "objkit_plugins.xlmr",
}


def __getattr__(name: str) -> Any:
    """``objkit.blocks.encoder.XLMREncoder`` and friends moved to the ``xlmr`` plugin (``objkit_plugins.xlmr``)
    in 0.7.0; the old names keep working with a ``DeprecationWarning`` until objkit 1.0."""
    if name in _MOVED:
        warnings.warn(f"objkit.blocks.encoder.{name} moved to {_MOVED[name]}.{name} (the xlmr encoder plugin); "
                      "the old name goes in objkit 1.0", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'objkit.blocks.encoder' has no attribute {name!r}")
