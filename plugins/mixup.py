"""``mixup``: mixup contrast for translation pairs (InfoXLM, Chi et al., NAACL 2021, §3.3).

Each example ``(a1, b1)`` is concatenated with a partner pair ``(a2, b2)``; three seeded
random bits decide the order on each side and which side is the query. The layout follows
the reference (``data/xlco_dataset.py``, ``XlcoDataset.__getitem__``): with
``mode ~ U{0..7}``::

    bit 0: swap a1/a2 on the source side      bit 1: swap b1/b2 on the target side
    source = <s> a1 </s> a2 </s>              target = <s> b1 </s> b2 </s>
    bit 2: the target side is the query (else the source side is)

i.e. the partner's ``<s>`` is dropped and its sentence follows the first one's ``</s>``.
Rows stay free of ``<s>``/final ``</s>`` (the objective adds them): a mixed row has
``src_ids = a1 + [</s>] + a2`` and ``query_side`` = bit 2 (0: source is the query).

Partners (``partner``):

* ``"adjacent"`` (reference): the next line of the same corpus. The reference's XLCO
  dataset reads lines 4i..4i+3 as two adjacent pairs, so every example consumes two pairs;
  :meth:`Mixup.prepare` pairs consecutive rows of the same group the same way (half as many
  examples). Rows with no partner (odd group size) stay unmixed.
* ``"random"`` (the paper's wording: a pair from another corpus): another example of the
  same micro-batch, from a different group when the batch has one. The partner depends on
  which examples share the micro-batch, so unlike everything else here it changes with the
  number of ranks and the micro-batch size (drawn from the micro-batch ``generator``).

``prob`` is the fraction of examples mixed (reference: 1.0). Whether an example is mixed and
its three bits are functions of its ``sample_seed`` (:mod:`objkit.blocks.seeding`), so they do not
depend on the rank or micro-batch that collates it. Each mixed side is trimmed,
longer sentence first, to fit ``max_length`` with its three special tokens. A deviation
worth knowing: the reference's ``tools/para2bin4xlco.py`` strips only ``</s>`` from
``tokenizer.encode`` output before prepending ``<s>``, so its binarised sentences start
with two ``<s>``; we follow the documented layout (README: ``<s> x </s>``) instead.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import datasets
import torch
from pydantic import Field

from objkit import (
    PLUGIN_API_VERSION,
    Augmentation,
    BuildContext,
    PluginConfig,
    derive_seed,
    example_seeds,
    hookimpl,
    sample_uniform,
)

PARTNER_KEYS = ("partner_src_ids", "partner_tgt_ids")


class MixupConfig(PluginConfig):
    prob: float = Field(1.0, ge=0, le=1, description="fraction of examples mixed (reference: 1.0)")
    partner: Literal["adjacent", "random"] = Field(
        "adjacent", description="adjacent: next pair of the same corpus (reference); random: another group in the batch"
    )


def trim_longer_first(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Drop trailing tokens of the longer of the two until ``len(first) + len(second) <= budget``."""
    excess = len(first) + len(second) - budget
    if excess <= 0:
        return first, second
    first, second = list(first), list(second)
    while len(first) + len(second) > budget:
        (first if len(first) >= len(second) else second).pop()
    return first, second


def mix_pair(
    pair: tuple[list[int], list[int]],
    partner: tuple[list[int], list[int]],
    mode: int,
    sep_id: int,
    budget: int | None = None,
) -> dict[str, Any]:
    """The reference's mixup layout for one ``mode`` in ``0..7`` (see the module docstring)."""
    (a1, b1), (a2, b2) = pair, partner
    if mode & 1:
        a1, a2 = a2, a1
    if mode & 2:
        b1, b2 = b2, b1
    if budget is not None:
        a1, a2 = trim_longer_first(a1, a2, budget)
        b1, b2 = trim_longer_first(b1, b2, budget)
    return {"src_ids": [*a1, sep_id, *a2], "tgt_ids": [*b1, sep_id, *b2], "query_side": (mode >> 2) & 1}


