"""``xlco``: cross-lingual contrast (XLCO) of InfoXLM (Chi et al., NAACL 2021).

For a translation pair, the query is the trained encoder's vector of one side, the key is a
momentum (EMA) encoder's vector of the other side; the loss is InfoNCE over
``[q·k⁺, q·negatives] / τ`` with the positive at index 0, negatives from the configured
stores (reference: a MoCo queue). Reference defaults (``criterions/xlco.py``,
``models/infoxlm.py``, ``tasks/infoxlm.py``): the ``<s>`` vector of layer 8 (the output of
the 8th block; embeddings are layer 0), τ = 0.25, no L2 normalisation, a bias-free d×d
projection initialised N(0, 0.02) with a momentum copy on the key side, inputs masked like
MLM, the query side a seeded random bit per example, momentum 0.9999 (base), a 131,072-key
queue filled before the loss starts. Options beyond the reference: mean pooling, L2
normalisation, in-batch negatives (``negatives.in_batch``, alone or with the queue), a
symmetric loss (both sides act as query), an additive margin on the positive, a learnable
temperature, and every momentum schedule of :mod:`objkit.blocks.momentum`.

Additive margin (``margin = m``, LaBSE: Feng et al., ACL 2022, eq. 4, after Yang et al., IJCAI
2019): the positive's logit is ``(cos(q, k⁺) − m) / τ``, the negatives' ``cos(q, n) / τ``. As in
LaBSE, ``m`` is subtracted from the positive *cosine*, before the temperature, not from the
logit: then m = 0.3 means "a translation must beat every non-translation by 0.3 in cosine",
whatever τ, and the same margin keeps its meaning when τ (or a learnable τ) changes. A margin
is only meaningful on unit vectors, so ``check`` refuses ``margin > 0`` without ``normalize =
true`` (a dot product of unnormalised vectors has no fixed range to put a margin in). Only the
positive moves: queue and in-batch negatives are unchanged, and the in-batch copy of a query's
own positive is excluded, so it appears once, with the margin. ``accuracy`` ignores the margin
(the ranking retrieval sees). Where XLCO departs from LaBSE's loss: LaBSE writes no scale (here
1/τ); its two sides come from one trained encoder, here the key side is the momentum encoder
(no gradient); ``symmetric = true`` gives LaBSE's bidirectional ranking, averaged over both
directions where LaBSE sums them (half the weight); negatives may include the queue.
``margin = 0`` (the default) is the reference loss bit for bit.

Where we differ from the reference, on purpose: the momentum encoder, its projection and the
queue are fp32 under bf16/fp16 autocast (the reference's fp16 EMA with m = 0.9999 rounds to
no update, see :mod:`objkit.blocks.momentum`); before ``enable_step`` the key encoder is copied
from the query encoder after every update (the reference copies only in the last 5 steps,
so the keys it enqueues meanwhile come from stale weights); the queue is filled by the first
training steps (XLCO returns a detached zero loss meanwhile, MLM/TLM train) instead of by
a separate pass before step 0 -- ``size / batch_size`` steps, 64 for the paper's setting.

Cost: each pass runs only the blocks up to ``layer``. The momentum copy holds only those
blocks (for base, 8 of 12: 2/3 of the body's block parameters) and the key pass is
forward-only through them; the query pass (forward and backward) also stops at ``layer``,
which is exact here because each objective has its own batch and forward, so XLCO is the
only consumer of its query pass. Per XLCO sequence, base at layer 8 pays 8/12 of a
full-depth pass on both sides (large at layer 12: 12/24), and no LM head. The reference
ran the query side through all layers and the LM head (a DDP workaround);
``truncate_passes = false`` reproduces full-depth passes for comparison. Here the objective
declares instead that it leaves parameters unused (``uses_all_parameters`` is False), and the
runtime turns on DDP's ``find_unused_parameters`` (see :mod:`objkit.distributed`).

Padding: the reference pads each side's batch to its longest row. Here the query batch and
the key batch each run as ``length_groups`` (default 2) passes over rows of similar length,
each padded to its own longest row (:func:`objkit.length_groups`, the split with the fewest
token slots; as many passes on every rank), the vectors put back in batch order: the loss and
gradients of one padded batch up to float rounding. With the random query side each batch
mixes both languages of its pairs, so one padded batch pads every shorter side to its
neighbours' longer side. For ``train.length_bucketing`` XLCO sorts on the longer side, then
the shorter (:meth:`bucket_lengths`).

Across ranks: the query side and the masks are functions of each pair's ``sample_seed``; the
momentum queue gathers the keys of every rank before enqueueing, and ``in_batch`` contrasts
against the keys of the whole global micro-batch (gathered), so a step on 2 ranks × B/2
computes the same loss as on 1 rank × B. Whether the loss is active (weight, queue full) is
decided once per step (:meth:`CrossLingualContrast.has_loss`), the same on every rank.

Loss weighting: ``sample_size`` is the number of queries. With ``train.normalization =
"reference"`` (fairseq: sum of all per-unit losses / (XLCO sentences + masked tokens)),
the paper's step (2,048 XLCO pairs, 2,048 MLM and 2,048 TLM sequences of 512 tokens, 15%
masked: 157,286 masked tokens each) gives XLCO 2,048 / 316,621 = 0.65% of the total weight
and an XLCO:MLM weight ratio of 2,048 / 157,286 = 1.3%, versus 1:1 under the default
``"mean"`` (per-objective means, each weighted by the recipe weight): about 1% of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import datasets
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator
from torch import nn

from objkit import (
    PLUGIN_API_VERSION,
    Augmentation,
    BuildContext,
    ConstantMomentum,
    MaskingConfig,
    MomentumSchedule,
    MomentumTracker,
    NegativeStore,
    Objective,
    ObjectiveOutput,
    PluginConfig,
    StepContext,
    UserError,
    coerce_schedule,
    derive_seed,
    dist_all_gather,
    example_seeds,
    gather_rows,
    hookimpl,
    info_nce,
    length_groups,
    make_momentum_copy,
    mask_tokens,
    pad_sequences,
    side_lengths,
)


class XlcoConfig(PluginConfig):
    layer: int = Field(8, ge=1, description="hidden state used: output of this block (reference: 8 for base)")
    pooling: Literal["cls", "mean"] = Field("cls", description="cls: the <s> vector (reference); mean: over tokens")
    temperature: float = Field(0.25, gt=0, description="τ in q·k/τ (reference: 0.25)")
    learnable_temperature: bool = Field(False, description="learn log(1/τ), initialised from temperature")
    normalize: bool = Field(False, description="L2-normalise q and k (reference: no)")
    projection: bool = Field(True, description="bias-free d×d head N(0, 0.02), momentum copy on the key side")
    momentum: MomentumSchedule = Field(default_factory=ConstantMomentum, description="EMA schedule of the key encoder")
    enable_step: int = Field(0, ge=0, description="XLCO weight 0 and key encoder = query encoder before this step")
    negatives: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"momentum_queue": {}},
        description="negative stores by plugin name, each with its own config table",
    )
    augment: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="augmentations by plugin name (e.g. mixup), applied in order"
    )
    symmetric: bool = Field(False, description="also contrast the other direction (both sides as query)")
    margin: float = Field(
        0.0, ge=0, description="LaBSE's additive margin m: the positive's logit is (cos − m)/τ (needs normalize = true; "
        "LaBSE: 0.3)"
    )
    mask_inputs: bool = Field(True, description="mask XLCO inputs like MLM (reference: yes)")
    masking: MaskingConfig = Field(default_factory=MaskingConfig)
    truncate_passes: bool = Field(
        True, description="run only the blocks up to layer (false: full depth, for comparison)"
    )
    length_groups: int = Field(
        2, ge=1, description="run the query and the key batch each as this many groups of similar length "
        "(fewer only in smaller micro-batches), each padded to its own longest row (1: one padded batch, as the "
        "reference)"
    )

    @field_validator("momentum", mode="before")
    @classmethod
    def _bare_number(cls, value: object) -> object:
        return coerce_schedule(value)


class InverseTemperature(nn.Module):
    """A learnable ``1/τ`` stored as its log (CLIP-style), capped at 100."""

    def __init__(self, temperature: float, device: torch.device) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.full((), math.log(1.0 / temperature), device=device))

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)


class CrossLingualContrast(Objective):
    name: ClassVar[str] = "xlco"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[XlcoConfig]] = XlcoConfig
    data_kind = "parallel"

    @classmethod
    def check(cls, config: XlcoConfig, registry: Any) -> list[str]:
        problems: list[str] = []
        if config.margin > 0 and not config.normalize:
            problems.append(
                f"margin: an additive margin is subtracted from the positive's cosine; set normalize = true "
                f"(got margin = {config.margin} with normalize = false)"
            )
        if not config.negatives:
            problems.append("negatives: give at least one negative store, e.g. negatives = { momentum_queue = {} }")
        for key, kind in (("negatives", "negative_store"), ("augment", "augmentation")):
            for name, table in getattr(config, key).items():
                try:
                    info = registry.get(name, kind=kind)
                except UserError as exc:
                    problems.append(f"{key}.{name}: {exc}")
                    continue
                if kind == "augmentation" and getattr(info.cls, "data_kind", "parallel") != "parallel":
                    problems.append(f"{key}.{name}: {name!r} augments {info.cls.data_kind} data, not parallel pairs")
                try:
                    info.cls.Config.model_validate(table)
                except ValidationError as exc:
                    for err in exc.errors():
                        where = ".".join(str(p) for p in err["loc"])
                        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
                        problems.append(f"{key}.{name}.{where}: {msg}")
        return problems

    def __init__(self, config: XlcoConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: XlcoConfig = config
        encoder = ctx.encoder
        if config.layer > encoder.num_layers:
            raise UserError(
                f"objectives.{ctx.instance_name}.layer: {config.layer} is deeper than the encoder "
                f"({encoder.num_layers} layers; 1 = first block, {encoder.num_layers} = last) (got {config.layer})"
            )
        self.layer = config.layer
        self.num_layers = encoder.num_layers
        self.depth = config.layer if config.truncate_passes else encoder.num_layers
        self.dim = encoder.hidden_size
        self.vocab = ctx.vocab
        self.max_length = ctx.max_length
        self.body = encoder.body()
        self.key_copy = encoder.momentum_copy(self.depth)  # frozen fp32, only the blocks the key pass runs
        self.key_body = self.key_copy.body  # its parameters, named as the query body's
        self.projection: nn.Linear | None = None
        self.key_projection: nn.Module | None = None
        if config.projection:
            self.projection = nn.Linear(self.dim, self.dim, bias=False, device=ctx.device)
            nn.init.normal_(self.projection.weight, mean=0.0, std=0.02)
            self.key_projection = make_momentum_copy(self.projection)
        self.tracker = self._track()
        self.scale_module = InverseTemperature(config.temperature, ctx.device) if config.learnable_temperature else None
        self.stores: dict[str, NegativeStore] = {}
        for name, table in config.negatives.items():
            info = ctx.registry.get(name, kind="negative_store")
            self.stores[name] = info.cls(info.cls.Config.model_validate(table), self.dim, ctx.device, ctx.world)
        # stores that take gathered keys (queue, in_batch) share one all-gather per key tensor
        self.all_gather = dist_all_gather if ctx.world.world_size > 1 else None
        self.augmentations: list[Augmentation] = []
        for name, table in config.augment.items():
            info = ctx.registry.get(name, kind="augmentation")
            self.augmentations.append(info.cls(info.cls.Config.model_validate(table), ctx))
        self._decision: tuple[int, bool] | None = None  # (step, has_loss) of the current step

    def _track(self) -> MomentumTracker:
        """Pair the momentum copies with the trained modules, parameter by name."""
        tracker = MomentumTracker.between(self.body, self.key_body)
        if self.projection is not None and self.key_projection is not None:
            head = MomentumTracker.between(self.projection, self.key_projection)
            tracker = MomentumTracker(tracker.sources + head.sources, tracker.targets + head.targets)
        return tracker

    def shard(self, shard: Callable[..., None]) -> None:
        """FSDP: shard the key encoder block by block like the query encoder, so each EMA
        update pairs local shards of equal shape; then re-pair (sharding replaces parameters)."""
        shard(self.key_body, units=self.key_copy.shard_units())
        if self.key_projection is not None:
            shard(self.key_projection)
        last = self.tracker.last_momentum
        self.tracker = self._track()
        self.tracker.last_momentum = last

    # ------------------------------------------------------------------ data
    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        for augmentation in self.augmentations:
            dataset = augmentation.prepare(dataset)
        return dataset

    def collate(self, examples: list[dict[str, Any]], generator: torch.Generator) -> dict[str, torch.Tensor]:
        for augmentation in self.augmentations:
            examples = augmentation.apply(examples, generator)
        seeds = example_seeds(examples, generator)  # per sample: independent of rank and micro-batch
        flips = [derive_seed(seed, "xlco/query-side") & 1 for seed in seeds]
        budget = self.max_length - 2
        bos, eos = self.vocab.bos_id, self.vocab.eos_id
        queries, keys = [], []
        for example, flip in zip(examples, flips, strict=True):
            side = example.get("query_side", flip)  # set by mixup (its bit 2); else our own bit
            q, k = (example["src_ids"], example["tgt_ids"]) if side == 0 else (example["tgt_ids"], example["src_ids"])
            queries.append([bos, *q[:budget], eos])
            keys.append([bos, *k[:budget], eos])
        q_seeds = [derive_seed(seed, "xlco/mask-query") for seed in seeds]
        k_seeds = [derive_seed(seed, "xlco/mask-key") for seed in seeds]
        return {**self._padded(queries, q_seeds, generator, ""), **self._padded(keys, k_seeds, generator, "key_")}

    def _padded(self, sequences: list[list[int]], seeds: list[int], generator: torch.Generator,
                prefix: str) -> dict[str, torch.Tensor]:
        """``{prefix}input_ids`` / ``{prefix}attention_mask`` of ``sequences``: the rows of the first
        length group (:func:`objkit.length_groups`, ``config.length_groups``), the next groups
        as ``{prefix}input_ids.1``, ..., each padded to its own longest row, and, when there are
        several, ``{prefix}group_rows``: the batch row of every row of the groups laid end to end.
        One group holds every row in order: the layout of ``length_groups = 1``."""
        groups = length_groups([len(s) for s in sequences], self.config.length_groups)
        out: dict[str, torch.Tensor] = {}
        for g, rows in enumerate(groups):
            suffix = f".{g}" if g else ""
            ids, mask = pad_sequences([sequences[i] for i in rows], self.vocab.pad_id)
            if self.config.mask_inputs:  # per-row seeds: the same masks in any group
                ids, _ = mask_tokens(ids, self.vocab, generator, self.config.masking, seeds=[seeds[i] for i in rows])
            out[f"{prefix}input_ids{suffix}"], out[f"{prefix}attention_mask{suffix}"] = ids, mask
        if len(groups) > 1:
            out[f"{prefix}group_rows"] = torch.tensor([i for rows in groups for i in rows], dtype=torch.long)
        return out

    @staticmethod
    def _groups(batch: dict[str, torch.Tensor], prefix: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(input_ids, attention_mask)`` of each length group of one side of ``batch``."""
        groups = [(batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"])]
        while f"{prefix}input_ids.{len(groups)}" in batch:
            g = len(groups)
            groups.append((batch[f"{prefix}input_ids.{g}"], batch[f"{prefix}attention_mask.{g}"]))
        return groups

    def _encode_side(self, run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: dict[str, torch.Tensor],
                     prefix: str) -> torch.Tensor:
        """``run`` over each length group of one side of ``batch``, vectors back in batch order."""
        groups = self._groups(batch, prefix)
        if len(groups) == 1:
            return run(*groups[0])
        vectors = torch.cat([run(ids, mask) for ids, mask in groups])
        return vectors[torch.argsort(batch[f"{prefix}group_rows"])]  # on the device: no host synchronisation

    @classmethod
    def bucket_lengths(cls, dataset: datasets.Dataset) -> Any:
        """Queries and keys are padded on their own (each side in its own batch): sort on the
        longer side, then the shorter (:func:`objkit.side_lengths`)."""
        return side_lengths(dataset)

    # ------------------------------------------------------------------ passes
    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.config.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def _head(self, pooled: torch.Tensor, projection: nn.Module | None) -> torch.Tensor:
        """Projection and normalisation in fp32 (outside autocast)."""
        with torch.autocast(device_type=pooled.device.type, enabled=False):
            vector = pooled.float()
            if projection is not None:
                vector = projection(vector)
            return F.normalize(vector, dim=-1) if self.config.normalize else vector

    @torch.no_grad()
    def encode_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, training: bool) -> torch.Tensor:
        """Momentum-encoder vectors ``[B, d]`` (fp32), running ``layer`` blocks."""
        self.key_body.train(training)  # same dropout mode as the query encoder (reference)
        up_to = self.layer if self.config.truncate_passes else None
        hidden = self.key_copy(input_ids, attention_mask, up_to_layer=up_to)[self.layer]
        return self._head(self._pool(hidden, attention_mask), self.key_projection)

    def encode_queries(self, encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        up_to = self.layer if self.config.truncate_passes else None
        hidden = encoder(input_ids, attention_mask, up_to_layer=up_to)[self.layer]
        return self._head(self._pool(hidden, attention_mask), self.projection)

    def _scale(self) -> float | torch.Tensor:
        return self.scale_module() if self.scale_module is not None else 1.0 / self.config.temperature

    def _gather(self, keys: torch.Tensor) -> tuple[torch.Tensor, list[int]] | None:
        """Every rank's ``keys`` (one all-gather), when several ranks run and a store takes them."""
        if self.all_gather is None or not any(s.accepts_gathered_keys for s in self.stores.values()):
            return None
        return gather_rows(keys.detach(), self.all_gather)

    def _negatives(self, keys: torch.Tensor, gathered: tuple[torch.Tensor, list[int]] | None = None
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        blocks, masks = [], []
        for store in self.stores.values():
            shared = gathered is not None and store.accepts_gathered_keys
            blocks.append(store.negatives(keys, gathered=gathered) if shared else store.negatives(keys))
            if store.includes_current_keys:  # this rank's keys sit at rows [offset, offset + n)
                n, offset = keys.shape[0], store.current_keys_offset
                eye = torch.eye(n, dtype=torch.bool, device=keys.device)
                masks.append(F.pad(eye, (offset, blocks[-1].shape[0] - offset - n)))
            else:
                masks.append(None)
        return blocks, masks

    # ------------------------------------------------------------------ Objective API
    def loss_weight(self, step: int) -> float:
        return 0.0 if step < self.config.enable_step else 1.0

    def has_loss(self, step: int) -> bool:
        """Decided once per step, from the stores' state before the step's first micro-batch
        (keys enqueued during the step count from the next one), so every micro-batch and rank
        of a step agrees."""
        if self._decision is None or self._decision[0] != step:
            ready = all(store.ready for store in self.stores.values())
            self._decision = (step, self.loss_weight(step) > 0 and ready)
        return self._decision[1]

    @property
    def uses_all_parameters(self) -> bool:
        return False  # no LM head, and blocks past `layer` are not run when truncate_passes

    def sample_size(self, batch: dict[str, torch.Tensor]) -> int:
        rows = sum(int(ids.shape[0]) for ids, _ in self._groups(batch, ""))
        return rows * (2 if self.config.symmetric else 1)

    def compute(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> ObjectiveOutput:
        encoder = ctx.encoder
        training = bool(getattr(encoder, "training", True))
        def keys_of(prefix: str) -> torch.Tensor:
            return self._encode_side(lambda ids, mask: self.encode_keys(ids, mask, training), batch, prefix)

        keys = [keys_of("key_")]
        if self.config.symmetric:
            keys.append(keys_of(""))
        gathered = [self._gather(k) for k in keys]  # once per key tensor, shared by the stores
        active = self.has_loss(ctx.step)
        results = []
        if active:
            directions = [("", keys[0], gathered[0])]
            if self.config.symmetric:
                directions.append(("key_", keys[1], gathered[1]))
            scale = self._scale()
            for prefix, positive, everyone in directions:
                # with no negatives yet (a queue not waiting to fill, first step) the loss is 0
                blocks, masks = self._negatives(positive, everyone)
                query = self._encode_side(lambda ids, mask: self.encode_queries(encoder, ids, mask), batch, prefix)
                results.append(
                    info_nce(query, positive, blocks, scale=scale, margin=self.config.margin, exclude=masks)
                )
        for store in self.stores.values():
            for k, everyone in zip(keys, gathered, strict=True):
                if everyone is not None and store.accepts_gathered_keys:
                    store.enqueue(k, gathered=everyone)
                else:
                    store.enqueue(k)
        if not results:
            return ObjectiveOutput(torch.zeros((), device=keys[0].device), 0, {})
        loss = sum(r.loss for r in results) / len(results)
        # 0-dim tensors: read back once per logging interval (no host synchronisation here)
        metrics: dict[str, float | torch.Tensor] = {"accuracy": sum(r.top1 for r in results) / len(results)}
        if self.scale_module is not None:
            metrics["temperature"] = 1.0 / self.scale_module().detach()
        if self.tracker.last_momentum is not None:
            metrics["momentum"] = self.tracker.last_momentum
        return ObjectiveOutput(loss, sample_size=sum(int(k.shape[0]) for k in keys), metrics=metrics)

    def after_optimizer_step(self, ctx: StepContext) -> None:
        # ctx.step is the update just finished (0-based); the reference's schedules take the
        # number of completed updates (1 after the first).
        self.tracker.step(ctx.step + 1, self.config.momentum, self.config.enable_step)

    def trainable_modules(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {}
        if self.projection is not None:
            modules["projection"] = self.projection
        if self.scale_module is not None:
            modules["temperature"] = self.scale_module
        return modules

    def plan(self) -> dict[str, int | float | str]:
        plan: dict[str, int | float | str] = {
            "key encoder parameters": self.tracker.numel(),
            "key encoder blocks": f"{self.depth} of {self.num_layers} (vectors from layer {self.layer})",
        }
        queue_bytes = sum(int(getattr(s, "nbytes", lambda: 0)()) for s in self.stores.values())
        if queue_bytes:
            plan["queue bytes"] = queue_bytes
        return plan

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "key_encoder": self.key_body.state_dict(),
            "stores": {name: store.state_dict() for name, store in self.stores.items()},
        }
        if self.projection is not None and self.key_projection is not None:
            state["projection"] = self.projection.state_dict()
            state["key_projection"] = self.key_projection.state_dict()
        if self.scale_module is not None:
            state["temperature"] = self.scale_module.state_dict()
        if self.tracker.last_momentum is not None:
            state["last_momentum"] = self.tracker.last_momentum
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.key_body.load_state_dict(state["key_encoder"])
        for name, store in self.stores.items():
            store.load_state_dict(state["stores"][name])
        if self.projection is not None and self.key_projection is not None:
            with torch.no_grad():
                self.projection.load_state_dict(state["projection"])
                self.key_projection.load_state_dict(state["key_projection"])
        if self.scale_module is not None:
            with torch.no_grad():
                self.scale_module.load_state_dict(state["temperature"])
        self.tracker.last_momentum = state.get("last_momentum")


@hookimpl
def objkit_plugins() -> list[type]:
    return [CrossLingualContrast]
