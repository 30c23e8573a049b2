"""Train a recipe on 1 process and on N torchrun processes; compare the logged per-objective losses.

The global batch of a step does not depend on the number of ranks (objkit's data, masking and
normalisation are functions of the seed and the sample), so both runs should log the same
losses up to floating-point reduction order. This runs exactly the two commands below (fresh
run directories under OUT), then prints the per-step losses of both, the worst relative
difference per loss, and exits 1 if any exceeds ``--tolerance``:

    python -m objkit run RECIPE -o OUT/ranks1 --set ...
    torchrun --standalone --nproc_per_node N -m objkit run RECIPE -o OUT/ranksN --set ...

Example (CPU, about a minute on 2 cores):

    python benchmarks/rank_equivalence.py recipes/quickstart_infoxlm.toml -o bench-out/ranks \\
        --nproc 2 --set train.steps=12 --set train.log_every=1
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def _run(argv: list[str]) -> float:
    print("$", shlex.join(argv), flush=True)
    started = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - started


def _losses(run_dir: Path) -> dict[int, dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["step"]): {k: v for k, v in r.items() if k.endswith("/loss")} for r in rows if "lr" in r}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe")
    parser.add_argument("-o", "--output", type=Path, required=True, help="writes OUT/ranks1, OUT/ranksN, OUT/comparison.json")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest relative difference accepted")
    args = parser.parse_args()

    sets = [arg for override in args.overrides for arg in ("--set", override)]
    single, multi = args.output / "ranks1", args.output / f"ranks{args.nproc}"
    for directory in (single, multi):
        shutil.rmtree(directory, ignore_errors=True)  # fresh runs, never a resume
    objkit = ["-m", "objkit", "run", args.recipe]
    times = {
        "ranks1": _run([sys.executable, *objkit, "-o", str(single), *sets, "--no-progress"]),
        f"ranks{args.nproc}": _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                    f"--nproc_per_node={args.nproc}", *objkit, "-o", str(multi), *sets,
                                    "--no-progress"]),
    }
    a, b = _losses(single), _losses(multi)
    if sorted(a) != sorted(b):
        print(f"logged steps differ: {sorted(a)} vs {sorted(b)}")
        return 1
    worst: dict[str, tuple[float, int]] = {}
    print(f"\n{'step':>5}  {'loss':<10} {'1 process':>12} {f'{args.nproc} processes':>12} {'rel. diff':>10}")
    for step in sorted(a):
        if a[step].keys() != b[step].keys():
            print(f"step {step}: logged losses differ: {sorted(a[step])} vs {sorted(b[step])}")
            return 1
        for key in sorted(a[step]):
            x, y = a[step][key], b[step][key]
            rel = abs(x - y) / max(abs(x), 1e-12)
            if rel >= worst.get(key, (-1.0, 0))[0]:
                worst[key] = (rel, step)
            print(f"{step:>5}  {key:<10} {x:>12.7f} {y:>12.7f} {rel:>10.2e}")
    print("\nworst relative difference per loss (step):")
    for key, (rel, step) in sorted(worst.items()):
        print(f"  {key:<10} {rel:.2e} (step {step})")
    overall = max(rel for rel, _ in worst.values())
    ok = overall <= args.tolerance
    print(f"worst overall: {overall:.2e} -> {'OK' if ok else 'FAIL'} (tolerance {args.tolerance:g})")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    summary = {"recipe": args.recipe, "overrides": args.overrides, "nproc": args.nproc, "steps": sorted(a),
               "worst": {k: {"relative": r, "step": s} for k, (r, s) in worst.items()}, "worst_overall": overall,
               "tolerance": args.tolerance, "ok": ok, "wall_seconds": times}
    (args.output / "comparison.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
