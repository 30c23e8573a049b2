"""The plugin kinds objkit composes: Objective, Encoder, NegativeStore, Augmentation.

A plugin is a class deriving from one of these bases, with a ``name`` and a pydantic
``Config`` model (strict: ``extra="forbid"``). Plugins reach the registry through the
``objkit`` entry-point group (see :mod:`objkit.contract.hookspecs`); built-in plugins do too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from objkit.contract.encoder import (  # re-exported: the encoder contract's config and context types
    EncoderConfig,
    EncoderContext,
    EncoderKeys,
    EncoderRunOptions,
    PluginConfig,
    TokenizerTraining,
    VocabInfo,
)

if TYPE_CHECKING:
    import datasets
    import numpy as np
    from transformers import PreTrainedTokenizerBase

    from objkit.contract.registry import Registry

DataKind = Literal["text", "parallel"]
"""What an objective consumes. Rows of a tokenized data source, without special tokens:

* ``"text"``: ``{"input_ids": list[int], "lang": str}`` -- one sentence (or line) each.
* ``"parallel"``: ``{"src_ids": list[int], "tgt_ids": list[int], "src_lang": str, "tgt_lang": str}``.
"""


class Plugin:
    """Common metadata. ``name`` is the registry key; ``Config`` validates the plugin's recipe table."""

    name: ClassVar[str]
    Config: ClassVar[type[PluginConfig]] = PluginConfig
    plugin_api: ClassVar[str | None] = None
    """The objkit plugin API (``"MAJOR.MINOR"``) this plugin is written against; required.
    Third-party plugins write the literal they were tested with (e.g. ``"1.0"``), not
    ``objkit.PLUGIN_API_VERSION``, so that a later incompatible objkit is detected."""

    @classmethod
    def check(cls, config: Any, registry: Registry) -> list[str]:
        """Cross-plugin checks at validation time (e.g. a referenced plugin exists).

        Return one message per problem as ``"dotted.key: what is wrong"``, keys relative to
        the plugin's table. Called by ``objkit validate`` before anything is built.
        """
        return []


