"""Building blocks of the conformance kit: cases, tiny encoder and vocabulary, dummy data, registries, contexts, checkpoint round trips."""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from objkit.contract.interfaces import BuildContext, Encoder, VocabInfo, WorldInfo

CPU = torch.device("cpu")
TINY_VOCAB_SIZE = 96
TINY_MAX_LENGTH = 32
LANGUAGES = ("en", "de", "fr", "cs")


# ----------------------------------------------------------------------------- building blocks
@dataclass
class Case:
    """One configuration a harness runs every check with.

    ``expect_gradients``: some training step must put gradients on the encoder or the
    plugin's trainable modules (False for a configuration whose loss legitimately stays
    out of training for the first ``steps`` steps, e.g. a queue still filling).

    ``rank_invariant``: False for a configuration whose loss depends on the number of ranks
    by design (e.g. negatives from this rank's batch only); the rank check is then skipped."""

    config: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    expect_gradients: bool = True
    rank_invariant: bool = True

    @property
    def label(self) -> str:
        if self.id:
            return self.id
        if not self.config:
            return "defaults"
        text = json.dumps(self.config, separators=(",", ":"), sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."


def as_case(value: Case | dict[str, Any]) -> Case:
    return value if isinstance(value, Case) else Case(dict(value))


def tiny_vocab(vocab_size: int = TINY_VOCAB_SIZE) -> VocabInfo:
    """XLM-R's special-token layout over a small synthetic vocabulary."""
    return VocabInfo.xlmr(vocab_size)


def tiny_encoder(
    vocab_size: int = TINY_VOCAB_SIZE,
    *,
    num_layers: int = 8,
    hidden_size: int = 32,
    num_heads: int = 4,
    max_length: int = TINY_MAX_LENGTH,
    seed: int = 0,
) -> Encoder:
    """The installed ``xlmr`` encoder plugin, tiny and without dropout, initialised from ``seed``:
    built through the Encoder contract (``build(config, ctx)``) from a ``[model]`` table (position
    table of ``max_length + 8`` rows, feed-forward ``2 × hidden_size``)."""
    table = {"num_layers": num_layers, "hidden_size": hidden_size, "num_heads": num_heads,
             "intermediate_size": 2 * hidden_size, "max_length": max_length + 6, "dropout": 0.0, "tokenizer": "unused"}
    return TinyEncoder("xlmr", table, vocab_size=vocab_size).build(seed)


@dataclass
class TinyEncoder:
    """The encoder the objective checks train (API 1.6): an encoder ``plugin`` (registry name or
    class) and the ``[model]`` table of a tiny fresh model, built through the plugin's own
    ``build(config, EncoderContext(vocab_size))`` -- the contract, nothing family-specific -- with
    weights from the check's seed. ``vocab``: the token ids the objective gets (default: XLM-R's
    special-token layout over ``vocab_size`` ids, :func:`tiny_vocab`). Default: the ``xlmr``
    encoder of :func:`tiny_encoder`. E.g. an objective's checks on a DistilBERT::

        TinyEncoder("hf_mlm", {"family": "distilbert", "hf_config": {"n_layers": 3, "dim": 32,
                    "n_heads": 4, "hidden_dim": 64}, "tokenizer": "unused", "max_length": 32, "dropout": 0.0})
    """

    plugin: str | type = "xlmr"
    table: dict[str, Any] | None = None
    vocab_size: int = TINY_VOCAB_SIZE
    vocab: VocabInfo | None = None

    def build(self, seed: int = 0) -> Encoder:
        from objkit.contract.interfaces import EncoderContext

        if self.table is None:
            return tiny_encoder(self.vocab_size, seed=seed)
        cls = resolve_plugin(self.plugin, "encoder")
        config = cls.Config.model_validate(json.loads(json.dumps(self.table)))
        torch.manual_seed(seed)
        encoder = cls.build(config, EncoderContext(vocab_size=self.vocab_size))
        assert isinstance(encoder, Encoder), f"{cls.name}.build returned {type(encoder).__name__}, not an Encoder"
        return encoder

    def token_ids(self) -> VocabInfo:
        return self.vocab or tiny_vocab(self.vocab_size)

    @property
    def key(self) -> str:
        name = self.plugin if isinstance(self.plugin, str) else f"{self.plugin.__module__}.{self.plugin.__qualname__}"
        return json.dumps([name, self.table, self.vocab_size, repr(self.vocab)], sort_keys=True, default=str)


def dummy_source(data_kind: str, vocab: VocabInfo | None = None, rows: int = 48, seed: int = 0) -> datasets.Dataset:
    """Tokenized rows of a data source of ``data_kind`` (the layout :data:`objkit.DataKind`
    documents, without special tokens), with a ``group`` column: random regular token ids,
    3-12 per sentence, languages en/de/fr/cs."""
    vocab = vocab or tiny_vocab()
    generator = torch.Generator().manual_seed(seed)
    regular = [i for i in range(vocab.vocab_size) if i not in set(vocab.special_ids)]

    def sentence() -> list[int]:
        length = int(torch.randint(3, 13, (1,), generator=generator))
        picks = torch.randint(len(regular), (length,), generator=generator).tolist()
        return [regular[p] for p in picks]

    # languages in contiguous runs, as a corpus read file by file
    if data_kind == "text":
        langs = [LANGUAGES[i * len(LANGUAGES) // rows] for i in range(rows)]
        return datasets.Dataset.from_dict({"input_ids": [sentence() for _ in range(rows)], "lang": langs, "group": langs})
    if data_kind != "parallel":
        raise ValueError(f'data_kind must be "text" or "parallel" (got {data_kind!r})')
    targets = [LANGUAGES[1 + i * (len(LANGUAGES) - 1) // rows] for i in range(rows)]
    return datasets.Dataset.from_dict({
        "src_ids": [sentence() for _ in range(rows)],
        "tgt_ids": [sentence() for _ in range(rows)],
        "src_lang": ["en"] * rows,
        "tgt_lang": targets,
        "group": [f"en-{t}" for t in targets],
    })


@functools.lru_cache(maxsize=1)
def installed_registry() -> Any:
    """Every installed plugin (autoload on, no ``--plugin`` filter), loaded once."""
    from objkit.contract.registry import PluginSelection, Registry

    return Registry.from_entry_points(selection=PluginSelection(autoload=True))


def resolve_plugin(plugin: str | type, kind: str | None = None) -> type:
    """A plugin class from its registry name (or the class itself)."""
    if isinstance(plugin, type):
        return plugin
    return installed_registry().get(plugin, kind=kind).cls


def registry_with(cls: type) -> Any:
    """The installed registry, plus ``cls`` if it is not registered there (a class under
    development); what a plugin's ``check`` and ``BuildContext.registry`` get."""
    registry = installed_registry()
    try:
        if registry.get(cls.name).cls is cls:
            return registry
    except Exception:
        pass
    from objkit.contract.registry import Registry

    fresh = Registry.from_entry_points()
    if cls.name in fresh.names():
        fresh._plugins.pop(cls.name)
    fresh.add(cls, distribution="<under test>", version="")
    return fresh


def build_context(
    encoder: Encoder,
    *,
    registry: Any,
    vocab: VocabInfo | None = None,
    device: torch.device = CPU,
    instance_name: str = "under_test",
    seed: int = 5,
    max_length: int = TINY_MAX_LENGTH,
    world: WorldInfo | None = None,
    total_steps: int = 100,
) -> BuildContext:
    return BuildContext(
        encoder=encoder,
        tokenizer=None,
        vocab=vocab or tiny_vocab(getattr(encoder, "vocab_size", TINY_VOCAB_SIZE)),
        registry=registry,
        instance_name=instance_name,
        seed=seed,
        device=device,
        total_steps=total_steps,
        max_length=max_length,
        world=world or WorldInfo(),
    )


def checkpoint_round_trip(state: dict[str, Any], directory: str | Path | None = None) -> dict[str, Any]:
    """``state`` written and read back the way objkit checkpoints are (safetensors + JSON)."""
    from safetensors.torch import load_file, save_file

    from objkit.train.checkpoint import flatten_state, unflatten_state

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(directory or scratch)
        root.mkdir(parents=True, exist_ok=True)
        tensors, values = flatten_state(state)
        try:
            save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(root / "state.safetensors"))
            (root / "state.json").write_text(json.dumps(values))
        except (TypeError, ValueError) as exc:
            raise AssertionError(
                f"state_dict() must hold tensors and JSON-serialisable values only: {exc}"
            ) from exc
        return unflatten_state(load_file(str(root / "state.safetensors")), json.loads((root / "state.json").read_text()))


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Equal keys, equal JSON values, bit-identical tensors."""
    from objkit.train.checkpoint import flatten_state

    ta, va = flatten_state(a)
    tb, vb = flatten_state(b)
    assert ta.keys() == tb.keys(), f"state tensors differ: {sorted(ta.keys() ^ tb.keys())}"
    assert va == vb, f"state values differ: {va} != {vb}"
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=0, atol=0, msg=lambda m, key=key: f"state {key}: {m}")


def _assert_same_batch(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: batch keys differ"
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: batch[{key!r}] differs"


