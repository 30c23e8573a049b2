"""Smoke test of the performance suite (benchmarks/run.py): every benchmark runs at toy sizes
and the outputs have their documented shape. No timing is asserted: toy numbers mean nothing."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")  # transformers.Trainer, the vs_hf_trainer baseline

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("objkit_bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_every_benchmark_runs_at_toy_size(run, tmp_path):
    doc = run.run_suite(run.Settings.toy(), workdir=tmp_path / "work")
    for key in run.BENCHMARKS:
        assert isinstance(doc[key], float) and math.isfinite(doc[key]) and doc[key] > 0, key
        assert doc["goals"][key]["goal"].startswith((">=", "<="))
    details = doc["details"]
    assert details["xlco_step_ratio"]["xlco_input_lengths"] == {"xlco_query": 16, "xlco_key": 16}
    assert 0 < details["xlco_step_ratio"]["truncation"]["truncated_over_full_depth"]
    assert details["mlm_head_speedup"]["model"]["vocab"] == 6000
    memory = details["memory"]
    assert memory["peak_rss_bytes"] > memory["rss_after_imports_bytes"] > 0, memory
    assert memory["estimate_total_bytes"] > 0 and memory["vocab"] == 6000
    assert set(details["mfu"]) == {"base_shape_mlm_step", "quickstart_mlm_step", "peak_gflops"}
    lean = details["large_peak_vs_analytic"]["lean"]
    assert lean["activation_checkpointing"] and lean["lm_head_chunk_rows"] == 4
    assert lean["peak_rss_bytes"] > lean["analytic_total_bytes"] > 0
    assert details["large_peak_vs_analytic"]["dry_run_over_peak"] > 0
    chunked = details["chunked_head_time_ratio"]
    assert chunked["head_memory_bytes"]["chunked"] < chunked["head_memory_bytes"]["whole"]
    assert {"quickstart", "base_shape"} <= set(details["compile_speedup"])
    json.dumps(doc)  # serialisable as written by --json
    table = run.markdown(doc, "python benchmarks/run.py --quick")
    assert all(f"| `{key}` |" in table for key in run.BENCHMARKS)
    assert "peak RSS" in table and "MFU" in table and "--quick" in table


def test_checkpoint_io_runs_at_toy_size(tmp_path):
    """benchmarks/checkpoint_io.py --toy: single-file, sharded and asynchronous sharded saves,
    each written completely (the script asserts it) and loaded back; the JSON has every time."""
    spec = importlib.util.spec_from_file_location("objkit_bench_checkpoint_io", RUN.with_name("checkpoint_io.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "io.json"
    assert module.main(["--toy", "--dir", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["median_s"]) == {"single_save", "single_load", "sharded_save", "sharded_load", "async_save",
                                    "async_complete"}
    assert all(v > 0 for v in doc["median_s"].values())
    assert doc["median_s"]["async_complete"] >= doc["median_s"]["async_save"]
    assert doc["bytes"]["async"] > 0 and doc["loop_wait_ratio_async_over_sharded"] > 0
    assert list(tmp_path.iterdir()) == [out]  # its temporary directory removed


def test_cli_writes_json_and_markdown(run, tmp_path):
    out, md = tmp_path / "perf.json", tmp_path / "perf.md"
    code = run.main(["--toy", "--only", "enqueue_ratio,ema_foreach_speedup", "--json", str(out), "--markdown", str(md)])
    assert code in (0, 1)  # 1: a goal missed, as toy sizes may
    doc = json.loads(out.read_text())
    assert {"enqueue_ratio", "ema_foreach_speedup"} <= doc.keys() and "mlm_head_speedup" not in doc
    assert doc["goals"]["enqueue_ratio"]["goal"] == "<= 1.2"
    assert "`enqueue_ratio`" in md.read_text()


def test_gpu_peak_table_and_rows(run, monkeypatch):
    monkeypatch.syspath_prepend(str(RUN.parent))
    import memory_speed

    assert memory_speed.peak_bf16("NVIDIA H100 80GB HBM3") == 989e12
    assert memory_speed.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert memory_speed.peak_bf16("NVIDIA H200") == 989e12
    assert memory_speed.peak_bf16("Some Other Card") is None
    assert set(run.CUDA_ROWS) <= set(run.BENCHMARKS) | set(run.GPU_BENCHMARKS)
    assert "gpu_mfu" not in run.BENCHMARKS and run.GOALS["gpu_mfu"][:2] == (">=", 0.40)
    row = {"achieved_tflops": 400.0, "peak_bf16_tflops": 989.0, "device_name": "NVIDIA H100 80GB HBM3",
           "step_s": 0.1, "model": {"batch": "8 x 512"}}
    # a record from before train.param_dtype measured fp32 weights under autocast
    assert run.describe("gpu_mfu", row) == ("400 TFLOP/s of 989.0 on NVIDIA H100 80GB HBM3; 100 ms per step, "
                                            "B×L 8×512, fp32 weights")
    assert run.describe("gpu_mfu", {**row, "param_dtype": "bf16"}).endswith("B×L 8×512, bf16 weights")
    assert "bf16_weights_step_speedup" in run.GPU_BENCHMARKS and "bf16_weights_step_speedup" in run.CUDA_ROWS
    assert run.GOALS["bf16_weights_step_speedup"][:2] == (">=", 1.05)
    times = {"bf16_weights": {"median_s": 0.09}, "fp32_weights": {"median_s": 0.1}}
    assert run.describe("bf16_weights_step_speedup", {"times": times, "model": {"layers": 12}, "batch": "8 x 512"}) == (
        "90 ms vs 100 ms per step (param_dtype bf16 vs fp32 under autocast); MLM, 12 layers, B×L 8×512")


def test_rows_come_from_the_row_modules_in_order(run):
    """Every row is declared by a row module of ``ROW_MODULES`` (``ROWS``), in that order; the
    goals, the CPU/GPU split and the table text all come from the rows."""
    import importlib

    declared = [row.key for name in run.ROW_MODULES for row in importlib.import_module(name).ROWS]
    assert declared == list(run.ROWS) == list(run.GOALS)
    gpu_only = ["bf16_weights_step_speedup", "gpu_mfu"]
    assert list(run.BENCHMARKS) == [k for k in declared if k not in gpu_only] and list(run.GPU_BENCHMARKS) == gpu_only
    assert run.GOALS["mlm_head_speedup"] == (">=", 1.7, "HF full-vocab MLM step / objkit masked-only MLM step")
    assert run.CUDA_ROWS == ("checkpointing_step_ratio", "chunked_head_time_ratio", "compile_speedup",
                             "bf16_weights_step_speedup", "gpu_mfu")
    enqueue = {"median_us_per_enqueue": {"size_131072": 12.0, "size_1024": 10.0}, "keys_per_enqueue": 128}
    assert run.describe("enqueue_ratio", enqueue) == "12 µs vs 10 µs per enqueue of 128 keys"
    with pytest.raises(ValueError, match="direction"):
        run.Row("x", lambda ws: {}, "==", 1.0, "x")


def test_a_row_module_added_to_the_registry_runs_in_the_suite(run, tmp_path, monkeypatch):
    """A new row module beside run.py (as benchmarks/README.md, "Adding a row", describes) is
    loaded from ROW_MODULES, run by the runner and written into the JSON and the table."""
    import suite.registry
    import suite.runner

    (tmp_path / "extra_rows.py").write_text(
        "from suite.common import alternate, median_ratio, summary\n"
        "from suite.registry import Row\n"
        "def bench(ws):\n"
        "    times = alternate({'a': lambda: sum(range(1000)), 'b': lambda: sum(range(1000))}, reps=3)\n"
        "    return {'value': median_ratio(times['a'], times['b']), 'times': {k: summary(v) for k, v in times.items()}}\n"
        "ROWS = [Row('extra_ratio', bench, '<=', 1e9, 'a / b', lambda d: 'extra details')]\n",
        encoding="utf-8",
    )
    (tmp_path / "no_rows.py").write_text("X = 1\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = suite.registry.load_rows((*run.ROW_MODULES, "extra_rows"))
    assert list(rows)[-1] == "extra_ratio" and list(rows)[:-1] == list(run.ROWS)
    with pytest.raises(RuntimeError, match="defines no ROWS"):
        suite.registry.load_rows(("no_rows",))
    with pytest.raises(RuntimeError, match="extra_ratio is defined twice"):
        suite.registry.load_rows(("extra_rows", "extra_rows"))
    monkeypatch.setattr(suite.runner, "ROWS", rows)
    doc = run.run_suite(run.Settings.toy(), only=["extra_ratio"], workdir=tmp_path / "work")
    assert doc["extra_ratio"] > 0 and doc["goals"]["extra_ratio"]["goal"] == "<= 1000000000.0"
    assert doc["all_pass"] and doc["details"]["extra_ratio"]["times"]["a"]["n"] == 3
    assert "| `extra_ratio` |" in run.markdown(doc, "python benchmarks/run.py") and "extra details" in run.markdown(doc, "x")


def test_no_benchmark_module_is_over_500_lines():
    for path in sorted(RUN.parent.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 500, f"{path.relative_to(RUN.parent)}: {lines} lines"


def test_alternate_interleaves_and_median_ratio(run):
    calls = []
    times = run.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert [len(v) for v in times.values()] == [3, 3]
    assert run.median_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 1.0]) == 4.0


def test_flops_count_the_masked_head(run):
    full = run.train_flops(layers=1, hidden=4, ffn=8, tokens=10, seq_len=5, head_rows=10, vocab=100)
    masked = run.train_flops(layers=1, hidden=4, ffn=8, tokens=10, seq_len=5, head_rows=1, vocab=100)
    assert full - masked == 3 * 2 * (4 * 4 + 4 * 100) * 9


def test_update_readme_replaces_only_the_marked_table(run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{run.README_BEGIN}\nold\n{run.README_END}\n\n## Next\n", encoding="utf-8")
    run.update_readme(readme, "| new |\n")
    assert readme.read_text(encoding="utf-8") == f"# x\n\n{run.README_BEGIN}\n| new |\n{run.README_END}\n\n## Next\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit):
        run.update_readme(plain, "t")


def test_transfer_table_markdown_has_the_papers_layout(monkeypatch):
    """benchmarks/transfer_table.py renders a row per pretrained model, a column per language,
    the zero-shot average over the non-English languages, the steps each row reached in its time
    budget and the majority-class row; then Tatoeba per language in both directions."""
    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("objkit_bench_transfer", RUN.parent / "transfer_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    langs = ["eng_Latn", "deu_Latn"]
    model = {"name": "quickstart_infoxlm", "mean": {"eng_Latn": 45.0, "deu_Latn": 33.0},
             "std": {"eng_Latn": 1.0, "deu_Latn": 2.0}, "avg": {"mean": 33.0, "std": 2.0}}
    tatoeba = {"languages": {"deu": {"n": 1000, "xx2en": 12.0, "en2xx": 13.0, "mean": 12.5}},
               "average": {"xx2en": 12.0, "en2xx": 13.0, "mean": 12.5}}
    record = {"step": 812, "total_steps": 100000, "time_budget": 600.0, "time_budget_clock": "process",
              "train_seconds": 601.2, "ended_by": "train.time_budget"}
    results = {
        "command": "python benchmarks/transfer_table.py ...",
        "args": {"steps": 100000, "pairs_dir": ["data/newstest"], "multiway_dir": ["data/ntrex"], "pivot": "en",
                 "langs": ["de"], "time_budget": 600.0, "budget_clock": "process"},
        "machine": {"processor": "x86_64", "cpu_count": 2, "gpu": None, "torch": "2.13.0", "python": "3.11",
                    "objkit": "0.1.0", "objkit_commit": "abc", "loadavg_at_start": [0.5]},
        "runs": {"quickstart_infoxlm": {"train_seconds": 500.0, "export_record": record, "tatoeba": tatoeba}},
        "transfer": {"languages": langs, "models": [model], "majority": {"eng_Latn": 14.2, "deu_Latn": 14.2},
                     "seconds": 99.0, "settings": {"train_langs": ["eng_Latn"], "task": "sib200", "seeds": [1, 2, 3],
                                                   "lr": 5e-4, "epochs": 10, "batch_size": 32, "max_length": 128}},
    }
    md = table.markdown(results)
    assert md.startswith("Zero-shot transfer on sib200 (accuracy %, mean over seeds 1,2,3;")
    assert "| model | en | de | avg (1) | steps | budget used |" in md
    assert "| InfoXLM (MLM + TLM + XLCO) | 45.0 | 33.0 | **33.0** ± 2.0 | 812 | 601 CPU s |" in md
    assert "| majority class | 14.2 | 14.2 | 14.2 | | |" in md
    assert "| model | deu | xx→en | en→xx | mean |" in md
    assert "| InfoXLM (MLM + TLM + XLCO) | 12.5 | 12.0 | 13.0 | **12.5** |" in md
    assert "the same budget for every row, 600 CPU seconds of each row's process" in md
    assert "on `data/newstest`, `data/ntrex` pairs en–{de}" in md
    assert "for all models and seeds." in md
    results["transfer"]["reused"] = ["quickstart_infoxlm"]
    assert ("99 s for all models and seeds (InfoXLM (MLM + TLM + XLCO): evaluated in an earlier run with the "
            "same settings).") in table.markdown(results)
    assert "Every seed's scores, each row's steps and budget: `docs/results/transfer-seeds.json`" in md
    model["seeds"] = [{"seed": 1, "test": {"eng_Latn": 44.0, "deu_Latn": 31.0}, "dev": {"eng_Latn": 46.0}},
                      {"seed": 2, "test": {"eng_Latn": 46.0, "deu_Latn": 35.0}, "dev": {"eng_Latn": 47.0}}]
    record["recipe"] = "/home/someone/objkit/recipes/quickstart_infoxlm.toml"  # a path of this machine: not kept
    seeds = table.seed_record(results)
    row = seeds["rows"][0]
    assert row["label"] == "InfoXLM (MLM + TLM + XLCO)" and row["steps"] == 812 and row["train_seconds"] == 601.2
    assert [x["test"]["deu_Latn"] for x in row["transfer_seeds"]] == [31.0, 35.0] and row["tatoeba"] == {"deu": 12.5}
    assert "/home/" not in json.dumps(seeds) and seeds["command"] == results["command"]


def test_transfer_table_reads_pairs_from_bitext_and_multiway_folders(monkeypatch, tmp_path):
    """Every language gets its pairs from each folder that has them (WMT layout and NTREX's
    15-way layout); mono lists every file once; a language without parallel text stops the script."""
    import argparse

    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("objkit_bench_transfer", RUN.parent / "transfer_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    wmt, ntrex = tmp_path / "newstest", tmp_path / "ntrex"
    wmt.mkdir()
    ntrex.mkdir()
    for side in ("en", "de"):
        (wmt / f"train.en-de.{side}").write_text("x\n")
    for lang in ("en", "de", "zh"):
        (ntrex / f"ntrex.{lang}").write_text("x\n")
    args = argparse.Namespace(pivot="en", langs=["de", "zh"], pairs_dir=[wmt], multiway_dir=[ntrex])
    pairs, mono = table.corpus_files(args)
    assert [(Path(a).name, Path(b).name, x) for a, b, x in pairs] == [
        ("train.en-de.en", "train.en-de.de", "de"), ("ntrex.en", "ntrex.de", "de"), ("ntrex.en", "ntrex.zh", "zh")]
    assert [(Path(f).name, lang) for f, lang in mono] == [
        ("train.en-de.en", "en"), ("ntrex.en", "en"), ("train.en-de.de", "de"), ("ntrex.de", "de"), ("ntrex.zh", "zh")]
    with pytest.raises(SystemExit, match="no parallel text for en-sw"):
        table.corpus_files(argparse.Namespace(pivot="en", langs=["sw"], pairs_dir=[wmt], multiway_dir=[ntrex]))


def test_transfer_table_keeps_only_evaluations_that_still_stand(monkeypatch):
    """A row evaluated before keeps its results when the evaluation's arguments are the same and
    its export is the one evaluated (its objkit.json then); Tatoeba does not depend on the
    fine-tuning seeds, transfer does. Content, not file times: results.json is rewritten while
    rows are evaluated, so a row retrained in the same call must not pass as evaluated."""
    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("objkit_bench_transfer", RUN.parent / "transfer_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    record = {"step": 1035, "train_seconds": 1201.6, "ended_by": "train.time_budget"}
    args = {"tatoeba_dir": "t", "task": "sib200", "task_dir": "d", "pivot": "en", "langs": ["de", "fr"],
            "seeds": "1,2,3", "finetune": "--lr 5e-4", "steps": 1200}
    previous = {"args": args}
    assert table.reusable(previous, {**args, "steps": 10}, table.TRANSFER_ARGS, record, dict(record))
    assert not table.reusable(previous, {**args, "seeds": "1"}, table.TRANSFER_ARGS, record, record)
    assert table.reusable(previous, {**args, "seeds": "1"}, table.TATOEBA_ARGS, record, record)
    assert not table.reusable(previous, {**args, "langs": ["de"]}, table.TATOEBA_ARGS, record, record)
    assert not table.reusable({}, args, table.TATOEBA_ARGS, record, record)
    assert not table.reusable(previous, args, table.TATOEBA_ARGS, None, record)  # evaluated by an older script
    trained_on = {**record, "step": 1400, "train_seconds": 1600.2}
    assert not table.reusable(previous, args, table.TRANSFER_ARGS, record, trained_on)
    assert not table.reusable(previous, args, table.TATOEBA_ARGS, record, trained_on)


def test_ablation_alignment_table_reads_the_evaluation_layer(monkeypatch):
    """benchmarks/xlco_ablation.py --align-dir: the alignment table scores each run at the
    evaluation layer (objkit's default for the depth, never the layer best on the gold test set),
    shows the lowest-AER layer only as information, and the difference of two runs."""
    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("objkit_bench_ablation", RUN.parent / "xlco_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)

    def scores(aers):
        return {"layers": {str(k): {"aer": a, "precision": 50.0, "recall": 40.0} for k, a in enumerate(aers)},
                "best_layer": min(range(len(aers)), key=aers.__getitem__), "n": 508}

    runs = {"with_dwa": {"eval": {"alignment": {"de-en": scores([80, 70, 65, 60, 66])}}},
            "no_dwa": {"eval": {"alignment": {"de-en": scores([80, 71, 69, 62, 61])}}}}
    lines = ablation.alignment_markdown({"runs": runs, "args": {"layer": None, "align_dir": "gold",
                                                                   "align_method": "argmax"}})
    text = "\n".join(lines)
    assert "| with_dwa | 3 | 60.00 | 50.00 | 40.00 | de-en 60.00 (3) |" in text  # layer 3 of 4
    assert "| no_dwa | 3 | 62.00 | 50.00 | 40.00 | de-en 61.00 (4) |" in text
    assert "| Δ with_dwa − no_dwa | | -2.00 | |" in text
    assert ablation.alignment_markdown({"runs": {"a": {"eval": {"retrieval": {}}}}, "args": {}}) == []


@pytest.mark.slow
def test_vocab_extension_runs_at_toy_size(tmp_path):
    """benchmarks/vocab_extension.py --toy on tiny data written here: a base model, its extended
    tokenizer, continued training with each, and the table of fertility and held-out losses."""
    spec = importlib.util.spec_from_file_location("objkit_bench_vocab", RUN.parent / "vocab_extension.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = {"en": ["the house is red and the cat sleeps", "good morning to all of you", "we like green tea"],
            "de": ["das haus ist rot und die katze schläft", "guten morgen euch allen", "wir trinken tee"],
            "fr": ["la maison est rouge et le chat dort", "bonjour à vous tous", "nous aimons le thé vert"]}
    czech = ["dům je červený a kočka spí", "dobré ráno všem", "rádi pijeme zelený čaj v zahradě",
             "muž v modrém tričku hraje na kytaru", "děti si hrají na ulici před školou"]
    for lang, lines in base.items():
        (tmp_path / f"base.{lang}").write_text("\n".join(lines * 30) + "\n", encoding="utf-8")
    (tmp_path / "train.cs").write_text("\n".join(czech * 30) + "\n", encoding="utf-8")
    (tmp_path / "val.cs").write_text("\n".join(czech[::-1]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    module.main(["--base-files", *(str(tmp_path / f"base.{lang}") for lang in base), "--target-train",
                 str(tmp_path / "train.cs"), "--target-heldout", str(tmp_path / "val.cs"), "-o", str(out), "--toy"])
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert rows["extended"]["ids"] > rows["base"]["ids"]
    assert rows["extended"]["tokens_per_word"] < rows["base"]["tokens_per_word"]
    for row in rows.values():
        for when in ("before", "after"):
            assert math.isfinite(row[when]["mlm_loss"]) and row[when]["bits_per_char"] > 0
    md = (out / "results.md").read_text()
    assert md.startswith("Vocabulary extension for `cs`") and "| extended (+20 pieces) |" in md


def test_transfer_table_trains_on_a_row_whose_budget_was_raised(monkeypatch, tmp_path):
    """A row that ended at a smaller train.time_budget than --time-budget trains on (objkit run
    resumes it); one that ended at the same budget, or at train.steps, stands."""
    import argparse

    monkeypatch.syspath_prepend(str(RUN.parent))
    spec = importlib.util.spec_from_file_location("objkit_bench_transfer", RUN.parent / "transfer_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    (tmp_path / "export").mkdir()

    def raised(record: dict, budget: float | None) -> bool:
        (tmp_path / "export" / "objkit.json").write_text(json.dumps(record))
        return table.budget_raised(tmp_path, argparse.Namespace(time_budget=budget))

    spent = {"step": 222, "time_budget": 300.0, "ended_by": "train.time_budget"}
    assert raised(spent, 1200.0)
    assert not raised(spent, 300.0) and not raised(spent, None)
    assert not raised({**spent, "ended_by": "train.steps"}, 1200.0)
    assert not raised({"step": 600, "total_steps": 600}, 1200.0)  # trained without a budget