def _pair_adjacent(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Join consecutive rows of the same group: row i gets row i+1 as its partner."""
    columns = list(batch)
    out: dict[str, list[Any]] = {c: [] for c in [*columns, *PARTNER_KEYS]}
    groups = batch.get("group") or [None] * len(batch["src_ids"])
    n, i = len(groups), 0
    while i < n:
        for c in columns:
            out[c].append(batch[c][i])
        paired = i + 1 < n and groups[i + 1] == groups[i]
        out["partner_src_ids"].append(batch["src_ids"][i + 1] if paired else [])
        out["partner_tgt_ids"].append(batch["tgt_ids"][i + 1] if paired else [])
        i += 2 if paired else 1
    return out


class Mixup(Augmentation):
    name: ClassVar[str] = "mixup"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config: ClassVar[type[MixupConfig]] = MixupConfig
    data_kind = "parallel"

    def __init__(self, config: MixupConfig, ctx: BuildContext) -> None:
        super().__init__(config, ctx)
        self.config: MixupConfig = config
        self.sep_id = ctx.vocab.eos_id
        self.budget = max(2, ctx.max_length - 3)  # <s> first </s> second </s>

    def prepare(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """For ``partner = "adjacent"``: pair consecutive rows (called by the objective's ``prepare``)."""
        if self.config.partner != "adjacent":
            return dataset
        kwargs: dict[str, Any] = {"batched": True, "batch_size": 1000, "remove_columns": dataset.column_names}
        if isinstance(dataset, datasets.Dataset):
            kwargs["desc"] = "mixup: pairing adjacent translation pairs"
        return dataset.map(_pair_adjacent, **kwargs)

    def _random_partners(self, examples: list[dict[str, Any]], generator: torch.Generator) -> list[int | None]:
        """For each example, another index of the batch, from a different group when possible."""
        n = len(examples)
        draws = torch.rand(n, generator=generator).tolist()
        if n < 2:
            return [None] * n
        groups = [str(e.get("group", "")) for e in examples]
        order = sorted(range(n), key=lambda i: groups[i])
        span: dict[str, tuple[int, int]] = {}
        for pos, i in enumerate(order):
            start, _ = span.get(groups[i], (pos, pos))
            span[groups[i]] = (start, pos + 1)
        partners: list[int | None] = []
        for i in range(n):
            start, end = span[groups[i]]
            if end - start < n:  # pick among the other groups
                k = int(draws[i] * (n - (end - start)))
                partners.append(order[k] if k < start else order[k + end - start])
            else:  # one group only: any other example
                k = int(draws[i] * (n - 1))
                partners.append(k if k < i else k + 1)
        return partners

    def apply(self, examples: list[dict[str, Any]], generator: torch.Generator) -> list[dict[str, Any]]:
        seeds = example_seeds(examples, generator)
        mixed_draw = [sample_uniform(seed, "mixup/mix") < self.config.prob for seed in seeds]
        modes = [derive_seed(seed, "mixup/mode") % 8 for seed in seeds]
        if self.config.partner == "random":
            partners = self._random_partners(examples, generator)
            partner_ids = [
                (examples[j]["src_ids"], examples[j]["tgt_ids"]) if j is not None else None for j in partners
            ]
        else:
            partner_ids = [
                (e["partner_src_ids"], e["partner_tgt_ids"]) if e.get("partner_src_ids") else None for e in examples
            ]
        out = []
        for example, partner, mix, mode in zip(examples, partner_ids, mixed_draw, modes, strict=True):
            row = {k: v for k, v in example.items() if k not in PARTNER_KEYS}
            if mix and partner is not None:
                row.update(mix_pair((example["src_ids"], example["tgt_ids"]), partner, mode, self.sep_id, self.budget))
            out.append(row)
        return out


@hookimpl
def objkit_plugins() -> list[type]:
    return [Mixup]
