"""XLCO ablation benchmark: does adding cross-lingual contrast (XLCO) to MLM + TLM help retrieval?

Trains each recipe (default ``quickstart_infoxlm`` = MLM + TLM + XLCO and ``quickstart_no_xlco`` =
MLM + TLM) on the same N-way parallel corpus with ``objkit run``, then measures for each export:

* sentence retrieval on the corpus' validation split, ``val.PIVOT`` vs ``val.XX`` for every XX
  (top-1 accuracy in percent, both directions and their mean; ``objkit eval retrieval``);
* Tatoeba retrieval xx->en / en->xx, per language and averaged (``objkit eval tatoeba``);
* word alignment against gold links, with ``--align-dir`` (``objkit eval align --layer all``,
  SimAlign's argmax): AER, precision and recall at every layer for each ``--align-pairs`` pair
  (``DIR/A-B/test.A``, ``test.B`` and ``alignv2.txt``, else ``align.txt``);
* training wall time (the whole ``objkit run`` process: tokenizer training, training, export).

Both arms get the same data, the same ``--set`` overrides and the same evaluation layer/pooling.
Data: ``data.parallel`` = pairs PIVOT-XX of ``train.*``; ``data.mono`` = every ``train.*`` file as
monolingual text; the tokenizer is trained on ``mono`` only (each language once). Run::

    python benchmarks/xlco_ablation.py --corpus-dir data/multi30k --pivot en \
        --langs de,fr,cs --tatoeba-dir data/tatoeba --tatoeba-langs deu,fra,ces \
        -o bench-out/ablation [--steps N] [--set KEY=VALUE ...] [--layer N] [--skip-train] \
        [--recipes quickstart_xlm_align,quickstart_xlm_align_no_dwa \
         --align-dir data/alignment --align-pairs de-en,en-fr]

More rows: ``--recipes quickstart_infoxlm,quickstart_no_xlco,quickstart_mlm,quickstart_mbert_mlm`` adds
the XLM-R row (MLM only) and the mBERT-style row (MLM only on the ``bert`` encoder with its own
WordPiece tokenizer), all on the same data and settings: the seed table's rows at quickstart scale.

Writes OUT/results.json (everything), OUT/results.md (summary table), OUT/curves.png, OUT/runs/NAME/
(run directories) and OUT/logs/ (subprocess output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OBJKIT = ["objkit"] if shutil.which("objkit") else [sys.executable, "-m", "objkit"]


def die(message: str) -> None:
    sys.exit(f"xlco_ablation: error: {message}")


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid TOML basic string


def recipe_path(spec: str) -> Path:
    """A recipe name (``recipes/NAME.toml``) or a path to a TOML file."""
    path = Path(spec) if spec.endswith(".toml") else ROOT / "recipes" / f"{spec}.toml"
    if not path.is_file():
        die(f"recipe {spec!r} not found ({path})")
    return path


def data_overrides(args: argparse.Namespace, base: Any) -> list[str]:
    """``--set`` values that point ``data.mono``, ``data.parallel`` and the tokenizer at the corpus."""
    corpus, pivot = args.corpus_dir.resolve(), args.pivot

    def extra(name: str) -> str:  # keep the recipe's sampling_alpha for the replaced source
        src = base.recipe.data.get(name)
        return f",sampling_alpha={src.sampling_alpha}" if src is not None else ""

    pairs = ",".join(
        f"{{src={toml_str(str(corpus / f'train.{pivot}'))},tgt={toml_str(str(corpus / f'train.{x}'))},"
        f"src_lang={toml_str(pivot)},tgt_lang={toml_str(x)}}}" for x in args.langs)
    files = ",".join(f"{{path={toml_str(str(corpus / f'train.{x}'))},lang={toml_str(x)}}}"
                     for x in [pivot, *args.langs])
    sets = [f'data.parallel={{type="parallel",pairs=[{pairs}]{extra("parallel")}}}',
            f'data.mono={{type="text",files=[{files}]{extra("mono")}}}']
    if not isinstance(base.recipe.model.tokenizer, (str, type(None))):
        sets.append('model.tokenizer.sources=["mono"]')
    steps = args.steps if args.steps is not None else base.recipe.train.steps
    if args.steps is not None:
        sets.append(f"train.steps={args.steps}")
    # Retrieval on the validation pairs during training (eval/<lang>/acc), for the curves.
    eval_sets = ",".join(
        f"{x}={{src={toml_str(str(corpus / f'val.{pivot}'))},tgt={toml_str(str(corpus / f'val.{x}'))}}}"
        for x in args.langs)
    layer = f",layer={args.layer}" if args.layer is not None else ""
    sets.append(f'eval={{every={max(1, steps // 4)},pooling="{args.pooling}"{layer},sets={{{eval_sets}}}}}')
    return sets + list(args.set)


def check_inputs(args: argparse.Namespace) -> None:
    for split in ("train", "val"):
        for lang in [args.pivot, *args.langs]:
            f = args.corpus_dir / f"{split}.{lang}"
            if not f.is_file():
                die(f"corpus file missing: {f} (expected {split}.{{{','.join([args.pivot, *args.langs])}}} "
                    f"in --corpus-dir)")
    for pair in args.align_pairs if args.align_dir else []:
        align_files(args.align_dir, pair)  # dies on a missing file
    from objkit.contract.errors import UserError
    from objkit.eval.tatoeba import discover_languages, select_languages

    try:
        args.tatoeba_langs = select_languages(args.tatoeba_langs, discover_languages(args.tatoeba_dir))
    except UserError as exc:
        die(f"tatoeba: {exc}")


def align_files(root: Path, pair: str) -> tuple[Path, Path, Path]:
    """``ROOT/A-B/test.A``, ``test.B`` and the gold links (``alignv2.txt``: sure and possible, else
    ``align.txt``) of the alignment pair ``A-B``."""
    a, sep, b = pair.partition("-")
    if not (a and sep and b):
        die(f"--align-pairs {pair!r}: expected A-B, e.g. de-en")
    folder = root / pair
    gold = next((folder / g for g in ("alignv2.txt", "align.txt") if (folder / g).is_file()), folder / "alignv2.txt")
    for f in (folder / f"test.{a}", folder / f"test.{b}", gold):
        if not f.is_file():
            die(f"alignment file missing: {f} (expected test.{a}, test.{b} and alignv2.txt or align.txt in {folder})")
    return folder / f"test.{a}", folder / f"test.{b}", gold


def machine_info() -> dict[str, Any]:
    import torch

    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read-only git queries

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, env=env,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "objkit": metadata.version("objkit"),
        "objkit_commit": None if commit is None else commit + ("-dirty" if dirty else ""),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def train(name: str, cmd: list[str], run_dir: Path, log: Path, total: int) -> dict[str, float | None]:
    """Run ``objkit run`` (output to ``log``), printing the latest logged step. Each run gets its own
    (cold) datasets cache, so neither arm reuses the other's loaded and tokenized corpus."""
    print(f"[{name}] training ({total} steps): {shlex.join(cmd)}\n[{name}] log: {log}", file=sys.stderr)
    env = {**os.environ, "HF_DATASETS_CACHE": str((run_dir / "hf-datasets-cache").resolve())}
    started, first = time.perf_counter(), None
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        last = ""
        while proc.poll() is None:
            time.sleep(2)
            line = tail_metrics(run_dir / "metrics.jsonl")
            if line and line != last:
                last, first = line, first or time.perf_counter() - started
                print(f"[{name}] {time.perf_counter() - started:6.0f}s  {line}", file=sys.stderr)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").splitlines()
        die(f"[{name}] objkit run failed (exit {proc.returncode}): {lines[-1] if lines else ''} (see {log})")
    print(f"[{name}] done in {seconds:.0f}s", file=sys.stderr)
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None  # others' jobs skew timings
    return {"train_seconds": seconds, "first_log_seconds": first, "loadavg_after_train": load}


