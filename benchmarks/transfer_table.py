"""InfoXLM's comparison table at quickstart scale: zero-shot cross-lingual transfer beside retrieval.

Pretrains one row per recipe on the same general-domain parallel corpus, then judges every export
the way InfoXLM's results table does, with objkit's own evaluators:

* **zero-shot cross-lingual transfer** (``objkit eval transfer``): fine-tune on the English
  training split of a classification task (SIB-200 by default), select the epoch on English dev,
  test on every language, mean ± std over seeds; the majority-class baseline beside it;
* **sentence retrieval** (``objkit eval tatoeba``) on the Tatoeba pairs of the same languages.

Rows (default): ``quickstart_mlm`` (MLM only: the XLM-R row), ``quickstart_infoxlm`` (MLM + TLM +
XLCO) and ``quickstart_no_xlco`` (InfoXLM without XLCO: the paper's ablation, everything else
equal). At this scale MLM + TLM (the XLM / Unicoder objective set) *is* InfoXLM without XLCO, so
one row stands for both; ``--recipes`` adds others (e.g. ``quickstart``: MLM + TLM with the
original quickstart's dropout and learning rate).
Data: ``data.parallel`` = the pairs ``train.PIVOT-XX.{PIVOT,XX}`` in ``--pairs-dir`` (the WMT
newstest layout); ``data.mono`` = every side of every pair as monolingual text; the tokenizer is
trained on ``mono`` (the same for every row, so the evaluator tokenizes each split once). Run::

    python benchmarks/transfer_table.py --pairs-dir ../shared/data/newstest --langs de,fr,es,ru \
        --task-dir ../shared/data/sib200 --tatoeba-dir ../shared/data/tatoeba -o bench-out/transfer

A row whose run directory holds an export is not trained again (its train time is then the one
recorded, or the wall time between the run's ``recipe.toml`` and its export); ``--fresh``
retrains. Rows may be trained beforehand, also concurrently, with the logged ``objkit run``
commands. Writes OUT/results.json, OUT/results.md, OUT/transfer.json
(every seed), OUT/runs/NAME/ and OUT/logs/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from xlco_ablation import OBJKIT, die, machine_info, recipe_path, toml_str, train  # noqa: E402

# ISO 639-1 (corpus file suffixes) -> the task's and Tatoeba's language codes.
SIB = {"en": "eng_Latn", "de": "deu_Latn", "fr": "fra_Latn", "es": "spa_Latn", "ru": "rus_Cyrl",
       "ar": "arb_Arab", "bg": "bul_Cyrl", "el": "ell_Grek", "hi": "hin_Deva", "sw": "swh_Latn",
       "th": "tha_Thai", "tr": "tur_Latn", "ur": "urd_Arab", "vi": "vie_Latn", "zh": "zho_Hans"}
TATOEBA = {"de": "deu", "fr": "fra", "es": "spa", "ru": "rus", "cs": "ces", "ar": "ara", "bg": "bul",
           "el": "ell", "hi": "hin", "sw": "swh", "th": "tha", "tr": "tur", "ur": "urd", "vi": "vie",
           "zh": "cmn"}
ROWS = {"quickstart_mlm": "MLM (XLM-R's objective)", "quickstart_infoxlm": "InfoXLM (MLM + TLM + XLCO)",
        "quickstart_no_xlco": "InfoXLM − XLCO (= MLM + TLM, XLM's objectives)",
        "quickstart": "MLM + TLM (quickstart.toml settings)"}


def data_overrides(args: argparse.Namespace, steps: int) -> list[str]:
    d, p = args.pairs_dir.resolve(), args.pivot
    pairs = ",".join(
        f"{{src={toml_str(str(d / f'train.{p}-{x}.{p}'))},tgt={toml_str(str(d / f'train.{p}-{x}.{x}'))},"
        f"src_lang={toml_str(p)},tgt_lang={toml_str(x)}}}" for x in args.langs)
    files = ",".join(f"{{path={toml_str(str(d / f'train.{p}-{x}.{side}'))},lang={toml_str(side)}}}"
                     for x in args.langs for side in (p, x))
    return [f'data.parallel={{type="parallel",pairs=[{pairs}],sampling_alpha=0.7}}',
            f'data.mono={{type="text",files=[{files}],sampling_alpha=0.7}}',
            'model.tokenizer.sources=["mono"]', f"train.steps={steps}", "train.checkpoint_every=400",
            *args.set]


def run_json(cmd: list[str], log: Path) -> dict[str, Any]:
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True)
    if proc.returncode != 0:
        die(f"{shlex.join(cmd[:3])} failed (exit {proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict[str, Any]) -> str:
    tr, a, m = results["transfer"], results["args"], results["machine"]
    langs, train_langs = tr["languages"], tr["settings"]["train_langs"]
    zero = [x for x in langs if x not in train_langs]
    head = [*langs, "zero-shot avg", "Tatoeba xx↔en", "train time"]
    lines = ["| model | " + " | ".join(head) + " |", "|---" + "|---:" * len(head) + "|"]
    for model in tr["models"]:
        cells = [f"{model['mean'][x]:.1f} ± {model['std'][x]:.1f}" for x in langs]
        cells.append(f"**{model['avg']['mean']:.1f}** ± {model['avg']['std']:.1f}")
        run = results["runs"][model["name"]]
        cells.append(f"{run['tatoeba']['average']['mean']:.1f}")
        cells.append(f"{run['train_seconds']:.0f} s" if run.get("train_seconds") else "n/a")
        lines.append(f"| {ROWS.get(model['name'], model['name'])} | " + " | ".join(cells) + " |")
    maj = tr["majority"]
    lines.append("| majority class | " + " | ".join(f"{maj[x]:.1f}" for x in langs)
                 + f" | {sum(maj[x] for x in zero) / len(zero):.1f} | | |")
    s = tr["settings"]
    load = m.get("loadavg_at_start")
    return "\n".join([
        "| " + f"Zero-shot transfer on {s['task']} (accuracy %, mean ± std over seeds "
        f"{','.join(map(str, s['seeds']))}; fine-tuned on {', '.join(train_langs)}, epoch selected on "
        f"{' + '.join(train_langs)} dev)" + " |", "", *lines, "",
        f"Pretraining: {a['steps']} steps on `{a['pairs_dir']}` pairs {a['pivot']}–{{{','.join(a['langs'])}}}. "
        f"Fine-tuning: lr {s['lr']}, {s['epochs']} epochs, batch {s['batch_size']}, max length "
        f"{s['max_length']}; {tr['seconds']:.0f} s for all models and seeds.",
        "", "```", results["command"], "```", "",
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['gpu'] or 'no GPU'}, torch {m['torch']}, "
        f"objkit {m['objkit']} @ {m['objkit_commit'] or 'unknown commit'}"
        + ("" if load is None else f"; load average at start {load[0]:.1f}"), ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pairs-dir", type=Path, required=True, help="holds train.PIVOT-XX.{PIVOT,XX}")
    p.add_argument("--pivot", default="en")
    p.add_argument("--langs", type=lambda s: [x for x in s.split(",") if x], required=True, help="de,fr,es,ru")
    p.add_argument("--task", default="sib200")
    p.add_argument("--task-dir", type=Path, required=True, help="the task's data (SIB-200 layout by default)")
    p.add_argument("--tatoeba-dir", type=Path, required=True)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--recipes", default="quickstart_mlm,quickstart_infoxlm,quickstart_no_xlco", help="comma-separated recipe names or .toml paths")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--finetune", default="--lr 5e-4 --epochs 10 --batch-size 32",
                   help="options passed to objkit eval transfer (quickstart-size models)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every run")
    p.add_argument("--fresh", action="store_true", help="retrain rows that already finished")
    args = p.parse_args(argv)

    for x in args.langs:
        for side in (args.pivot, x):
            if not (args.pairs_dir / f"train.{args.pivot}-{x}.{side}").is_file():
                die(f"missing {args.pairs_dir / f'train.{args.pivot}-{x}.{side}'}")
    out: Path = args.output
    (out / "logs").mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine_info(), "runs": {}}
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    exports: list[str] = []
    for spec in [s.strip() for s in args.recipes.split(",") if s.strip()]:
        path = recipe_path(spec)
        name, run_dir = path.stem, out / "runs" / path.stem
        cmd = [*OBJKIT, "run", str(path), "-o", str(run_dir), "--no-progress"]
        cmd += [x for s in data_overrides(args, args.steps) for x in ("--set", s)]
        if args.fresh:
            cmd.append("--fresh")
        old = previous.get("runs", {}).get(name, {})
        export = run_dir / "export" / "config.json"
        if export.is_file() and not args.fresh:
            timing = {k: old.get(k) for k in ("train_seconds", "first_log_seconds", "loadavg_after_train")}
            if not timing["train_seconds"]:
                timing["train_seconds"] = export.stat().st_mtime - (run_dir / "recipe.toml").stat().st_mtime
            print(f"[{name}] trained already ({run_dir}); --fresh retrains", file=sys.stderr)
        else:
            timing = train(name, cmd, run_dir, out / "logs" / f"{name}.train.log", args.steps)
        langs = [TATOEBA[x] for x in args.langs if x in TATOEBA]
        tcmd = [*OBJKIT, "eval", "tatoeba", str(run_dir / "export"), "--data-dir", str(args.tatoeba_dir),
                "--langs", ",".join(langs), "--json"]
        results["runs"][name] = {"recipe": str(path), "command": shlex.join(cmd), **timing,
                                 "tatoeba": run_json(tcmd, out / "logs" / f"{name}.eval.log")}
        exports.append(f"{name}={run_dir / 'export'}")
        (out / "results.json").write_text(json.dumps({**previous, **results, "runs": {
            **previous.get("runs", {}), **results["runs"]}}, indent=2) + "\n")  # a later call skips this row
    task_langs = [SIB.get(x, x) for x in [args.pivot, *args.langs]] if args.task == "sib200" else [args.pivot, *args.langs]
    cmd = [*OBJKIT, "eval", "transfer", *exports, "--task", args.task, "--data-dir", str(args.task_dir),
           "--langs", ",".join(task_langs), "--train-langs", task_langs[0], "--seeds", args.seeds,
           *shlex.split(args.finetune), "--json"]
    print(f"transfer: {shlex.join(cmd)}", file=sys.stderr)
    started = time.perf_counter()
    results["transfer"] = run_json(cmd, out / "logs" / "transfer.log")
    results["transfer"]["seconds"] = time.perf_counter() - started
    results["transfer_command"] = shlex.join(cmd)
    (out / "transfer.json").write_text(json.dumps(results["transfer"], indent=2) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
