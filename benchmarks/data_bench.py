"""Data-path rows of the performance suite (``ROWS`` at the end; benchmarks/suite/registry.py):

* ``tokenizer_throughput``: tokens/s per core of objkit's tokenization (``load_source``: read
  the file, tokenize on ``num_proc`` = the cores, write Arrow rows) / tokens/s of
  SentencePiece's own ``encode`` (C++, one thread) called on the same lines with the same
  model, as a user calls it. The same ratio against ``encode`` with Python's garbage collector
  paused (objkit pauses it while it builds id lists) is reported beside it.
* ``cache_startup_speedup``: building a quickstart MLM trainer on a cold ``data.cache_dir``
  (tokenize, pack, write) / on the warm cache it left (read the Arrow files).
* ``sampler_bytes_per_row``: memory the α-sampler holds per row of a map-style source (Python
  allocations, ``tracemalloc``) with ``sampler_rows`` simulated rows, and its draws per second.
"""

from __future__ import annotations

import random
import shutil
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from suite.registry import Row


def _sentences(ws: Any, n: int) -> list[str]:
    """``n`` sentences of 6-20 CLDR names (every script the quickstart covers), seeded."""
    from objkit.data import iter_source_texts
    from objkit_plugins.source_cldr import CldrSource

    names = list(iter_source_texts(CldrSource(type="cldr", kind="text"), 50_000))
    rng = random.Random(0)
    return [" ".join(rng.choices(names, k=rng.randint(6, 20))) for _ in range(n)]


def bench_tokenizer_throughput(ws: Any) -> dict[str, Any]:
    import datasets
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from objkit.data import load_source
    from objkit.data.cache import cores
    from objkit.data.encode import gc_paused
    from objkit_plugins.source_text import TextSource
    from objkit.data.tokenizer import SPM_FILE

    lines = _sentences(ws, ws.settings.tokenizer_lines)
    corpus = ws.root / "tokenizer-corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok_dir = ws.tokenizer_dir()
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / SPM_FILE))
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    source = TextSource(type="text", files=[{"path": str(corpus), "lang": "en"}])
    procs = cores()
    spm_times, spm_paused_times, objkit_times = [], [], []
    spm_tokens = objkit_tokens = 0
    datasets.disable_progress_bars()
    for rep in range(ws.settings.tokenizer_reps):
        t0 = time.perf_counter()
        spm_tokens = sum(len(ids) for ids in sp.encode(lines, num_threads=1))
        spm_times.append(time.perf_counter() - t0)
        with gc_paused():
            t0 = time.perf_counter()
            sp.encode(lines, num_threads=1)
            spm_paused_times.append(time.perf_counter() - t0)
        cache = ws.root / f"tokenizer-hf-cache-{rep}"  # a fresh datasets cache: no map result reused
        t0 = time.perf_counter()
        ds = load_source("bench", source, tokenizer, max_tokens=10**6, num_proc=procs, cache_dir=str(cache))
        objkit_times.append(time.perf_counter() - t0)
        objkit_tokens = sum(len(i) for i in ds["input_ids"])
        del ds
        shutil.rmtree(cache, ignore_errors=True)
    spm_rate = spm_tokens / float(np.median(spm_times))
    spm_paused_rate = spm_tokens / float(np.median(spm_paused_times))
    objkit_rate = objkit_tokens / float(np.median(objkit_times)) / procs
    return {
        "value": objkit_rate / spm_rate, "vs_gc_paused_encode": objkit_rate / spm_paused_rate,
        "objkit_tokens_per_s_per_core": objkit_rate, "sentencepiece_tokens_per_s": spm_rate,
        "sentencepiece_gc_paused_tokens_per_s": spm_paused_rate,
        "num_proc": procs, "lines": len(lines), "tokens": {"objkit": objkit_tokens, "sentencepiece": spm_tokens},
        "times": {"objkit_load_source_s": objkit_times, "sentencepiece_encode_s": spm_times,
                  "sentencepiece_encode_gc_paused_s": spm_paused_times},
        "note": "objkit's time includes reading the file, building its encoder and writing Arrow rows",
    }


