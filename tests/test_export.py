"""``objkit export``: any complete checkpoint of a run as a transformers model folder with a model
card, the same bytes as the run's own export, from single-file and sharded checkpoints and from
a run stopped by SIGTERM; ``--sentence-transformers``; ownership of the folders it writes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from objkit.cli import main
from objkit.contract.errors import UserError
from objkit.data.ownership import MANIFEST
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.runner import run_recipe
from tiny_recipes import tiny_recipe

pytestmark = pytest.mark.slow

SENTENCES = ["the cat sat on the mat", "Deutschland und Frankreich", "janvier", "Montag, Dienstag, Mittwoch"]

# MLM, and TLM with language embeddings: the export rebuilds the token-type table it grows
RECIPE = 'description = "A tiny encoder for the export tests."\n' + tiny_recipe("export-test") + """
[objectives.mlm]
data = "mono"
weight = 1.0
[objectives.tlm]
data = "parallel"
weight = 0.5
language_embeddings = true
languages = ["en", "de", "fr"]
[train]
steps = 4
batch_size = 4
lr = 2e-3
warmup_steps = 1
seed = 3
log_every = 1
checkpoint_every = 2
keep_checkpoints = 3
[eval]
every = 2
[eval.sets.pairs]
src = "SRC"
tgt = "TGT"
"""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("recipe")
    (folder / "src.txt").write_text("German\nFrench\nEnglish\n", encoding="utf-8")
    (folder / "tgt.txt").write_text("Deutsch\nFranzösisch\nEnglisch\n", encoding="utf-8")
    path = folder / "export.toml"
    path.write_text(RECIPE.replace("SRC", str(folder / "src.txt")).replace("TGT", str(folder / "tgt.txt")))
    return path


def _run(recipe_path: Path, out: Path, *overrides: str) -> Path | None:
    return run_recipe(load_recipe(recipe_path, list(overrides)), out, default_registry(), progress=False)


@pytest.fixture(scope="module")
def finished(recipe_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    _run(recipe_path, out)
    return out


def objkit(*args: str) -> tuple[int, str]:
    """``objkit ARGS`` in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main([*args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def _same_bytes(a: Path, b: Path, names: tuple[str, ...]) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


# ----------------------------------------------------------------------------- the same bytes
def test_the_last_checkpoint_exports_the_runs_own_export_bytes_with_a_model_card(finished, tmp_path):
    out = tmp_path / "exported"
    code, err = objkit("export", str(finished), "-o", str(out))
    assert code == 0, err
    assert f"exported {finished}/checkpoints/step_0000004 (step 4) to {out}" in err
    _same_bytes(finished / "export", out, ("model.safetensors", "config.json", "recipe.toml", *TOKENIZER_FILES))
    assert json.loads((out / "objkit.json").read_text())["step"] == 4

    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "# export-test" in card and "A tiny encoder for the export tests." in card
    assert "checkpoint `step_0000004`, step 4 of 4" in card and "not finished" not in card
    assert "| mlm | mlm | 1 | mono |" in card and "| tlm | tlm | 0.5 | parallel |" in card  # objectives, weights
    assert "- `mono`: " in card and "type=cldr" in card  # the data sources
    assert 'AutoModel.from_pretrained("PATH")' in card
    # the evaluation the run measured at step 4: the values of metrics.jsonl
    evals = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    at_4 = next(r for r in evals if r["step"] == 4 and "eval/pairs/acc" in r)
    assert "Measured during training at step 4" in card
    assert f"| pairs/acc | {at_4['eval/pairs/acc']:.4g} |" in card
    # the run's own export has the card too (the end of training)
    assert "the end of training, step 4 of 4" in (finished / "export" / "README.md").read_text()


def test_an_earlier_checkpoint_loads_with_auto_classes_and_holds_its_weights(finished, tmp_path):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

    out = tmp_path / "step2"
    code, err = objkit("export", str(finished), "--checkpoint", "step_2", "-o", str(out))
    assert code == 0, err
    saved = load_file(str(finished / "checkpoints" / "step_0000002" / "model.safetensors"))
    exported = load_file(str(out / "model.safetensors"))
    tied = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight"}  # saved once by save_pretrained
    for key, tensor in saved.items():  # the encoder's state: keys "mlm.<transformers name>"
        name = key.removeprefix("mlm.")
        assert torch.equal(exported[tied.get(name, name) if name not in exported else name], tensor), key
    assert not torch.equal(exported["roberta.embeddings.word_embeddings.weight"],
                           load_file(str(finished / "export" / "model.safetensors"))["roberta.embeddings.word_embeddings.weight"])
    assert exported["roberta.embeddings.token_type_embeddings.weight"].shape[0] == 3  # TLM's language embeddings
    assert "checkpoint `step_0000002`, step 2 of 4" in (out / "README.md").read_text()
    assert "Training had not finished" in (out / "README.md").read_text()

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    body = AutoModel.from_pretrained(out).eval()
    mlm = AutoModelForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        hidden = body(**batch).last_hidden_state
        logits = mlm(**batch).logits
    assert hidden.shape == (len(SENTENCES), batch["input_ids"].shape[1], 32)
    assert logits.shape[-1] == len(tokenizer)
    assert torch.allclose(mlm.roberta.embeddings.word_embeddings.weight, exported["roberta.embeddings.word_embeddings.weight"])


def test_a_sharded_checkpoint_exports_the_same_bytes(recipe_path, tmp_path):
    run = tmp_path / "run"
    _run(recipe_path, run, 'train.checkpoint_format="sharded"', "train.steps=2", "eval.every=100")
    assert (run / "checkpoints" / "step_0000002" / "shards").is_dir()
    out = tmp_path / "exported"
    code, err = objkit("export", str(run), "-o", str(out))
    assert code == 0, err
    _same_bytes(run / "export", out, ("model.safetensors", "config.json", *TOKENIZER_FILES))


# ----------------------------------------------------------------------------- a run stopped by SIGTERM
def _stopped_run(recipe_path: Path, out: Path, tmp: Path) -> str:
    """``objkit run`` in a subprocess, parked before step 3, SIGTERM'd: checkpoints 2 and 3."""
    marker, log = tmp / "paused", tmp / "stderr.txt"
    env = dict(os.environ, OBJKIT_TEST_PAUSE="step@3", OBJKIT_TEST_PAUSE_MARKER=str(marker))
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "objkit", "run", str(recipe_path), "-o", str(out), "--no-progress"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 75, log.read_text()  # stopped, resumable (EX_TEMPFAIL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return log.read_text()


def test_a_run_stopped_by_sigterm_exports_for_transformers_and_sentence_transformers(recipe_path, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    from objkit.eval.retrieval import default_layer, encode_sentences

    run = tmp_path / "run"
    stderr = _stopped_run(recipe_path, run, tmp_path)
    assert "stopped by SIGTERM at step 3 of 4" in stderr and not (run / "export").exists()
    out = tmp_path / "exported"
    code, err = objkit("export", str(run), "-o", str(out), "--sentence-transformers")
    assert code == 0, err
    assert f"(step 3) to {out}" in err
    card = (out / "README.md").read_text()
    assert "step 3 of 4" in card and "Training had not finished" in card
    layer = default_layer(2)  # 1 of 2: the retrieval evaluator's layer for this depth
    assert f"--layer {layer} --pooling mean --max-length 32" in card and "not the last one" in card
    assert json.loads((out / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 32, "do_lower_case": False, "config_args": {"num_hidden_layers": layer}}
    assert json.loads((out / "modules.json").read_text())[1]["path"] == "1_Pooling"
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModel.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    by_hand = encode_sentences(model, tokenizer, SENTENCES, layer=layer, pooling="mean", max_length=32)

    st = pytest.importorskip("sentence_transformers", reason="pip install 'objkit[st]' for the SentenceTransformer check")
    sentence_model = st.SentenceTransformer(str(out), device="cpu")
    vectors = sentence_model.encode(SENTENCES, convert_to_tensor=True).cpu()
    assert vectors.shape == by_hand.shape
    assert torch.allclose(vectors, by_hand, atol=1e-5), (vectors - by_hand).abs().max()


# ----------------------------------------------------------------------------- ownership and bad input
def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_into_a_folder_holding_a_users_file_is_refused_and_touches_nothing(finished, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    code, err = objkit("export", str(finished), "-o", str(target))
    assert code == 2
    assert err == (f"{target}: exists and objkit did not write it; objkit replaces only what it wrote "
                   "(move it away or choose another -o)\n")
    assert _tree(target) == {"notes.txt": b"mine"} and sorted(os.listdir(tmp_path)) == ["mine"]
    # an export objkit wrote is replaced whole; a user's file put into it afterwards is refused by name
    out = tmp_path / "exported"
    assert objkit("export", str(finished), "--checkpoint", "2", "-o", str(out))[0] == 0
    assert objkit("export", str(finished), "-o", str(out))[0] == 0
    assert json.loads((out / "objkit.json").read_text())["step"] == 4
    (out / "my_model.bin").write_text("x")
    code, err = objkit("export", str(finished), "-o", str(out))
    assert code == 2 and "(my_model.bin not written by objkit)" in err and len(err.splitlines()) == 1
    assert (out / "my_model.bin").read_text() == "x"


def test_a_run_whose_export_folder_holds_a_users_file_is_refused_before_training(recipe_path, tmp_path):
    out = tmp_path / "d"
    (out / "export").mkdir(parents=True)
    (out / "export" / "my_model.bin").write_text("x\n")
    code, err = objkit("run", str(recipe_path), "-o", str(out), "--no-progress")
    assert code == 2
    assert err == (f"{out}/export: exists and objkit did not write it; objkit run writes its export there and "
                   "replaces only what it wrote (move it away or choose another -o)\n")
    assert (out / "export" / "my_model.bin").read_text() == "x\n"
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()  # nothing trained


def test_rerunning_a_run_whose_export_got_a_users_file_is_refused_before_resuming(recipe_path, finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "export" / "notes.txt").write_text("mine")
    before = _tree(run)
    code, err = objkit("run", str(recipe_path), "-o", str(run), "--no-progress")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"{run}/export: exists and objkit did not write it (notes.txt not written by objkit)")
    assert _tree(run) == before  # nothing resumed, nothing written
    code, err = objkit("run", str(recipe_path), "-o", str(run), "--no-progress", "--fresh")
    assert code == 2 and (run / "export" / "notes.txt").read_text() == "mine"  # --fresh does not remove it either


def test_the_trainers_export_refuses_a_users_file_in_export(recipe_path, finished, tmp_path):
    from objkit.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "export" / "my_model.bin").write_text("x")
    before = _tree(run / "export")
    trainer = Trainer(load_recipe(recipe_path), run, default_registry(), progress=False)
    trainer.fit()  # resumes at step 4: nothing left to train
    with pytest.raises(UserError, match=r"/export: exists and objkit did not write it \(my_model.bin not written"):
        trainer.export()
    assert _tree(run / "export") == before
    (run / "export" / "my_model.bin").unlink()
    assert trainer.export() == run / "export" and MANIFEST in os.listdir(run / "export")


@pytest.mark.parametrize("umask", [0o077, 0o022])
def test_exported_files_follow_the_umask(finished, tmp_path, umask):
    previous = os.umask(umask)
    try:
        code, err = objkit("export", str(finished), "-o", str(tmp_path / "out"), "--sentence-transformers")
    finally:
        os.umask(previous)
    assert code == 0, err
    for path in [tmp_path / "out", *(tmp_path / "out").rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_bad_run_directories_and_checkpoints_are_one_line(finished, tmp_path):
    code, err = objkit("export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o"))
    assert (code, err) == (2, f"RUN_DIR {tmp_path}/nowhere: not a directory (expected the -o folder of objkit run)\n")
    (tmp_path / "empty").mkdir()
    code, err = objkit("export", str(tmp_path / "empty"), "-o", str(tmp_path / "o"))
    assert code == 2 and err.startswith(f"RUN_DIR {tmp_path}/empty: no complete checkpoint in") and err.count("\n") == 1
    code, err = objkit("export", str(finished), "--checkpoint", "step_9", "-o", str(tmp_path / "o"))
    assert (code, err) == (2, f"--checkpoint step_9: no complete checkpoint of that step in {finished}/checkpoints "
                              "(there are: step_0000002, step_0000004; expected step_N or N)\n")
    code, err = objkit("export", str(finished), "-o", str(finished / "checkpoints" / "x"))
    assert code == 2 and "inside the run's own files" in err
    assert not (tmp_path / "o").exists()

    run = tmp_path / "damaged"
    shutil.copytree(finished, run)
    weights = run / "checkpoints" / "step_0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = objkit("export", str(run), "--checkpoint", "step_0000004", "-o", str(tmp_path / "o"))
    assert (code, err.splitlines()[-1]) == (2, f"{weights.parent}: model.safetensors has {weights.stat().st_size} bytes, "
                                               f"the manifest says {weights.stat().st_size + 100}; export another "
                                               "checkpoint (--checkpoint)")
    code, err = objkit("export", str(run), "-o", str(tmp_path / "o"))  # the newest is damaged: the one before
    assert code == 0 and f"warning: checkpoint {weights.parent}: model.safetensors has" in err
    assert json.loads((tmp_path / "o" / "objkit.json").read_text())["step"] == 2


def test_the_card_reports_the_evaluations_of_the_run_directory(tmp_path):
    """Without training: metrics.jsonl records and results saved as eval*.json in the run directory."""
    from objkit.train.model_card import CardInfo, SentenceSpec, model_card

    records = [{"step": 2, "mlm/loss": 5.0}, {"step": 2, "eval/pairs/acc": 40.0},
               {"step": 4, "eval/pairs/acc": 55.5, "eval/xnli/avg": 61.25}, {"step": 6, "eval/pairs/acc": 70.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "ev')
    (tmp_path / "eval-tatoeba.json").write_text(json.dumps({"model": "runs/x/export", "avg": {"mean": 33.3}}))
    (tmp_path / "eval-broken.json").write_text("{")
    recipe = {"name": "r", "objectives": {"mlm": {"plugin": "mlm", "weight": 1.0, "data": "mono"},
                                          "off": {"plugin": "tlm", "enabled": False, "data": "mono"}},
              "data": {"mono": {"type": "text", "files": [{"path": "a.txt", "lang": "en"}]}}, "train": {"steps": 8}}
    card = model_card(CardInfo(recipe=recipe, step=4, total_steps=8, run_dir=tmp_path, checkpoint="step_0000004"))
    assert "Measured during training at step 4" in card
    assert "| pairs/acc | 55.5 |" in card and "| xnli/avg | 61.25 |" in card and "70" not in card
    assert "- `eval-tatoeba.json` (model evaluated: `runs/x/export`): avg.mean 33.3" in card
    assert "- `eval-broken.json`: not readable as JSON" in card
    assert "| mlm | mlm | 1 | mono |" in card and "| off |" not in card  # a disabled objective is not trained
    assert '- `mono`: type=text, files=[{"path": "a.txt", "lang": "en"}]' in card
    card = model_card(CardInfo(recipe=recipe, step=3, total_steps=8, run_dir=tmp_path, checkpoint="step_0000003",
                               sentence=SentenceSpec(layer=12, num_layers=12, pooling="cls", max_seq_length=128)))
    assert "No evaluation of step 3 was found" in card and "The latest earlier one, step 2" in card
    assert "| pairs/acc | 40 |" in card
    assert "the first token's (`<s>`) vector" in card and "not the last one" not in card
