"""``padding_fraction``: padded token slots of the pair objectives with and without length
bucketing (``train.length_bucketing``), and the step time it buys. A row of ``benchmarks/run.py``.

Two ``quickstart_infoxlm`` trainers (MLM + TLM + XLCO), identical but for
``train.length_bucketing`` (0 against ``POOL`` steps), on Multi30k's en-de, en-fr and en-cs
training pairs when ``OBJKIT_MULTI30K`` (default ``data/multi30k`` under the working directory:
Multi30k's ``train.{en,de,fr,cs}``, github.com/multi30k/dataset) holds them, else (and always at ``--toy``) on the embedded CLDR pairs. The padded
fraction of TLM's and XLCO's token slots (``<objective>/padding``, what the trainer logs) is
counted over the micro-batches of ``padding_steps`` steps of each (collation only, no forward
pass); the gated value is the worse of the two pair objectives with bucketing (goal ≤ 0.10).
The step-time ratio (unbucketed / bucketed ``Trainer.train_step``, alternating) is reported
beside it, not gated.

Its row is declared at the end (``ROWS``, see suite/registry.py).
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

from suite import common
from suite.registry import Row

POOL = 8
PAIR_OBJECTIVES = ("tlm", "xlco")


def multi30k_dir(root: Path) -> Path | None:
    path = Path(os.environ.get("OBJKIT_MULTI30K", Path("data") / "multi30k"))
    return path if all((path / f"train.{x}").is_file() for x in ("en", "de", "fr", "cs")) else None


def _sets(corpus: Path | None) -> list[str]:
    if corpus is None:
        return []
    pairs = ",".join(f'{{src="{corpus / "train.en"}",tgt="{corpus / f"train.{x}"}",src_lang="en",tgt_lang="{x}"}}'
                     for x in ("de", "fr", "cs"))
    return [f'data.parallel={{type="parallel",pairs=[{pairs}]}}']


def padding(trainer: Any, steps: int) -> dict[str, float]:
    """Padded fraction of each objective's token slots over ``steps`` collated steps."""
    slots: dict[str, int] = {}
    padded: dict[str, int] = {}
    for step in range(steps):
        collated = trainer.composite.collate_step(step, trainer.world)
        for slot, (n, p) in zip(trainer.composite.slots, collated.padding, strict=True):
            slots[slot.name] = slots.get(slot.name, 0) + n
            padded[slot.name] = padded.get(slot.name, 0) + p
    return {name: padded[name] / slots[name] for name in slots if slots[name]}


def measure(ws: Any, *, alternate: Any, median_ratio: Any, summary: Any, root: Path) -> dict[str, Any]:
    """The row (``run.py``'s timing helpers passed in: this module is loaded beside it)."""
    s = ws.settings
    toy = s.name == "toy"
    corpus = None if toy else multi30k_dir(root)
    steps, reps = (2, 1) if toy else (64, 5 if s.name == "quick" else 9)
    base = ["train.log_every=1000000", "train.checkpoint_every=1000000", "train.steps=1000000",
            *s.quickstart_sets, *_sets(corpus)]
    trainers = {pool: ws.trainer(ws.recipe("quickstart_infoxlm", [*base, f"train.length_bucketing={pool}"]))
                for pool in (0, POOL)}
    before, after = padding(trainers[0], steps), padding(trainers[POOL], steps)
    times = alternate({"unbucketed": trainers[0].train_step, "bucketed": trainers[POOL].train_step}, reps)
    value = max(after[name] for name in PAIR_OBJECTIVES if name in after)
    return {
        "value": value,
        "data": f"Multi30k train en-de/fr/cs ({corpus})" if corpus else "embedded CLDR pairs (quickstart)",
        "pool_steps": POOL,
        "batch_size": trainers[0].train_cfg.batch_size,
        "steps_counted": steps,
        "before": before,
        "after": after,
        "step_time_ratio": median_ratio(times["unbucketed"], times["bucketed"]),
        "times": {k: summary(v) for k, v in times.items()},
        "mean_step_s": {k: statistics.median(v) for k, v in times.items()},
    }


def describe(d: dict[str, Any]) -> str:
    pairs = ", ".join(f"{k} {d['before'][k]:.1%} → {d['after'][k]:.1%}" for k in PAIR_OBJECTIVES if k in d["after"])
    return (f"padded slots {pairs} with a pool of {d['pool_steps']} steps of {d['batch_size']}; "
            f"unbucketed/bucketed step {d['step_time_ratio']:.2f}×; {d['data']}")


ROWS = [
    Row("padding_fraction",
        lambda ws: measure(ws, alternate=common.alternate, median_ratio=common.median_ratio, summary=common.summary,
                           root=common.ROOT),
        "<=", 0.10, "padded token slots of TLM/XLCO with length bucketing (Multi30k pairs)", describe),
]
