"""`objkit eval transfer`: task layouts, input checks, metrics, and fine-tuning on a tiny XLM-R.

The fine-tuning loop is checked against an independent implementation of the same protocol
(transformers' ``Trainer``: AdamW, linear schedule, clipping, best dev checkpoint loaded at the
end) and the entity F1 against ``seqeval``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from objkit.contract.errors import UserError
from objkit.eval.cli import eval_group
from objkit.eval.finetune import FinetuneSettings, encode_split, entity_f1
from objkit.eval.tasks import TASKS, Columns, load_task, match_languages, read_sentence_split
from objkit.eval.transfer import ModelSpec, evaluate_transfer, format_table
from tiny_models import tiny_encoder

ANIMALS, PLACES = ["cat", "dog"], ["house", "tree", "mat"]
FILLER = ["the", "a", "big", "small", "red"]
POS = {"the": "DET", "a": "DET", "big": "ADJ", "small": "ADJ", "red": "ADJ", "cat": "NOUN", "dog": "NOUN",
       "house": "NOUN", "tree": "NOUN", "mat": "NOUN", "sat": "VERB", "on": "ADP"}


def _sentence(rng: random.Random, label: str) -> str:
    noun = rng.choice(ANIMALS if label == "animals" else PLACES)
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 4))) + " " + noun


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    model, tokenizer = tiny_encoder(layers=2, head="mlm")  # an objkit export's layout
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def write_sib(root: Path, langs=("eng_Latn", "deu_Latn", "fra_Latn"), sizes=(48, 16, 20)) -> Path:
    """SIB-200 layout; every language holds the same sentences (a perfect translation)."""
    for lang in langs:
        rng = random.Random(0)
        (root / lang).mkdir(parents=True, exist_ok=True)
        for split, n in zip(("train", "dev", "test"), sizes):
            rows = ["index_id\tcategory\ttext"]
            for i in range(n):
                label = ("animals", "places")[i % 2]
                rows.append(f"{i}\t{label}\t{_sentence(rng, label)}")
            (root / lang / f"{split}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_xnli(root: Path, langs=("en", "de")) -> Path:
    rng = random.Random(1)
    root.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        for split, n in (("train", 30), ("dev", 9), ("test", 9)):
            rows = ["sentence1\tsentence2\tlabel"] if split == "train" else []
            for i in range(n):
                label = ("entailment", "neutral", "contradictory" if split != "train" else "contradiction")[i % 3]
                rows.append(f"{_sentence(rng, 'animals')}\t{_sentence(rng, 'places')}\t{label}")
            (root / f"{split}-{lang}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_tokens(root: Path, ner: bool, langs=("en", "de")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        rng = random.Random(2)
        for split, n in (("train", 40), ("dev", 10), ("test", 10)):
            blocks = []
            for _ in range(n):
                words = [rng.choice(FILLER), rng.choice(ANIMALS), "sat", "on", rng.choice(FILLER), rng.choice(PLACES)]
                if ner:
                    tags = ["B-ANI" if w in ANIMALS else "B-LOC" if w in PLACES else "O" for w in words]
                else:
                    tags = [POS[w] for w in words]
                blocks.append("\n".join(f"{w}\t{t}" for w, t in zip(words, tags)))
            (root / f"{split}-{lang}.tsv").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return root


def invoke(*args: str):
    return CliRunner().invoke(eval_group, ["transfer", *args])


def run_main(capsys, *args: str) -> tuple[int, str]:
    """``objkit eval transfer ARGS`` through the real entry point: (exit code, stderr)."""
    from objkit.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", "transfer", *args])
    return exc.value.code, capsys.readouterr().err


# ----------------------------------------------------------------------------- layouts
def test_xnli_layout_skips_the_header_and_reads_contradictory_as_contradiction(tmp_path):
    data = load_task(TASKS["xnli"], write_xnli(tmp_path / "xnli"), None, ["en"], "cross-lingual")
    assert data.languages == ["en", "de"] and data.train_langs == ["en"]
    train = data.splits[("train", "en")]
    assert len(train) == 30 and len(train.texts[0]) == 2
    assert data.label_names == ["contradiction", "entailment", "neutral"]
    assert "contradictory" not in data.splits[("test", "de")].labels


def test_two_letter_codes_find_sib200_directories(tmp_path):
    root = write_sib(tmp_path / "sib")
    data = load_task(TASKS["sib200"], root, ["de", "fra_Latn"], ["en"], "cross-lingual")
    assert data.train_langs == ["eng_Latn"]
    assert data.languages == ["eng_Latn", "deu_Latn", "fra_Latn"]
    with pytest.raises(UserError, match="'xx': not found"):
        match_languages(["xx"], ["eng_Latn"], "--langs")


def test_custom_jsonl_with_a_column_mapping(tmp_path):
    for split in ("train", "dev", "test"):
        rows = [{"premise": "the cat", "hyp": "a dog", "y": "yes"}, {"premise": "a tree", "hyp": "the mat", "y": "no"}]
        (tmp_path / f"{split}-en.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_task(TASKS["custom"], tmp_path, None, ["en"], "cross-lingual",
                     Columns.parse("text=premise,text_pair=hyp,label=y"))
    assert data.splits[("dev", "en")].texts == [("the cat", "a dog"), ("a tree", "the mat")]
    assert data.label_names == ["no", "yes"]


def test_token_labels_sit_on_the_first_subword(tmp_path, model_dir):
    from transformers import AutoTokenizer

    (tmp_path / "t.tsv").write_text("the\tO\ncat-dog\tB-ANI\nsat\tO\n")
    from objkit.eval.tasks import read_token_split

    split = read_token_split(tmp_path / "t.tsv")
    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = encode_split(split, tok, {"O": 0, "B-ANI": 1}, max_length=32)
    ids, targets = enc.input_ids[0], enc.targets[0]
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "the", "cat", "<unk>", "dog", "sat", "</s>"]
    assert targets == [-100, 0, 1, -100, -100, 0, -100]
    enc = encode_split(split, tok, {"O": 0, "B-ANI": 1}, max_length=5)  # room for "the" and nothing else whole
    assert enc.n_words == [1] and enc.targets[0] == [-100, 0, -100]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "deu_Latn" / "test.tsv").unlink(), r"deu_Latn/test.tsv: no such file \(task sib200 needs the test split"),
    (lambda d: (d / "deu_Latn" / "dev.tsv").write_text("index_id\tcategory\ttext\n1\tsports\tthe cat\n"),
     r"deu_Latn/dev.tsv: line 2: label 'sports' does not occur in the training data \(labels: animals, places\)"),
    (lambda d: (d / "fra_Latn" / "test.tsv").write_text(""), r"fra_Latn/test.tsv is empty"),
    (lambda d: (d / "eng_Latn" / "train.tsv").write_text("index_id\tcategory\ttext\n1\tanimals\tcat\n2\tplaces\n"),
     r"eng_Latn/train.tsv: line 3: 2 tab-separated columns, expected 3 \(index_id, category, text\)"),
])
def test_bad_task_files_are_one_line_and_exit_2(tmp_path, capsys, model_dir, damage, message):
    root = write_sib(tmp_path / "sib")
    damage(root)
    code, err = run_main(capsys, str(model_dir), "--task", "sib200", "--data-dir", str(root),
                         "--train-langs", "eng_Latn", "--seeds", "1")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]


def test_a_model_directory_that_does_not_load_is_one_line(tmp_path, capsys):
    root = write_sib(tmp_path / "sib")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    code, err = run_main(capsys, str(tmp_path / "broken"), "--task", "sib200", "--data-dir", str(root), "--seeds", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "broken: cannot load a model from this model directory" in err
    code, err = run_main(capsys, str(tmp_path / "nothing"), "--task", "sib200", "--data-dir", str(root), "--seeds", "1")
    assert code == 2 and len(err.strip().splitlines()) == 1, err  # a missing path: said so, no hub talk (issue 26)
    assert "nothing: no such model directory (expected an objkit export, a transformers model directory" in err


def test_xnli_row_with_the_wrong_number_of_columns(tmp_path):
    root = write_xnli(tmp_path / "xnli")
    with (root / "dev-de.tsv").open("a") as fh:
        fh.write("only one column\n")
    with pytest.raises(UserError, match=r"dev-de.tsv: line 10: 1 tab-separated columns, expected 3"):
        load_task(TASKS["xnli"], root, None, ["en"], "cross-lingual")


# ----------------------------------------------------------------------------- metrics
@pytest.mark.filterwarnings("ignore::UserWarning")  # seqeval: F-score ill-defined on empty sets
def test_entity_f1_agrees_with_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    rng = random.Random(0)
    labels = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG", "E-PER", "S-LOC"]
    for _ in range(200):
        gold = [[rng.choice(labels) for _ in range(rng.randint(1, 8))] for _ in range(rng.randint(1, 4))]
        pred = [[rng.choice(labels) if rng.random() < 0.5 else g for g in seq] for seq in gold]
        assert entity_f1(gold, pred) == pytest.approx(100 * seqeval.f1_score(gold, pred), abs=1e-9), (gold, pred)


# ----------------------------------------------------------------------------- fine-tuning
def test_cli_table_json_and_markdown(tmp_path, model_dir):
    root = write_sib(tmp_path / "sib")
    md = tmp_path / "table.md"
    args = [f"a={model_dir}", f"b={model_dir}", "--task", "sib200", "--data-dir", str(root),
            "--train-langs", "en", "--seeds", "1,2", "--lr", "3e-3", "--epochs", "6", "--batch-size", "8",
            "--dropout", "0"]
    result = invoke(*args, "--json", "--markdown", str(md))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["languages"] == ["eng_Latn", "deu_Latn", "fra_Latn"] and out["avg_over"] == ["deu_Latn", "fra_Latn"]
    a, b = out["models"]
    assert [s["seed"] for s in a["seeds"]] == [1, 2]
    assert a["mean"] == b["mean"]  # same model, data and seeds: same numbers
    assert a["seeds"][0]["test"] != a["seeds"][1]["test"] or a["seeds"][0]["curve"] != a["seeds"][1]["curve"]
    for seed in a["seeds"]:  # identical translations: zero-shot equals English exactly
        assert seed["test"]["deu_Latn"] == seed["test"]["eng_Latn"] == seed["test"]["fra_Latn"]
        assert seed["best_step"] == max(seed["curve"], key=lambda c: c["score"])["step"]
    assert a["mean"]["eng_Latn"] > 80 > out["majority"]["eng_Latn"] == 50.0
    assert out["settings"]["lr"] == 3e-3 and out["protocol"].startswith("XTREME")
    table = md.read_text()
    assert "| a | " in table and "majority class" in table and "±" in table
    lines = format_table(out, std=True).splitlines()
    assert lines[1].split() == ["model", "eng_Latn", "deu_Latn", "fra_Latn", "avg"]
    assert lines[2].startswith("a ") and "±" in lines[2] and lines[-1].startswith("majority class")


def test_translate_train_all_trains_on_every_language(tmp_path, model_dir):
    root = write_sib(tmp_path / "sib", sizes=(12, 6, 6))
    data = load_task(TASKS["sib200"], root, None, ["en"], "translate-train-all")
    assert data.train_langs == data.languages == ["deu_Latn", "eng_Latn", "fra_Latn"]
    settings = FinetuneSettings(epochs=1, lr=1e-3, batch_size=4)
    out = evaluate_transfer([ModelSpec("m", str(model_dir))], data, settings, [1], setting="translate-train-all")
    seed = out["models"][0]["seeds"][0]
    assert seed["steps"] == 9  # 36 training examples (3 languages) in batches of 4
    assert out["avg_over"] == data.languages


@pytest.mark.parametrize("task, metric", [("panx", "f1"), ("udpos", "accuracy")])
def test_token_level_tasks(tmp_path, model_dir, task, metric):
    root = write_tokens(tmp_path / task, ner=task == "panx")
    result = invoke(str(model_dir), "--task", task, "--data-dir", str(root), "--seeds", "1", "--lr", "3e-3",
                    "--epochs", "6", "--batch-size", "8", "--dropout", "0", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["metric"] == metric
    scores = out["models"][0]["mean"]
    assert scores["en"] == scores["de"] > out["majority"]["en"] + 20


def test_selection_and_scores_agree_with_the_transformers_trainer(tmp_path, model_dir):
    """Full-batch training (data order cannot differ), dropout 0: objkit's loop and transformers'
    Trainer (AdamW, linear decay, clip 1.0, eval every epoch on English dev, best model loaded at
    the end) must select the same epoch and score the same test accuracy."""
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    root = write_sib(tmp_path / "sib", langs=("eng_Latn", "deu_Latn"), sizes=(24, 10, 10))
    data = load_task(TASKS["sib200"], root, None, ["eng_Latn"], "cross-lingual")
    settings = FinetuneSettings(epochs=8, lr=1e-2, batch_size=24, dropout=0.0)
    ours = evaluate_transfer([ModelSpec("m", str(model_dir))], data, settings, [7])["models"][0]["seeds"][0]

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = {x: i for i, x in enumerate(data.label_names)}

    def dataset(split: str, lang: str) -> Dataset:
        s = data.splits[(split, lang)]
        enc = tok([t[0] for t in s.texts], truncation=True, max_length=128)
        return Dataset.from_dict({**enc, "labels": [ids[x] for x in s.labels]})

    set_seed(7)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"), per_device_train_batch_size=24, per_device_eval_batch_size=64,
        learning_rate=1e-2, num_train_epochs=8, weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0,
        lr_scheduler_type="linear", warmup_steps=0, eval_strategy="epoch", save_strategy="epoch",
        load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=None, seed=7,
        report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=dataset("train", "eng_Latn"),
                      eval_dataset=dataset("dev", "eng_Latn"), data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=lambda p: {"accuracy": 100 * float(np.mean(p.predictions.argmax(-1) == p.label_ids))})
    trainer.train()
    history = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    assert max(history) > min(history)  # it learns: the comparison is not of constant predictions
    assert [c["score"] for c in ours["curve"]] == pytest.approx(history, abs=1e-6)
    assert trainer.state.best_global_step == ours["best_step"]
    with torch.inference_mode():
        for lang in ("eng_Latn", "deu_Latn"):
            pred = trainer.predict(dataset("test", lang))
            acc = 100 * float(np.mean(pred.predictions.argmax(-1) == pred.label_ids))
            assert ours["test"][lang] == pytest.approx(acc, abs=1e-6)


def test_model_spec_names():
    assert ModelSpec.parse("runs/qi/export") == ModelSpec("qi/export", "runs/qi/export")
    assert ModelSpec.parse("base=xlm-roberta-base") == ModelSpec("base", "xlm-roberta-base")
    assert ModelSpec.parse("xlm-roberta-base").name == "xlm-roberta-base"


def test_custom_tsv_by_column_index(tmp_path):
    (tmp_path / "x.tsv").write_text("a cat\tyes\nthe dog\tno\n")
    split = read_sentence_split(TASKS["custom"], tmp_path / "x.tsv", Columns.parse("text=0,label=1"))
    assert split.texts == [("a cat",), ("the dog",)] and split.labels == ["yes", "no"] and split.lines == [1, 2]


@pytest.mark.slow
def test_transfer_during_training_is_logged_and_leaves_training_unchanged(tmp_path):
    """[eval.transfer] mid-run and at the end: eval/NAME/LANG and eval/NAME/avg in metrics.jsonl,
    no temporary model left, and the same weights as a run without it (dropout draws included)."""
    import torch
    from safetensors.torch import load_file

    from objkit.recipe.loader import load_recipe
    from objkit.contract.registry import default_registry
    from objkit.train.reporting import read_metrics
    from objkit.train.runner import run_recipe
    from tiny_recipes import tiny_recipe

    root = write_sib(tmp_path / "sib", sizes=(16, 6, 6))
    body = tiny_recipe("transfer-eval", dropout=0.1) + (
        '[objectives.mlm]\ndata = "mono"\n[train]\nsteps = 4\nbatch_size = 4\nlr = 2e-3\nseed = 5\n'
        "log_every = 2\ncheckpoint_every = 4\n")
    plain = tmp_path / "plain.toml"
    plain.write_text(body)
    with_eval = tmp_path / "eval.toml"
    with_eval.write_text(body + f'[eval.transfer.sib]\ntask = "sib200"\ndata_dir = "{root}"\n'
                         'train_langs = ["en"]\nepochs = 1\nlr = 1e-3\nbatch_size = 8\nevery = 2\n')
    for recipe, out in ((plain, "a"), (with_eval, "b")):
        run_recipe(load_recipe(recipe), tmp_path / out, default_registry(), progress=False)
    evals = [m for m in read_metrics(tmp_path / "b" / "metrics.jsonl") if "eval/sib/avg" in m]
    assert [m["step"] for m in evals] == [2, 4]
    assert {"eval/sib/eng_Latn", "eval/sib/deu_Latn", "eval/sib/fra_Latn"} <= set(evals[-1])
    assert not (tmp_path / "b" / "eval-transfer.tmp").exists()
    wa = load_file(str(tmp_path / "a" / "export" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "export" / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def test_transfer_eval_in_a_recipe_is_checked_before_training(tmp_path):
    from objkit.recipe.loader import load_recipe
    from objkit.eval.periodic import build_evaluators
    from objkit.contract.registry import default_registry

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[model]\npreset = "tiny"\ntokenizer = { vocab_size = 100 }\n[data.mono]\ntype = "cldr"\nkind = "text"\n'
        f'[objectives.mlm]\ndata = "mono"\n[train]\nsteps = 1\nbatch_size = 2\nlr = 1e-3\n[eval.transfer.x]\ntask = "sib200"\ndata_dir = "{tmp_path / "none"}"\n')
    resolved = load_recipe(recipe)
    with pytest.raises(UserError, match=r"^eval.transfer.x: --data-dir .*none: not a directory$"):
        build_evaluators(resolved.recipe.eval, resolved.eval_configs, default_registry())


def test_hub_rows_become_splits_with_label_names():
    from datasets import ClassLabel, Dataset, Features, Sequence, Value

    from objkit.eval.tasks import split_from_dataset

    feats = Features({"premise": Value("string"), "hypothesis": Value("string"),
                      "label": ClassLabel(names=["entailment", "neutral", "contradiction"])})
    ds = Dataset.from_dict({"premise": ["a", "b"], "hypothesis": ["c", "d"], "label": [2, 0]}, features=feats)
    split = split_from_dataset(ds, "xnli[de/test]", ("premise", "hypothesis"), "label", "sentence")
    assert split.texts == [("a", "c"), ("b", "d")] and split.labels == ["contradiction", "entailment"]
    tags = Features({"tokens": Sequence(Value("string")), "ner_tags": Sequence(ClassLabel(names=["O", "B-PER"]))})
    ds = Dataset.from_dict({"tokens": [["Ada", "wrote"]], "ner_tags": [[1, 0]]}, features=tags)
    split = split_from_dataset(ds, "xtreme[PAN-X.en/test]", ("tokens",), "ner_tags", "token")
    assert split.words == [["Ada", "wrote"]] and split.tags == [["B-PER", "O"]]
    with pytest.raises(UserError, match=r"xtreme\[PAN-X.en/test\]: no column 'text'"):
        split_from_dataset(ds, "xtreme[PAN-X.en/test]", ("text",), "ner_tags", "token")


def test_an_unreachable_uncached_hub_dataset_is_one_line_at_once(tmp_path, capsys, monkeypatch, model_dir):
    import objkit.blocks.hub

    monkeypatch.setattr(objkit.blocks.hub, "hub_unreachable_reason", lambda timeout=3.0: "no network here")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    code, err = run_main(capsys, str(model_dir), "--task", "xnli", "--data-dir", "objkit-test/no-such-xnli",
                         "--langs", "en,de", "--seeds", "1")
    assert code == 2 and err.strip() == ("--data-dir objkit-test/no-such-xnli[en/train]: cannot load (the hub is "
                                         "unreachable (no network here) and it is not cached)")