def tail_metrics(path: Path) -> str:
    try:
        rows = [r for r in path.read_text().splitlines() if r.strip()]
        row = json.loads(rows[-1])
    except (OSError, IndexError, json.JSONDecodeError):
        return ""
    shown = [f"step {row.get('step')}"] + [f"{k} {v:.4g}" for k, v in row.items()
                                           if k.endswith(("/loss", "/accuracy")) and isinstance(v, float)]
    return "  ".join(shown)


def run_json(cmd: list[str], log: Path) -> dict[str, Any]:
    with log.open("a") as fh:
        fh.write(f"$ {shlex.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True)
    if proc.returncode != 0:
        die(f"{shlex.join(cmd[:3])} failed (exit {proc.returncode}); see {log}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def evaluate(name: str, export: Path, args: argparse.Namespace, max_length: int,
             commands: list[str], log: Path) -> dict[str, Any]:
    started = time.perf_counter()
    opts = ["--pooling", args.pooling, "--max-length", str(max_length), "--json"]
    if args.layer is not None:
        opts[:0] = ["--layer", str(args.layer)]
    val = args.corpus_dir.resolve()
    retrieval: dict[str, Any] = {}
    for x in args.langs:
        cmd = [*OBJKIT, "eval", "retrieval", str(export), "--src", str(val / f"val.{args.pivot}"),
               "--tgt", str(val / f"val.{x}"), *opts]
        commands.append(shlex.join(cmd))
        print(f"[{name}] retrieval {args.pivot}<->{x}", file=sys.stderr)
        r = run_json(cmd, log)
        retrieval[f"{args.pivot}-{x}"] = {"n": r["n"], f"{args.pivot}2{x}": r["src2tgt"],
                                          f"{x}2{args.pivot}": r["tgt2src"], "mean": r["mean"],
                                          "layer": r["layer"], "pooling": r["pooling"]}
    retrieval["mean"] = sum(r["mean"] for r in retrieval.values()) / len(args.langs)
    cmd = [*OBJKIT, "eval", "tatoeba", str(export), "--data-dir", str(args.tatoeba_dir.resolve()),
           "--langs", ",".join(args.tatoeba_langs), *opts]
    commands.append(shlex.join(cmd))
    print(f"[{name}] tatoeba {','.join(args.tatoeba_langs)}", file=sys.stderr)
    tatoeba = run_json(cmd, log)
    alignment: dict[str, Any] = {}
    for pair in args.align_pairs if args.align_dir else []:
        src, tgt, gold = align_files(args.align_dir.resolve(), pair)
        cmd = [*OBJKIT, "eval", "align", str(export), "--src", str(src), "--tgt", str(tgt), "--gold", str(gold),
               "--layer", "all", "--method", args.align_method, "--json"]
        commands.append(shlex.join(cmd))
        print(f"[{name}] alignment {pair}", file=sys.stderr)
        alignment[pair] = run_json(cmd, log)
    return {"retrieval": retrieval, "tatoeba": tatoeba, "alignment": alignment,
            "seconds": time.perf_counter() - started}


def markdown(results: dict[str, Any]) -> str:
    a, m = results["args"], results["machine"]
    pairs = [f"{a['pivot']}-{x}" for x in a["langs"]]
    head = ([f"{a['pivot']}↔{x}" for x in a["langs"]] + ["mean"]
            + ["Tatoeba xx→en", "en→xx", "mean", "steps", "train time"])
    lines = ["| recipe | " + " | ".join(head) + " |", "|---" + "|---:" * len(head) + "|"]
    rows: list[list[float]] = []
    for name, run in results["runs"].items():
        ret, tat = run["eval"]["retrieval"], run["eval"]["tatoeba"]["average"]
        rows.append([ret[p]["mean"] for p in pairs] + [ret["mean"]] + [tat[k] for k in ("xx2en", "en2xx", "mean")])
        t = run["train_seconds"]
        cells = [f"{v:.2f}" for v in rows[-1]] + [str(run["steps"]), "n/a" if t is None else f"{t:.0f} s"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if len(rows) == 2:  # the ablation: first recipe minus second
        n1, n2 = results["runs"]
        lines.append(f"| Δ {n1} − {n2} | " + " | ".join(f"{x - y:+.2f}" for x, y in zip(*rows)) + " | | |")
    first = next(iter(results["runs"].values()))["eval"]
    n_val = first["retrieval"][pairs[0]]["n"]
    return "\n".join([
        f"# Ablation: {' vs '.join(results['runs'])}", "",
        f"Top-1 retrieval accuracy (%), layer {first['tatoeba']['layer']}, {first['tatoeba']['pooling']} pooling. "
        f"{a['pivot']}↔xx: `{a['corpus_dir']}/val.{a['pivot']}` vs `val.xx` ({n_val} sentences), mean of "
        f"both directions. Tatoeba: average over {', '.join(a['tatoeba_langs'])}. "
        "Train time: wall seconds of the whole `objkit run` (tokenizer training, data loading and "
        "tokenization with a cold cache, training, export), runs one after the other.",
        "", *lines, "", *alignment_markdown(results),
        "Reproduce:", "", f"```\n{results['command'].replace(' --skip-train', '')}\n```", "",
        machine_line(m), ""])


def alignment_markdown(results: dict[str, Any]) -> list[str]:
    """Word alignment: AER / precision / recall per pair at the evaluation layer (``--layer``, else
    objkit's default for the depth), and each run's lowest-AER layer for information only (it is
    picked on the gold test set itself)."""
    runs = results["runs"]
    pairs = list(next(iter(runs.values()))["eval"].get("alignment", {}))
    if not pairs:
        return []
    from objkit.eval.retrieval import default_layer

    a = results["args"]
    lines = ["| recipe | layer | " + " | ".join(f"{p} AER | P | R" for p in pairs) + " | lowest AER (layer) |",
             "|---|---:" + "|---:|---:|---:" * len(pairs) + "|---|"]
    rows: list[list[float]] = []
    for name, run in runs.items():
        al = run["eval"]["alignment"]
        depth = max(int(k) for k in al[pairs[0]]["layers"])
        layer = a["layer"] if a.get("layer") is not None else default_layer(depth)
        scores = [al[p]["layers"][str(layer)] for p in pairs]
        rows.append([s["aer"] for s in scores])
        best = ", ".join(f"{p} {al[p]['layers'][str(al[p]['best_layer'])]['aer']:.2f} ({al[p]['best_layer']})"
                         for p in pairs)
        cells = " | ".join(f"{s['aer']:.2f} | {s['precision']:.2f} | {s['recall']:.2f}" for s in scores)
        lines.append(f"| {name} | {layer} | {cells} | {best} |")
    if len(rows) == 2:
        n1, n2 = runs
        lines.append(f"| Δ {n1} − {n2} | | " + " | ".join(f"{x - y:+.2f} | |" for x, y in zip(*rows)) + " |")
    first = next(iter(runs.values()))["eval"]["alignment"]
    sizes = ", ".join(f"{p} {first[p]['n']} pairs" for p in pairs)
    return [f"Word alignment (`objkit eval align`, SimAlign's {a.get('align_method', 'argmax')}, gold "
            f"`{a['align_dir']}/PAIR/alignv2.txt`; {sizes}); AER, precision and recall in percent, "
            "lower AER is better:", "", *lines, ""]


def machine_line(m: dict[str, Any]) -> str:
    """One line saying where a benchmark ran (from :func:`machine_info`)."""
    load = m.get("loadavg_at_start")
    return (f"Machine: {m['processor']}, {m['cpu_count']} CPUs, {m['gpu'] or 'no GPU'}, torch {m['torch']}, "
            f"python {m['python']}, objkit {m['objkit']} @ {m['objkit_commit'] or 'unknown commit'}"
            + ("" if load is None else f"; load average at start {load[0]:.1f}"))


def readme_block(block: str, text: str) -> None:
    """Put ``text`` (less its title line) between the markers of ``block`` in the page that holds
    them (``docs/results/dwa.md`` for ``align`` and ``align-infoxlm``)."""
    from run import publish

    body = text.split("\n", 2)[2] if text.startswith("# ") else text
    begin = f"<!-- {block}:begin (generated by benchmarks/xlco_ablation.py --update-readme {block}) -->"
    publish(body, begin, f"<!-- {block}:end -->")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus-dir", type=Path, required=True, help="holds {train,val}.{PIVOT,LANGS}")
    p.add_argument("--pivot", default="en")
    p.add_argument("--langs", type=lambda s: [x for x in s.split(",") if x], required=True, help="de,fr,cs")
    p.add_argument("--tatoeba-dir", type=Path, required=True)
    p.add_argument("--tatoeba-langs", default="deu,fra,ces")
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--steps", type=int, help="train.steps for both runs (default: the recipes')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to both runs")
    p.add_argument("--recipes", default="quickstart_infoxlm,quickstart_no_xlco",
                   help="comma-separated recipe names (recipes/NAME.toml) or .toml paths")
    p.add_argument("--layer", type=int, help="eval layer (default: objkit eval's for the depth)")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    p.add_argument("--skip-train", action="store_true", help="evaluate the existing OUT/runs/*/export")
    p.add_argument("--align-dir", type=Path, help="gold word alignments: DIR/A-B/{test.A,test.B,alignv2.txt}")
    p.add_argument("--align-pairs", type=lambda s: [x for x in s.split(",") if x], default=["de-en", "en-fr"])
    p.add_argument("--align-method", choices=["argmax", "itermax", "match"], default="argmax")
    p.add_argument("--from-results", action="store_true",
                   help="run nothing: render OUT/results.json again (with --update-readme: into the docs)")
    p.add_argument("--update-readme", metavar="BLOCK",
                   help="also write the tables between '<!-- BLOCK:begin ...' and '<!-- BLOCK:end -->' of the "
                        "page holding them (README.md or docs/: align and align-infoxlm are in docs/results/dwa.md)")
    args = p.parse_args(argv)

    from objkit.contract.errors import UserError
    from objkit.recipe.loader import load_recipe

    out: Path = args.output
    if args.from_results:
        if not (out / "results.json").is_file():
            die(f"--from-results: no {out / 'results.json'}")
        text = markdown(json.loads((out / "results.json").read_text()))
        print(text)
        if args.update_readme:
            readme_block(args.update_readme, text)
        return
    check_inputs(args)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    specs = [s.strip() for s in args.recipes.split(",") if s.strip()]
    names: list[str] = []
    for spec in specs:  # unique run names, also when the same recipe is given twice
        stem = recipe_path(spec).stem
        names.append(stem if stem not in names else f"{stem}-{len(names) + 1}")
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results: dict[str, Any] = {
        "command": "python " + shlex.join(sys.argv if argv is None else [sys.argv[0], *argv]),
        "args": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}},
        "machine": machine_info(), "runs": {}}
    for spec, name in zip(specs, names):
        path = recipe_path(spec)
        try:
            sets = data_overrides(args, load_recipe(path))
            resolved = load_recipe(path, sets)  # fail fast on bad overrides, before any training
        except UserError as exc:
            die(str(exc).replace("\n", "; "))
        run_dir, commands = out / "runs" / name, []
        cmd = [*OBJKIT, "run", str(path), "-o", str(run_dir), "--no-progress"]
        cmd += [x for s in sets for x in ("--set", s)]
        commands.append(shlex.join(cmd))
        old = previous.get("runs", {}).get(name, {})
        if args.skip_train:
            timing = {k: old.get(k) for k in ("train_seconds", "first_log_seconds", "loadavg_after_train")}
        else:
            if run_dir.exists():  # objkit run would resume from its checkpoints
                shutil.rmtree(run_dir)
            timing = train(name, cmd, run_dir, out / "logs" / f"{name}.train.log", resolved.recipe.train.steps)
        export = run_dir / "export"
        if not (export / "config.json").is_file():
            die(f"[{name}] no export at {export} (train it first: drop --skip-train)")
        ev = evaluate(name, export, args, resolved.recipe.model.max_length, commands,
                      out / "logs" / f"{name}.eval.log")
        results["runs"][name] = {"recipe": str(path), "run_dir": str(run_dir), "steps": resolved.recipe.train.steps,
                                 "objectives": list(resolved.recipe.enabled_objectives()),
                                 **timing, "eval": ev, "commands": commands}
    cmd = [*OBJKIT, "plot", *(str(out / "runs" / n) for n in names), "-o", str(out / "curves.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    results["plot"] = {"command": shlex.join(cmd), "ok": proc.returncode == 0}
    if proc.returncode != 0:
        print(f"warning: objkit plot failed: {proc.stderr.strip()}", file=sys.stderr)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    if args.update_readme:
        readme_block(args.update_readme, markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'curves.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
