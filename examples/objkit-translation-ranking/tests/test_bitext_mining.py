"""The bitext_mining evaluator: the ratio margin, LASER's candidate mining and the F1 sweep by hand;
then as installed: listed by objkit, ``objkit eval bitext_mining`` on an export, and ``[eval.NAME]``
during ``objkit run`` (one process, and two FSDP ranks on gloo, where the evaluator gets the
gathered weights): the score logged at the last step is the one ``objkit eval`` gives the export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from objkit import UserError
from objkit_translation_ranking.mining import (
    BitextMining,
    BitextMiningConfig,
    margin_scores,
    mine,
    mining_f1,
)

PAIRS = [
    ("The cat sleeps on the sofa.", "Die Katze schläft auf dem Sofa."),
    ("I drink coffee every morning.", "Ich trinke jeden Morgen Kaffee."),
    ("The train leaves at seven.", "Der Zug fährt um sieben ab."),
    ("My sister lives in Berlin.", "Meine Schwester wohnt in Berlin."),
    ("It is raining again today.", "Heute regnet es schon wieder."),
    ("We bought a new car.", "Wir haben ein neues Auto gekauft."),
    ("The book is on the table.", "Das Buch liegt auf dem Tisch."),
    ("He plays the piano well.", "Er spielt gut Klavier."),
]
SRC_DISTRACTORS = ["The museum opens on Monday.", "Children love ice cream."]
TGT_DISTRACTORS = ["Der Hund bellt laut.", "Die Sonne scheint hell.", "Wir gehen ins Kino."]


def unit(*rows: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_margin_is_the_ratio_to_the_neighbourhoods():
    src = unit([1.0, 0.0], [0.6, 0.8], [0.0, 1.0])
    tgt = unit([0.9, 0.1], [0.1, 0.9])
    scores = margin_scores(src, tgt, k=2)
    sims = src @ tgt.T
    for i in range(3):
        for j in range(2):
            knn_x = sims[i].sort(descending=True).values[:2].mean()  # k = 2 of 2 targets
            knn_y = sims[:, j].sort(descending=True).values[:2].mean()  # k = 2 of 3 sources
            assert float(scores[i, j]) == pytest.approx(float(sims[i, j] / ((knn_x + knn_y) / 2)), rel=1e-6)


def test_mining_keeps_each_sentence_once_best_first():
    scores = torch.tensor([[1.2, 0.9, 0.1],
                           [1.1, 0.3, 0.2],
                           [0.2, 0.4, 1.05]])  # source 1's best target (0) is taken by source 0
    assert mine(scores) == [(pytest.approx(1.2), 0, 0), (pytest.approx(1.05), 2, 2)]


def test_f1_at_the_best_and_at_a_fixed_threshold():
    candidates = [(1.3, 0, 0), (1.2, 1, 1), (1.1, 5, 4), (1.0, 2, 2), (0.9, 6, 3)]
    gold = {(0, 0), (1, 1), (2, 2), (3, 3)}
    best = mining_f1(candidates, gold)
    # keep 4: 3 right of 4 (P 75, R 75) beats keep 2: 2 of 2 (P 100, R 50, F1 66.7)
    assert best["threshold"] == 1.0 and best["precision"] == 75.0 and best["recall"] == 75.0
    assert best["f1"] == pytest.approx(75.0)
    fixed = mining_f1(candidates, gold, threshold=1.15)
    assert fixed == {"f1": pytest.approx(200 * 1.0 * 0.5 / 1.5), "precision": 100.0, "recall": 50.0,
                     "threshold": 1.15}


def test_ties_are_kept_together():
    candidates = [(1.0, 0, 0), (1.0, 1, 7)]  # one threshold keeps both or neither
    best = mining_f1(candidates, {(0, 0)})
    assert best["precision"] == 50.0 and best["recall"] == 100.0


def _write_data(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = {"src": [p[0] for p in PAIRS], "tgt": [p[1] for p in PAIRS],
             "src_distractors": SRC_DISTRACTORS, "tgt_distractors": TGT_DISTRACTORS}
    paths = {}
    for key, lines in files.items():
        paths[key] = root / f"{key}.txt"
        paths[key].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def test_config_reads_and_checks_the_files(tmp_path):
    paths = _write_data(tmp_path)
    evaluator = BitextMining(BitextMiningConfig(src=str(paths["src"]), tgt=str(paths["tgt"]),
                                                tgt_distractors=str(paths["tgt_distractors"]), max_lines=6))
    assert len(evaluator.src) == 6 and len(evaluator.tgt) == 6 + 3 and evaluator.gold == {(i, i) for i in range(6)}
    (tmp_path / "blank.txt").write_text("one\n\nthree\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"blank.txt: line 2 is blank"):
        BitextMining(BitextMiningConfig(src=str(paths["src"]), tgt=str(paths["tgt"]),
                                        src_distractors=str(tmp_path / "blank.txt")))


def _objkit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "objkit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_listed_by_objkit_with_a_command_from_its_config():
    rows = json.loads(_objkit("list-plugins", "--json").stdout)
    row = next(r for r in rows if r["name"] == "bitext_mining")
    assert (row["kind"], row["distribution"], row["status"]) == ("evaluator", "objkit-translation-ranking", "ok")
    help_text = _objkit("eval", "bitext_mining", "--help").stdout
    assert "--src-distractors" in help_text and "--k" in help_text and "--threshold" in help_text
    assert help_text.strip().split("\n\n")[-1].lstrip().startswith("Examples:")
    bad = _objkit("eval", "bitext_mining", "some-model", "--src", "a.txt", "--tgt", "b.txt", "--k", "0")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "--k: Input should be greater than 0 (got 0)"], bad.stderr


RECIPE = """
[model]
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
max_length = 32
dropout = 0.0
tokenizer = {{ vocab_size = 400 }}
[data.mono]
type = "cldr"
kind = "text"
locales = ["en", "de"]
[objectives.mlm]
data = "mono"
[train]
steps = 4
batch_size = 8
lr = 2e-3
seed = 3
log_every = 1
checkpoint_every = 4
[eval]
every = 2
[eval.mining]
plugin = "bitext_mining"
src = "{src}"
tgt = "{tgt}"
src_distractors = "{src_distractors}"
tgt_distractors = "{tgt_distractors}"
"""


def _run_and_compare(tmp_path: Path, *run_args: str) -> None:
    paths = _write_data(tmp_path / "data")
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(**{k: str(v) for k, v in paths.items()}), encoding="utf-8")
    out = tmp_path / "run"
    done = _objkit("run", str(recipe), "-o", str(out), "--no-progress", *run_args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/mining/f1" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"eval/mining/precision", "eval/mining/recall", "eval/mining/threshold"} <= set(evals[-1])
    assert 0.0 <= evals[-1]["eval/mining/f1"] <= 100.0
    cli = _objkit("eval", "bitext_mining", str(out / "export"), "--src", str(paths["src"]), "--tgt", str(paths["tgt"]),
                  "--src-distractors", str(paths["src_distractors"]), "--tgt-distractors",
                  str(paths["tgt_distractors"]), "--max-length", "32", "--device", "cpu", "--json")
    assert cli.returncode == 0, cli.stderr
    result = json.loads(cli.stdout)
    for key in ("f1", "precision", "recall", "threshold"):  # the last step's weights are the export's
        assert result[key] == pytest.approx(evals[-1][f"eval/mining/{key}"], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_during_a_run_and_on_its_export(tmp_path):
    _run_and_compare(tmp_path)


@pytest.mark.slow
def test_during_an_fsdp_run_on_two_ranks(tmp_path):
    """Two gloo ranks, the encoder sharded by FSDP: the evaluator gets the gathered weights."""
    _run_and_compare(tmp_path, "--nproc", "2", "--set", "train.parallelism=fsdp")
