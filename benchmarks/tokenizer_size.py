"""Size a from-scratch tokenizer from the data: the smallest vocabulary that serves every language.

The transfer table's rows are pretrained from scratch on the same text, with a tokenizer trained on
it (``[model.tokenizer]``). Its vocabulary size decides how many pieces each language's sentences
cost, and whether every script is covered at all. This script measures it instead of guessing:

1. the training sample is the one ``objkit`` itself trains the tokenizer on (``iter_source_texts``:
   the mono files read round-robin, at most ``--lines-per-file`` lines each, so a language with
   2,000 sentences weighs as much as one with 30,000);
2. for every candidate size it trains the recipe's SentencePiece unigram model
   (``objkit.data.tokenizer.train_tokenizer``, the same call ``objkit run`` makes) and tokenizes every
   language's *dev* sentences (SIB-200 dev: selection on dev, never test), recording pieces per
   sentence and the share of ``<unk>`` pieces;
3. the chosen size is the smallest whose pieces per sentence are, in every language, within
   ``--tolerance`` (10 %) of the largest candidate's: beyond it, more vocabulary buys little for any
   language and costs embedding rows (and LM-head time) in every step. ``<unk>`` is reported, not
   chosen on: it comes from characters the training text never shows (with ``--coverage 1.0``
   every character it shows is kept), which no vocabulary size fixes.

Run (prints a table and writes JSON)::

    python benchmarks/tokenizer_size.py --mono data/ntrex/ntrex.* data/newstest/train.* \
        --dev-dir data/sib200 -o bench-out/tokenizer-size.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

SIB_LANGS = ("eng_Latn", "deu_Latn", "fra_Latn", "spa_Latn", "rus_Cyrl", "arb_Arab", "bul_Cyrl", "ell_Grek",
             "hin_Deva", "swh_Latn", "tha_Thai", "tur_Latn", "urd_Arab", "vie_Latn", "zho_Hans")


def training_sample(files: list[Path], lines_per_file: int) -> list[str]:
    """What ``objkit run`` trains the tokenizer on for ``data.mono`` = these files and
    ``model.tokenizer.max_sentences = lines_per_file * len(files)``: the files read round-robin."""
    from objkit.data.sources import iter_source_texts
    from objkit_plugins.source_text import TextSource

    source = TextSource.model_validate({"type": "text", "files": [{"path": str(f), "lang": f.suffix.lstrip(".")} for f in files]})
    return list(iter_source_texts(source, lines_per_file * len(files), name="mono"))


def dev_sentences(dev_dir: Path, langs: list[str]) -> dict[str, list[str]]:
    out = {}
    for lang in langs:
        rows = (dev_dir / lang / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
        out[lang] = [r.split("\t")[-1] for r in rows if r.strip()]
    return out


def measure(sample: list[str], dev: dict[str, list[str]], size: int, coverage: float) -> dict[str, Any]:
    from objkit.data.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="objkit-tokenizer-size.") as tmp:
        tok = train_tokenizer(sample, Path(tmp), vocab_size=size, character_coverage=coverage,
                              max_sentences=len(sample))
        per_lang = {}
        for lang, sents in dev.items():
            ids = [tok(s, add_special_tokens=False)["input_ids"] for s in sents]
            n = sum(len(x) for x in ids)
            unk = sum(x.count(tok.unk_token_id) for x in ids)
            per_lang[lang] = {"pieces_per_sentence": n / len(ids), "unk_share": unk / max(n, 1)}
        return {"vocab_size": len(tok), "languages": per_lang}


def choose(results: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    best = results[-1]["languages"]
    for r in results:
        langs = r["languages"]
        if all(langs[x]["pieces_per_sentence"] <= (1 + tolerance) * best[x]["pieces_per_sentence"] for x in langs):
            return r
    return results[-1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mono", type=Path, nargs="+", required=True, help="the monolingual training files")
    p.add_argument("--dev-dir", type=Path, required=True, help="SIB-200 layout: LANG/dev.tsv")
    p.add_argument("--langs", default=",".join(SIB_LANGS))
    p.add_argument("--sizes", default="4000,8000,12000,16000,24000,32000")
    p.add_argument("--coverage", type=float, default=1.0, help="SentencePiece character_coverage")
    p.add_argument("--lines-per-file", type=int, default=2000)
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("-o", "--output", type=Path)
    args = p.parse_args(argv)
    files = sorted(set(args.mono))
    sample = training_sample(files, args.lines_per_file)
    dev = dev_sentences(args.dev_dir, [x for x in args.langs.split(",") if x])
    sizes = sorted(int(x) for x in args.sizes.split(","))
    results = []
    for size in sizes:
        r = measure(sample, dev, size, args.coverage)
        r["requested"] = size
        results.append(r)
        worst = max(r["languages"].items(), key=lambda kv: kv[1]["unk_share"])
        print(f"vocab {size:6d}: pieces/sentence " + " ".join(
            f"{k[:3]} {v['pieces_per_sentence']:.0f}" for k, v in r["languages"].items())
            + f" | max unk {max(v['unk_share'] for v in r['languages'].values()):.4f} ({worst[0]})",
            file=sys.stderr)
    chosen = choose(results, args.tolerance)
    out = {"files": [str(f) for f in files], "sample_sentences": len(sample), "lines_per_file": args.lines_per_file,
           "coverage": args.coverage, "tolerance": args.tolerance,
           "results": results, "chosen": chosen["requested"]}
    print(f"chosen vocab_size: {chosen['requested']} (the smallest within {args.tolerance:.0%} of "
          f"{sizes[-1]}'s pieces per sentence in every language)", file=sys.stderr)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
