"""The recipe schema: every table of a recipe as a typed pydantic v2 model, and nothing else.

Pure data: it depends on pydantic and :mod:`objkit.contract.interfaces` only, so the data layer, the
encoder and the evaluators can read recipe tables without the loader (:mod:`objkit.recipe.loader`:
files, ``extends``, overrides, plugin tables validated against the registry, error lines).
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_serializer, model_validator

from objkit.contract.interfaces import EncoderKeys, TokenizerTraining
from objkit.contract.source import SourceConfig


UNSET = "???"
"""A value the user must fill in (OmegaConf's mandatory-value marker): the full-size recipes'
data files hold it. A recipe with such keys validates (``objkit validate`` shows it, ``run
--dry-run`` plans it); ``objkit run`` and ``objkit prepare`` refuse it in one line naming each
key (:meth:`objkit.recipe.loader.ResolvedRecipe.check_complete`)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ----------------------------------------------------------------------------- data sources
# SourceConfig is the source plugin kind's (objkit.contract.source: the contract imports no recipe module)
SourceCommon = SourceConfig  # the name before plugin API 1.6


class SourceEntry(SourceConfig):
    """``[data.NAME]`` as the core reads it before the registry: the core keys; the source
    plugin's ``Config`` validates the whole table (:func:`objkit.recipe.loader.validate_recipe`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


# The built-in sources' configs live with their plugins (objkit_plugins.source_*) since plugin
# API 1.6; these names still import from here (deprecated; removed in plugin API 2.0).
_MOVED_TO_PLUGINS = {"TextFile": "text", "TextSource": "text", "ParallelPair": "parallel",
                     "ParallelSource": "parallel", "CldrSource": "cldr", "HfSource": "hf"}


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_PLUGINS:
        import importlib

        return getattr(importlib.import_module(f"objkit_plugins.source_{_MOVED_TO_PLUGINS[name]}"), name)
    raise AttributeError(f"module 'objkit.recipe.schema' has no attribute {name!r}")


# ----------------------------------------------------------------------------- model
class ModelConfig(EncoderKeys):
    """``[model]`` as the core reads it: the generic keys of :class:`objkit.contract.interfaces.EncoderKeys`
    (``encoder``, ``init``, ``tokenizer``, ``max_length``, ``dropout``); the encoder plugin's own
    ``Config`` validates the whole table, its own keys included (:attr:`ResolvedRecipe.encoder_config`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @property
    def encoder_keys(self) -> dict[str, Any]:
        """The keys only the encoder plugin's Config knows."""
        return dict(self.model_extra or {})


# ----------------------------------------------------------------------------- objectives
class ObjectiveEntry(BaseModel):
    """``[objectives.NAME]``: core keys; every other key belongs to the plugin's Config."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    plugin: str
    weight: float = Field(1.0, ge=0)
    enabled: bool = True
    data: str = Field(description="name of a [data.*] source")

    @property
    def plugin_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# ----------------------------------------------------------------------------- training
class OptimizerConfig(BaseModel):
    """``[train.optimizer]``: ``name`` is an optimizer plugin (:mod:`objkit.contract.optim`; ``adamw``
    built in); every other key belongs to its ``Config`` (:attr:`ResolvedRecipe.optimizer_config`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str = Field("adamw", description="optimizer plugin name")


class CallbackEntry(BaseModel):
    """``[callbacks.NAME]``: ``plugin`` (default NAME) names a callback plugin; every other key
    belongs to its ``Config``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    plugin: str


MAX_STEPS = 10**9


class TrainConfig(Strict):
    steps: int = Field(gt=0, le=MAX_STEPS, description="optimizer steps (at most 10**9)")
    batch_size: int = Field(gt=0, description="sequences per objective per optimizer step, all ranks")
    micro_batch_size: int | None = Field(None, gt=0, description="per rank per forward; default batch_size")
    lr: float = Field(gt=0)
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS)
    schedule: str = Field("linear", description="schedule plugin name: linear, constant, cosine (built in) or another")
    optimizer: OptimizerConfig = OptimizerConfig()
    clip_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    param_dtype: Literal["fp32", "bf16"] = Field(
        "fp32", description="the dtype of the encoder's trained weights during the step: fp32, or bf16 (autocast then casts "
        "no weight; the optimizer updates fp32 master copies with fp32 moments and the bf16 weights are rounded "
        "from them; checkpoints and the export hold the fp32 masters; under fsdp FSDP2 gathers its fp32 shards in bf16); "
        "bf16 needs precision bf16, or auto on a CUDA device with bf16 (objkit/blocks/master_weights.py)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(1, ge=0, le=2**63 - 1, description="0 to 2**63 - 1 (a TOML integer)")
    time_budget: float | None = Field(
        None, gt=0, description="seconds of training after which the run ends as if it had reached train.steps "
        "(checkpoint, export): the first step that begins with the budget spent is the last; counted across "
        "resumes; train.steps is then an upper bound (and still sets the schedule)"
    )
    time_budget_clock: Literal["wall", "process"] = Field(
        "wall", description="how train.time_budget is counted: wall (elapsed time in the training loop) or process "
        "(CPU seconds of each rank's process, all threads: a budget of compute that other jobs on a shared machine "
        "do not eat into)"
    )
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(1000, gt=0)
    keep_checkpoints: int = Field(2, ge=1)
    max_bad_steps: int = Field(
        10, ge=1, description="abort after this many consecutive steps with non-finite loss or gradients "
        "(each one's update is skipped)"
    )
    normalization: Literal["mean", "reference"] = "mean"
    backward: Literal["per_objective", "joint"] = "per_objective"
    parallelism: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: replicate the model (ddp) or shard it with FSDP2 (fsdp)"
    )
    activation_checkpointing: bool | list[str] = Field(
        False, description="recompute each transformer block's activations in the backward pass "
        "(torch.utils.checkpoint, non-reentrant): true for every objective, or a list of objective names"
    )
    lm_head_chunk_rows: int | None = Field(
        None, ge=0, description="compute the LM head's logits and cross-entropy in chunks of this many rows, "
        "recomputed in the backward pass (peak head memory chunk x vocab); 0 or unset: one piece"
    )
    compile: bool = Field(False, description="torch.compile the encoder's transformer blocks (and momentum copies)")
    report_to: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl"], description="where metrics go besides RUN/metrics.jsonl (always written): "
        "tensorboard (RUN/tensorboard), wandb (WANDB_* settings; files in RUN/wandb unless WANDB_DIR), mlflow "
        "(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME); rank 0 only; each needs its extra: pip install 'objkit[wandb]'"
    )
    checkpoint_format: Literal["single_file", "sharded"] = Field(
        "single_file", description="single_file: rank 0 writes safetensors; sharded: every rank writes its shard "
        "(torch.distributed.checkpoint)"
    )
    checkpoint_async: bool = Field(
        False, description="sharded checkpoints: write the shards in the background (dcp.async_save) while "
        "training goes on; the checkpoint counts once written (needs checkpoint_format = \"sharded\")"
    )
    packed_attention: Literal["auto", "mask", "varlen"] = Field(
        "auto", description="the attention kernel of packed rows (an objective's packing = \"documents\": mlm, "
        "tlm): mask (a block-diagonal mask through SDPA, any device), varlen (FlashAttention-2's variable-length "
        "kernel: CUDA, the flash-attn package, bf16 or fp16), auto (varlen where it runs, else mask)"
    )
    length_bucketing: int = Field(
        0, ge=0, le=100_000, description="pair objectives: pool this many steps' draws, sort them by length, cut "
        "them into steps and shuffle the steps (0: off; objkit/data/bucketing.py)"
    )
    collective_timeout: float = Field(
        1800, gt=0, le=86400, description="seconds a rank waits in one collective (all-reduce, barrier) before the "
        "run fails; rank 0 tokenizing or checkpointing while the others wait counts"
    )

    @field_validator("steps", "warmup_steps", mode="before")
    @classmethod
    def _at_most_max_steps(cls, value: Any) -> Any:
        """Numbers past the bound (``1e23``) get the bound's message, not a parse error."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > MAX_STEPS:
            raise ValueError(f"expected at most {MAX_STEPS} steps (got {value:g})")
        return value

    @model_validator(mode="after")
    def _micro_divides(self) -> TrainConfig:
        if self.micro_batch_size is not None and self.micro_batch_size > self.batch_size:
            raise ValueError("micro_batch_size must not exceed batch_size")
        if self.param_dtype == "bf16" and self.precision in ("fp32", "fp16"):
            raise ValueError(f"param_dtype = \"bf16\" computes in bf16: it needs precision \"bf16\" or \"auto\" "
                             f"(got precision {self.precision!r})")
        return self


class EvalSet(Strict):
    src: str
    tgt: str
    max_lines: int | None = Field(None, gt=0)


class TransferEvalSet(Strict):
    """Zero-shot transfer (``objkit eval transfer``) of the encoder being trained: fine-tuned on a
    copy, so training is unaffected. Logged as ``eval/NAME/LANG`` and ``eval/NAME/avg``."""

    task: Literal["xnli", "pawsx", "sib200", "panx", "udpos", "custom"]
    data_dir: str
    langs: list[str] | None = Field(None, description="test languages (default: all in data_dir)")
    train_langs: list[str] = Field(default_factory=lambda: ["en"])
    setting: Literal["cross-lingual", "translate-train-all"] = "cross-lingual"
    columns: str | None = Field(None, description="custom task: text=COL[,text_pair=COL],label=COL")
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    epochs: int = Field(3, gt=0)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, gt=0)
    max_length: int = Field(128, ge=8)
    warmup: float = Field(0.0, ge=0)
    select: Literal["train-dev", "avg-dev"] = "train-dev"
    max_steps: int | None = Field(None, gt=0, description="fine-tuning step budget per seed")
    max_train: int | None = Field(None, gt=0, description="use the first N training examples")
    every: int | None = Field(None, gt=0, description="every N pretraining steps (default: at the end only)")


class EvalEntry(BaseModel):
    """``[eval.NAME]``: an evaluator plugin (``plugin``, default NAME) run during training, logged as
    ``eval/NAME/METRIC``; every key but ``plugin`` and ``every`` belongs to the evaluator's ``Config``."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    plugin: str = Field(description="evaluator plugin name (default: the table's NAME)")
    every: int | None = Field(None, gt=0, description="run every N steps and at the end; default [eval] every, or "
                              "the end only for an evaluator that says so (transfer)")

    @property
    def plugin_keys(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


EVAL_KEYS = ("every", "layer", "pooling", "batch_size", "sets", "transfer")
"""The keys of ``[eval]`` itself; any other key is an ``[eval.NAME]`` evaluator table."""


class EvalConfig(Strict):
    """``[eval]``: evaluation during training. ``[eval.NAME]`` tables name evaluator plugins
    (``objkit list-plugins``: kind evaluator); the deprecated ``[eval.sets.NAME]`` and
    ``[eval.transfer.NAME]`` tables still work (as ``retrieval`` and ``transfer`` evaluators)."""

    every: int = Field(500, gt=0, description="run every N steps (and at the end)")
    layer: int | None = Field(None, ge=0, description="[eval.sets]: default 8 for 12 layers, else round(2/3 depth)")
    pooling: Literal["mean", "cls"] = "mean"
    batch_size: int = Field(64, gt=0)
    sets: dict[str, EvalSet] = Field(default_factory=dict, description='deprecated: [eval.NAME], plugin = "retrieval"')
    transfer: dict[str, TransferEvalSet] = Field(default_factory=dict,
                                                 description='deprecated: [eval.NAME], plugin = "transfer"')
    evaluators: dict[str, EvalEntry] = Field(default_factory=dict, description="the [eval.NAME] tables, in order")

    @model_validator(mode="before")
    @classmethod
    def _split_evaluators(cls, raw: Any) -> Any:
        """``[eval.NAME]`` tables sit beside ``[eval]``'s own keys: gather them into ``evaluators``
        (a ``[eval.transfer]`` table of keys, not of tables, is the ``transfer`` evaluator's)."""
        if not isinstance(raw, dict):
            return raw
        own = {k: v for k, v in raw.items() if k in EVAL_KEYS}
        tables = {k: v for k, v in raw.items() if k not in EVAL_KEYS}
        for key, value in tables.items():
            if not isinstance(value, dict):
                close = difflib.get_close_matches(key, EVAL_KEYS, n=1)
                hint = f'did you mean "{close[0]}"? ' if close else ""
                raise ValueError(f"{key}: unknown key; {hint}[eval] has {', '.join(EVAL_KEYS)} and [eval.NAME] tables")
        old = own.get("transfer")
        if "transfer" in own and not (isinstance(old, dict) and all(isinstance(v, dict) for v in old.values())):
            tables = {"transfer": own.pop("transfer"), **tables}
        tables = {name: {"plugin": name, **t} if isinstance(t, dict) else t for name, t in tables.items()}
        return {**own, "evaluators": tables}

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        seen: dict[str, str] = {}
        for key, names in (("eval.transfer", self.transfer), ("eval.sets", self.sets), ("eval", self.evaluators)):
            for name in names:
                if name in seen:
                    raise ValueError(f"{name!r} names both [{seen[name]}.{name}] and [{key}.{name}] (their metrics "
                                     "would collide); rename one")
                seen[name] = key
        return self

    def entries(self) -> dict[str, tuple[str, EvalEntry]]:
        """``{NAME: (recipe key, entry)}``, the deprecated tables as the evaluators they stand for, in
        the order results were logged before: ``eval.transfer.NAME``, ``eval.sets.NAME``, ``eval.NAME``."""
        out = {name: (f"eval.transfer.{name}", EvalEntry(plugin="transfer", every=t.every,
                                                        **t.model_dump(exclude={"every"})))
               for name, t in self.transfer.items()}
        for name, e in self.sets.items():
            keys = {**e.model_dump(), "layer": self.layer, "pooling": self.pooling, "batch_size": self.batch_size}
            out[name] = (f"eval.sets.{name}", EvalEntry(plugin="retrieval", **keys))
        return out | {name: (f"eval.{name}", entry) for name, entry in self.evaluators.items()}

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Any) -> Any:
        """Dumped as written: the evaluator tables beside ``[eval]``'s own keys."""
        data = handler(self)
        if isinstance(data, dict):
            tables = data.pop("evaluators", None) or {}
            data = {k: v for k, v in data.items() if k not in ("sets", "transfer") or v} | tables
        return data


class RequiredDistribution(Strict):
    """A distribution the recipe needs installed (typically a third-party plugin's)."""

    distribution: str = Field(description="distribution name as pip knows it, e.g. objkit-translation-ranking")
    version: str | None = Field(None, description='PEP 440 specifier the installed version must meet, e.g. ">=0.1"')
    install: str | None = Field(None, description="how to install it, shown when it is missing (default: pip install NAME)")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """``"name>=1.0"`` (a PEP 508 requirement) is shorthand for a table."""
        if not isinstance(value, str):
            return value
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            req = Requirement(value)
        except InvalidRequirement:
            raise ValueError(f"not a requirement such as 'objkit-foo>=0.1' (got {value!r})") from None
        return {"distribution": req.name, "version": str(req.specifier) or None}


class Recipe(Strict):
    name: str | None = None
    description: str | None = Field(None, description="what the recipe trains, one line (objkit recipes shows it)")
    reference: str | None = Field(
        None, description='the published result the recipe reproduces, e.g. "InfoXLM base (Chi et al., 2021), '
        'Table 1" (objkit recipes shows it)',
    )
    requires: list[RequiredDistribution] = Field(
        default_factory=list,
        description='distributions checked before anything else: "name>=1.0" strings or '
        "{ distribution, version, install } tables; a missing one is a one-line error saying how to install it",
    )
    model: ModelConfig
    data: dict[str, SerializeAsAny[SourceEntry]] = Field(min_length=1)
    objectives: dict[str, ObjectiveEntry] = Field(min_length=1)
    train: TrainConfig
    eval: EvalConfig | None = None
    data_cache_dir: str | None = Field(
        None, exclude=True, description="data.cache_dir in the file: tokenized cache of the map-style sources "
        "(objkit prepare; a run builds what is missing)",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_cache_dir(cls, raw: Any) -> Any:
        """``[data] cache_dir = "..."`` sits beside the sources in the file: lift it out of them."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "cache_dir" in raw["data"]:
            data = dict(raw["data"])
            raw = {**raw, "data": data, "data_cache_dir": data.pop("cache_dir")}
        return raw
    callbacks: dict[str, CallbackEntry] = Field(
        default_factory=dict, description="trainer callbacks (plugin kind callback), in order"
    )

    def enabled_objectives(self) -> dict[str, ObjectiveEntry]:
        return {k: v for k, v in self.objectives.items() if v.enabled}

    def dump(self) -> dict[str, Any]:
        """The recipe as a TOML-ready dict (``data.cache_dir`` back in ``[data]``)."""
        data = self.model_dump(mode="json", exclude_none=True)
        if self.data_cache_dir is not None:
            data["data"]["cache_dir"] = self.data_cache_dir
        return data

    def to_toml(self) -> str:
        return tomli_w.dumps(self.dump())


__all__ = [
    "CallbackEntry",
    "EVAL_KEYS",
    "EvalConfig",
    "EvalEntry",
    "EvalSet",
    "MAX_STEPS",
    "ModelConfig",
    "ObjectiveEntry",
    "OptimizerConfig",
    "Recipe",
    "RequiredDistribution",
    "SourceCommon",
    "SourceConfig",
    "SourceEntry",
    "Strict",
    "TokenizerTraining",
    "TrainConfig",
    "TransferEvalSet",
    "UNSET",
]