@dataclass
class WorldInfo:
    """Where this process sits in a torch.distributed job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class BuildContext:
    """Everything a plugin may need at construction time. ``tokenizer`` is None in dry runs
    without the checkpoint; use ``vocab`` for token ids."""

    encoder: Encoder
    tokenizer: PreTrainedTokenizerBase | None
    vocab: VocabInfo
    registry: Registry
    instance_name: str
    seed: int
    device: torch.device
    total_steps: int
    max_length: int = 128
    world: WorldInfo = field(default_factory=WorldInfo)
    precision: str = "fp32"


@dataclass
class StepContext:
    """Passed to :meth:`Objective.compute` and the after-step hook.

    ``step`` counts completed optimizer updates (0 during the first update).
    """

    step: int
    encoder: Encoder
    device: torch.device
    world: WorldInfo = field(default_factory=WorldInfo)


@dataclass
class ObjectiveOutput:
    """Result of one objective on one micro-batch.

    ``loss`` is a scalar mean over the objective's units (masked tokens, sentences);
    ``sample_size`` is how many units it averages over (used by the composite's
    ``normalization = "reference"``); ``metrics`` are extra scalars, logged as
    ``<instance>/<key>`` next to ``<instance>/loss``: Python floats, or (API 1.2) 0-dim
    tensors on the device, which the trainer accumulates there and reads back once per
    logging interval instead of once per micro-batch (``.item()`` waits for the device).
    Tensors are detached by the trainer; floats keep working as before.
    """

    loss: torch.Tensor
    sample_size: int
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)


class Encoder(Plugin, nn.Module, ABC):
    """The network being trained (plugin kind ``encoder``; its ``Config``, a subclass of
    :class:`EncoderConfig`, validates the recipe's whole ``[model]`` table).

    Contract:

    * ``build(config, ctx)`` (a classmethod) returns the encoder from its validated ``Config``
      and an :class:`EncoderContext` (weights from ``config.init`` or fresh).
    * ``forward(input_ids, attention_mask, up_to_layer=None, position_ids=None,
      token_type_ids=None)`` returns the hidden states ``[h_0, h_1, ..., h_L]`` where ``h_0``
      is the embedding output and ``L = up_to_layer`` (default: all layers). Blocks past
      ``up_to_layer`` are not run, so a caller that needs layer 8 pays for 8 blocks.
      ``attention_mask`` is ``[B, L]`` padding (1 = a real token) or (API 1.5) ``[B, L, L]``:
      nonzero where query ``q`` may attend key ``k`` (ERNIE-M's cross-attention mask).
    * ``forward_documents(input_ids, document_ids, up_to_layer=None, position_ids=None,
      token_type_ids=None)`` (API 1.6) runs packed rows, each document attending only within itself
      (default: :meth:`forward` with a block-diagonal ``[B, L, L]`` mask).
    * ``lm_logits(hidden)`` applies the LM head to hidden vectors of selected positions
      (``[N, d] -> [N, vocab]``); callers gather masked positions first and never ask for
      full ``[batch, length, vocab]`` logits.
    * ``momentum_copy(depth)`` a frozen copy of the first ``depth`` blocks (a :class:`MomentumCopy`).
    * ``shard_units()`` the submodules FSDP shards one by one.
    * ``save_pretrained(path)`` writes a directory that ``transformers.AutoModel`` loads.
    * ``resize_vocab(row_sources)`` (optional, API 1.3) grows the vocabulary for an extended tokenizer.

    Attributes: ``hidden_size``, ``num_layers``, ``num_heads``, ``vocab_size``, ``max_tokens``;
    ``first_position_id`` / ``pad_position_id``: the position id of a sequence's first token and
    of padding (XLM-R counts positions from ``pad_token_id + 1``; BERT from 0); ``run_options``
    (API 1.6): the :class:`EncoderRunOptions` it honours, from ``ctx.options`` at build.
    """

    Config: ClassVar[type[PluginConfig]] = EncoderConfig
    tokenizer_algorithm: ClassVar[str] = "unigram"
    """What ``[model.tokenizer]`` trains when its table does not say (``unigram``, ``wordpiece``)."""

    hidden_size: int
    num_layers: int
    num_heads: int = 0
    vocab_size: int
    first_position_id: int = 0
    pad_position_id: int = 0
    max_tokens: int | None = None
    """Tokens per sequence its position table allows (None: no limit known)."""
    run_options: EncoderRunOptions = EncoderRunOptions()
    """(API 1.6) The run options this encoder honours: ``build`` keeps ``ctx.options`` here, less
    what it cannot honour. Encoders written to API 1.5 or earlier, which do not, are given
    ``ctx.options`` here by objkit right after ``build``. Nothing else sets it."""

    @classmethod
    @abstractmethod
    def build(cls, config: Any, ctx: EncoderContext) -> Encoder:
        """Build from the validated ``[model]`` table (weights from a checkpoint or fresh)."""

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]: ...

    def forward_documents(
        self,
        input_ids: torch.Tensor,
        document_ids: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states ``[h_0 .. h_L]`` of packed rows (API 1.7): several documents per row,
        ``document_ids`` ``[B, L]`` numbering them (1, 2, ...; 0: padding), each attending only
        within itself, with ``position_ids`` restarting per document (:func:`objkit.pack_documents`
        builds such rows). Every token's hidden state is the one it has in a row of its own.
        Default: :meth:`forward` with the block-diagonal ``[B, L, L]`` mask of
        :func:`objkit.document_attention_mask` (API 1.5 masks). An encoder with a varlen kernel
        overrides it (:class:`objkit.MaskedLMEncoder` under ``train.packed_attention``)."""
        from objkit.contract.defaults import document_attention_mask

        return self(input_ids, document_attention_mask(document_ids), up_to_layer, position_ids, token_type_ids)

    @abstractmethod
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def lm_head_parts(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor | None] | None:
        """The LM head as ``(transform, weight, bias)``: ``lm_logits(h) == F.linear(transform(h),
        weight, bias)``, the decoder's ``weight`` ``[vocab, d]`` and ``bias`` ``[vocab]`` (or None).
        With it, :func:`objkit.lm_head_loss`'s chunked path runs the decoder and the cross-entropy
        as one autograd function whose backward accumulates the decoder's gradient in one buffer:
        two decoder-sized gradients alive at once (with the tied embedding's) instead of three. Default
        None: each chunk of :meth:`lm_logits` is checkpointed instead. (API 1.4)"""
        return None

    @abstractmethod
    def body(self) -> nn.Module:
        """The transformer body without the LM head (what a momentum copy tracks)."""

    def momentum_copy(self, depth: int | None = None) -> MomentumCopy:
        """A frozen fp32 copy of :meth:`body`'s first ``depth`` blocks (all: None), runnable like
        :meth:`forward` up to ``depth``; its ``body``'s parameter names are :meth:`body`'s, so
        ``MomentumTracker.between(encoder.body(), copy.body)`` pairs them. Default: built from
        :meth:`copy_body` and :meth:`run_copy` (API 1.1 encoders keep working). (API 1.2)"""
        return MomentumCopy(self.copy_body(depth), self.run_copy, units=())

    def copy_body(self, up_to_layer: int | None = None) -> nn.Module:
        """A frozen fp32 copy of :meth:`body` (``requires_grad=False``) for a momentum encoder,
        keeping at least the blocks up to ``up_to_layer`` (all: None). Its parameter names are
        the body's, so ``objkit.MomentumTracker.between(encoder.body(), copy)`` pairs them.
        Default: a full-depth :func:`objkit.make_momentum_copy` of the body. (API 1.1; 1.2's
        :meth:`momentum_copy` wraps it)"""
        from objkit.contract.defaults import make_momentum_copy

        return make_momentum_copy(self.body())

    def run_copy(
        self,
        body: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Hidden states ``[h_0 .. h_L]`` of ``body`` -- a :meth:`copy_body` of this encoder --
        running only the blocks up to ``L = up_to_layer``, exactly as :meth:`forward` runs the
        trained body. It runs under the caller's grad mode (wrap it in ``torch.no_grad()`` for
        keys) and train/eval mode (``body.train(...)``). Default: not supported. (API 1.1)"""
        raise NotImplementedError(f"encoder {self.name!r} cannot run a copy of its body (Encoder.run_copy)")

    def shard_units(self) -> list[nn.Module]:
        """Submodules FSDP shards as units of their own (the transformer blocks), so only one
        block's full weights exist at a time; the rest is sharded with the root. Default: none."""
        return []

    def resize_token_types(self, count: int) -> None:
        """Grow the token-type embedding table to at least ``count`` rows (new rows drawn from
        N(0, 0.02), existing rows kept), for objectives that give each language a token type
        (TLM's ``language_embeddings``). Default: a :class:`~objkit.UserError`. (API 1.2)"""
        from objkit.contract.errors import UserError

        raise UserError(f"model.encoder: encoder {self.name!r} has no token-type table to grow to {count} types")

    def resize_vocab(self, row_sources: Sequence[Sequence[int]]) -> None:
        """Resize the word embeddings and the LM head (its weights, tied or not, and its bias) to
        ``len(row_sources)`` rows: new row ``i`` is the mean of the old rows ``row_sources[i]`` (a
        kept piece names its own row; an empty list: the mean of every old row). ``vocab_size`` and
        what :meth:`save_pretrained` writes follow. Called before the optimizer is built, for a
        tokenizer extended with new pieces (:func:`objkit.data.vocab.fit_vocabulary`).
        Default: a :class:`~objkit.UserError`. (API 1.3)"""
        from objkit.contract.errors import UserError

        raise UserError(f"model.tokenizer: encoder {self.name!r} cannot resize its vocabulary to "
                        f"{len(row_sources)} ids (Encoder.resize_vocab)")

    @abstractmethod
    def save_pretrained(self, path: str) -> None: ...


class MomentumCopy(nn.Module):
    """A frozen copy of an encoder's first blocks (:meth:`Encoder.momentum_copy`).

    ``copy(input_ids, attention_mask, up_to_layer=None, position_ids=None, token_type_ids=None)``
    returns the hidden states ``[h_0 .. h_L]`` exactly as the encoder's ``forward`` would with
    the copied weights, under the caller's grad mode (wrap it in ``torch.no_grad()`` for keys)
    and the copy's own train/eval mode. ``body`` holds the parameters (named as the encoder
    body's); ``shard_units()`` its blocks, for FSDP. (API 1.2)"""

    def __init__(self, body: nn.Module, run: Callable[..., list[torch.Tensor]], units: Any = ()) -> None:
        super().__init__()
        self.body = body
        self._run = run
        self._units = list(units)

    @property
    def depth(self) -> int:
        """Blocks the copy holds (0 when unknown)."""
        return len(self._units)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        up_to_layer: int | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        return self._run(self.body, input_ids, attention_mask, up_to_layer, position_ids, token_type_ids)

    def shard_units(self) -> list[nn.Module]:
        return list(self._units)


class Objective(Plugin, ABC):
    """A pretraining loss.

    Lifecycle: the trainer builds the objective with its validated ``config`` and a
    :class:`BuildContext`; calls :meth:`prepare` once on the tokenized data source named by
    the recipe; draws examples from the result and batches them with :meth:`collate`;
    calls :meth:`compute` on each micro-batch and backpropagates the weighted loss; after
    every optimizer update calls :meth:`after_optimizer_step`. Any state the objective
    owns (momentum encoders, queues, RNG) round-trips through :meth:`state_dict`.
    Trainable parameters it owns (a projection head) are returned by :meth:`trainable_modules`
    and are optimised with the encoder.
    """

    data_kind: ClassVar[DataKind]

    def __init__(self, config: PluginConfig, ctx: BuildContext) -> None:
        self.config = config
        self.instance_name = ctx.instance_name

    @classmethod
    def modifies_encoder(cls, config: PluginConfig) -> bool:
        """True if ``__init__`` with this config changes the encoder's modules (e.g. grows its
        token-type table). Such objectives are built before the others, so that copies the
        others take (momentum encoders) see the final structure."""
        return False

    @classmethod
    def check_languages(cls, config: PluginConfig, source: str, languages: list[str]) -> list[str]:
        """Validation-time check of the languages of the data source this objective reads
        (``source`` is its recipe name, ``languages`` the codes the recipe gives it), for
        objectives to which a language code matters. Return ``"key: problem"`` lines, keys
        relative to the plugin's table (default: none)."""
        return []

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Turn tokenized source rows into training examples (default: unchanged).

        Must keep a ``group`` column (the language or language pair) for α-sampling.
        """
        return dataset

    @abstractmethod
    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Batch examples into tensors (every tensor with one row per example).

        Randomness about an example (masking, which side is the query) should come from its
        ``example["sample_seed"]`` (see :mod:`objkit.blocks.seeding`): a function of the seed and the
        example's place in the step's global batch only, so that 1 rank × micro-batch B and
        2 ranks × B/2 collate the same rows. ``generator`` is seeded per micro-batch and rank;
        use it only for decisions that depend on the micro-batch as a whole.
        """

    @abstractmethod
    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput: ...

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        """The ``sample_size`` :meth:`compute` will report for ``batch`` when it computes a loss,
        known before the forward pass: the composite sums it over the step's micro-batches and
        ranks and divides each objective's loss by that global count (fairseq's sample-size
        normalisation), so gradients do not depend on how the batch is split. Default: the
        predicted positions of ``batch["labels"]`` (``!= -100``) if present, else one unit per row."""
        if "labels" in batch:
            return int((batch["labels"] != -100).sum())
        return int(next(iter(batch.values())).shape[0])

    @classmethod
    def bucket_lengths(cls, dataset: datasets.Dataset) -> np.ndarray:
        """(1.3) The sort key of each prepared row for ``train.length_bucketing``: ``[N]`` lengths,
        or ``[N, k]`` keys compared column by column (the first decides, the next break ties).
        Default: the row's longest token list. An objective that pads several sequences of a row
        on their own (each side of a pair) may sort on all of them."""
        from objkit.contract.defaults import example_lengths

        return example_lengths(dataset)

    def has_loss(self, step: int) -> bool:
        """Whether :meth:`compute` returns a loss with a gradient at ``step`` (default: always).

        Asked once before the step's first forward pass, and must hold for every micro-batch of
        the step and be the same on every rank: the composite uses it to run the step's last
        backward pass with gradient synchronisation (DDP/FSDP) and checks it against the result.
        An objective that first fills a queue returns False meanwhile."""
        return True

    @property
    def uses_all_parameters(self) -> bool:
        """False when a backward pass of this objective leaves some encoder parameters without a
        gradient (a truncated encoder, no LM head). DDP then runs with
        ``find_unused_parameters=True`` (see :mod:`objkit.distributed`); declaring it is
        cheaper and more honest than touching the unused parameters with ``0 * loss``."""
        return True

    def shard(self, shard: Callable[..., None]) -> None:
        """Under FSDP (``train.parallelism = "fsdp"``), called once after the encoder and the
        trainable modules have been sharded: shard the modules this objective keeps beside
        them (momentum copies) with ``shard(module, units=[blocks...])``, the same way, and
        re-take references to encoder parameters (sharding replaces them). Default: nothing."""

    def loss_weight(self, step: int) -> float:
        """Multiplier on the recipe weight at ``step`` (e.g. 0 until a warm-up condition holds)."""
        return 1.0

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {}

    def plan(self) -> dict[str, int | float | str]:
        """Extra resources this objective holds, for ``objkit run --dry-run`` (e.g.
        ``{"key encoder parameters": 559_890_432, "queue bytes": 536_870_912}``). Objectives
        must be constructible on the ``meta`` device, which the dry run uses."""
        return {}

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called once after each optimizer update (EMA updates, queue bookkeeping)."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors and JSON-serialisable values; restored by :meth:`load_state_dict`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} owns no state but got keys {sorted(state)}")


class NegativeStore(Plugin, ABC):
    """A source of negative keys for contrastive objectives.

    ``negatives(current_keys)`` returns the ``[K, d]`` keys to contrast against (it may
    include ``current_keys``, e.g. in-batch negatives). ``enqueue(keys)`` records this
    step's keys, gathered across ranks by the store itself. ``ready`` is False while the
    store is still filling. State (buffer, pointer, fill count) round-trips via
    ``state_dict``.
    """

    includes_current_keys: ClassVar[bool] = False
    """True when rows ``[o, o + B)`` of ``negatives(keys)`` are ``keys`` themselves in order
    (``o`` = :attr:`current_keys_offset`); the objective then masks that diagonal (each
    query's own positive) out of the negatives."""

    @property
    def current_keys_offset(self) -> int:
        """Row of the last ``negatives(keys)`` result where ``keys`` begin (0 unless the store
        gathered other ranks' keys in front of them)."""
        return 0

    accepts_gathered_keys: ClassVar[bool] = False
    """(API 1.2) True when :meth:`negatives` and :meth:`enqueue` take a keyword ``gathered``:
    every rank's keys in rank order and the per-rank counts, exactly what
    ``objkit.gather_rows(keys)`` returns. An objective with several such stores then gathers a
    micro-batch's keys once for all of them (``None`` with one process: use ``keys``) instead
    of each store gathering the same keys again."""

    def __init__(self, config: PluginConfig, dim: int, device: torch.device, world: WorldInfo) -> None:
        self.config = config
        self.dim = dim
        self.device = device
        self.world = world

    @abstractmethod
    def negatives(self, current_keys: torch.Tensor) -> torch.Tensor: ...

    def enqueue(self, keys: torch.Tensor, gathered: tuple[torch.Tensor, list[int]] | None = None) -> None:
        """Record keys (default: nothing to record). ``gathered``: see :attr:`accepts_gathered_keys`."""

    @property
    def ready(self) -> bool:
        return True

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Augmentation(Plugin, ABC):
    """Transforms a list of examples before collation; randomness comes from ``generator``."""

    data_kind: ClassVar[DataKind]

    def __init__(self, config: PluginConfig, ctx: BuildContext) -> None:
        self.config = config

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """Reshape the objective's prepared examples once, before sampling (default: unchanged);
        e.g. pair adjacent rows. The objective using the augmentation calls it from its own
        ``prepare``. Must keep the ``group`` column."""
        return dataset

    @abstractmethod
    def apply(self, examples: list[dict[str, Any]], generator: torch.Generator) -> list[dict[str, Any]]: ...


PLUGIN_KINDS: dict[str, type[Plugin]] = {
    "objective": Objective,
    "negative_store": NegativeStore,
    "augmentation": Augmentation,
    "encoder": Encoder,
}
