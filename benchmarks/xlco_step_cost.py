"""Cost of an XLCO step relative to MLM + TLM, with and without truncated passes.

Median wall time of ``Trainer.train_step()`` for several variants of the quickstart recipes
(embedded CLDR data, no download), interleaved A B C A B C ... so that machine load affects
every variant alike; ratios are to the MLM + TLM step of ``quickstart_no_xlco``. Variants:
the shipped ``quickstart_infoxlm`` (symmetric XLCO: two query and two key passes) and a
reference-shaped XLCO (one direction, ``<s>`` vector, projection, masked inputs), each with
the passes truncated at the XLCO layer (default) and at full depth (``truncate_passes =
false``, the reference's cost)::

    python benchmarks/xlco_step_cost.py [--reps 30] [--threads 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.trainer import Trainer

REFERENCE_SHAPED = [
    "objectives.xlco.symmetric=false", 'objectives.xlco.pooling="cls"', "objectives.xlco.projection=true",
    "objectives.xlco.normalize=false", "objectives.xlco.temperature=0.25", "objectives.xlco.mask_inputs=true",
    "objectives.xlco.negatives={momentum_queue={size=256}}",
]
FULL = ["objectives.xlco.truncate_passes=false"]
VARIANTS = {
    "mlm+tlm": ("quickstart_no_xlco", []),
    "+xlco (quickstart_infoxlm), truncated": ("quickstart_infoxlm", []),
    "+xlco (quickstart_infoxlm), full depth": ("quickstart_infoxlm", FULL),
    "+xlco (reference-shaped), truncated": ("quickstart_infoxlm", REFERENCE_SHAPED),
    "+xlco (reference-shaped), full depth": ("quickstart_infoxlm", REFERENCE_SHAPED + FULL),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every variant")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipes = Path(__file__).resolve().parent.parent / "recipes"
    common = [*args.set, "train.log_every=100000", "train.checkpoint_every=100000"]
    registry = default_registry()
    trainers = {}
    for name, (recipe, sets) in VARIANTS.items():
        resolved = load_recipe(recipes / f"{recipe}.toml", common + sets, registry)
        trainers[name] = Trainer(resolved, Path(tempfile.mkdtemp()), registry, progress=False)
        for _ in range(5):  # warm up; fills the queue
            trainers[name].train_step()
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.reps):
        for name, trainer in trainers.items():
            started = time.perf_counter()
            trainer.train_step()
            times[name].append(time.perf_counter() - started)
    base = statistics.median(times["mlm+tlm"])
    print(f"{'variant':42s} {'median ms/step':>14s} {'vs mlm+tlm':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:42s} {median * 1000:14.1f} {median / base:9.2f}x")


if __name__ == "__main__":
    main()