def bench_cache_startup(ws: Any) -> dict[str, Any]:
    from objkit.data.cache import cores

    files = ws.corpus(32)
    lines = files["mono"].read_text(encoding="utf-8").splitlines()
    big = ws.root / "cache-corpus.txt"
    reps = -(-ws.settings.cache_lines // len(lines))
    big.write_text("\n".join((lines * reps)[: ws.settings.cache_lines]) + "\n", encoding="utf-8")
    cache = ws.root / "startup-cache"
    sets = ["objectives.tlm.enabled=false", f'data.mono={{type="text",files=[{{path="{big}",lang="en"}}]}}',
            f'data.cache_dir="{cache}"']
    cold, warm = [], []
    for _ in range(ws.settings.cache_reps):
        shutil.rmtree(cache, ignore_errors=True)
        for times in (cold, warm):
            t0 = time.perf_counter()
            trainer = ws.trainer(ws.quickstart(sets))
            trainer.streams["mlm"].next_examples(1)
            times.append(time.perf_counter() - t0)
            del trainer
    shutil.rmtree(cache, ignore_errors=True)
    return {"value": float(np.median(cold)) / float(np.median(warm)), "lines": ws.settings.cache_lines,
            "num_proc": cores(), "times": {"cold_cache_s": cold, "warm_cache_s": warm},
            "what": "Trainer construction (tokenizer, model, objectives, streams) to the first example"}


def bench_sampler(ws: Any) -> dict[str, Any]:
    from objkit.data.sampling import GroupSampler

    rows = ws.settings.sampler_rows
    sizes = np.array([0.4, 0.25, 0.15, 0.1, 0.05, 0.03, 0.015, 0.005]) * rows
    sizes = sizes.astype(np.int64)
    sizes[0] += rows - sizes.sum()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    runs = {f"g{i}": np.array([[s, n]], dtype=np.int64) for i, (s, n) in enumerate(zip(starts, sizes))}
    draws, batch = ws.settings.sampler_draws, 4096
    tracemalloc.start()
    sampler = GroupSampler(runs, alpha=0.3, seed=1)
    t0 = time.perf_counter()
    done = 0
    while done < draws:
        sampler.draw(batch, slice(0, batch))
        done += batch
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"value": peak / rows, "rows": int(rows), "draws": done, "draws_per_s": done / seconds,
            "peak_traced_bytes": peak, "groups": len(runs),
            "before": "the previous sampler held an int64 index and an int64 permutation per row (16 bytes/row) "
                      "and looped in Python over every draw"}


def describe(key: str, d: dict[str, Any]) -> str:
    if key == "tokenizer_throughput":
        return (f"{d['objkit_tokens_per_s_per_core']:,.0f} vs {d['sentencepiece_tokens_per_s']:,.0f} tokens/s per "
                f"core ({d['lines']:,} lines, num_proc {d['num_proc']}); "
                f"{d['vs_gc_paused_encode']:.2f}x against encode with the garbage collector paused")
    if key == "cache_startup_speedup":
        t = d["times"]
        return (f"cold {np.median(t['cold_cache_s']):.1f} s vs warm {np.median(t['warm_cache_s']):.1f} s to the "
                f"first example ({d['lines']:,} lines)")
    if key == "sampler_bytes_per_row":
        return f"{d['peak_traced_bytes'] / 2**20:.1f} MiB for {d['rows']:,} rows; {d['draws_per_s']:,.0f} draws/s"
    return ""


ROWS = [
    Row("tokenizer_throughput", bench_tokenizer_throughput, ">=", 0.8,
        "objkit tokenization tokens/s per core / SentencePiece encode tokens/s",
        lambda d: describe("tokenizer_throughput", d)),
    Row("cache_startup_speedup", bench_cache_startup, ">=", 2.0,
        "trainer start-up on a cold data.cache_dir / on the warm one", lambda d: describe("cache_startup_speedup", d)),
    Row("sampler_bytes_per_row", bench_sampler, "<=", 0.1, "bytes the α-sampler holds per row (10^8 simulated rows)",
        lambda d: describe("sampler_bytes_per_row", d)),
]
