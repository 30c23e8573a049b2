"""objkit's performance suite: every claim measured side by side, as a ratio, in one run.

    python benchmarks/run.py [--quick] [--json OUT.json] [--markdown OUT.md] [--update-docs]
                             [--only NAME,...] [--threads N]

Each benchmark pairs two variants and runs them in alternating repetitions (A B, B A, A B, ...),
so that load on a shared machine hits both alike; the reported number is the median of the
per-repetition ratios. Every objkit variant drives objkit's own classes (``Trainer``,
``CompositeLoss``, the plugins, ``MomentumTracker``, ``MomentumQueue``, the data layer); the
baselines are Hugging Face ``transformers`` or plain PyTorch. Gated results (JSON keys):

==========================  =========================================================  ======
key                         ratio                                                      goal
==========================  =========================================================  ======
``mlm_head_speedup``        HF ``XLMRobertaForMaskedLM(labels=...)`` step (full-vocab   ≥ 1.7
                            logits) / objkit MLM step (masked-only head); XLM-R-base
                            shape, vocab 250,002, hidden 768, B=4, L=128
``framework_overhead``      objkit ``Trainer.train_step`` (MLM only) / a hand-written   ≤ 1.03
                            PyTorch loop doing the same work (same model, same batches)
``xlco_step_ratio``         InfoXLM (MLM+TLM+XLCO) step / MLM+TLM step, 12 layers,       ≤ 1.5
                            XLCO at layer 8, every objective B sequences of L tokens
``ema_foreach_speedup``     reference EMA loop / ``MomentumTracker.update``, base body   ≥ 2.5
``enqueue_ratio``           ``MomentumQueue`` enqueue at 131,072 keys / at 1,024, d=768  ≤ 1.2
``data_pipeline_margin``    tokens/s the data pipeline delivers / tokens/s the trainer   ≥ 10
                            consumes (quickstart recipe)
``vs_hf_trainer``           objkit tokens/s / HF ``Trainer`` + ``DataCollatorFor-       ≥ 1.0
                            LanguageModeling`` tokens/s (quickstart model, MLM)
``padding_fraction``        padded / all token slots of TLM and XLCO (the worse) with   ≤ 0.10
                            ``train.length_bucketing = 8``, Multi30k pairs (CLDR at
                            ``--toy``); before-bucketing and step-time ratio in details
``tokenizer_throughput``    objkit tokenization tokens/s per core (``load_source``,     ≥ 0.8
                            ``num_proc`` = cores) / SentencePiece ``encode`` tokens/s
                            (one thread), same lines, same model
``cache_startup_speedup``   trainer start-up on a cold ``data.cache_dir`` / on the      ≥ 2
                            warm cache it left (quickstart MLM, ``cache_lines`` lines)
``sampler_bytes_per_row``   bytes the α-sampler holds per row at 10^8 simulated rows    ≤ 0.1
                            (``tracemalloc``; draws/s under ``details``)
==========================  =========================================================  ======

Not gated (under ``details``): peak RSS of one ``infoxlm_large`` step (B=1, L=128, random
weights, CPU) against an analytic estimate, and model FLOP utilisation of the quickstart and
base-shape steps against the machine's measured fp32 matmul peak. ``--quick`` uses fewer
repetitions, 4 layers for the MLM-head benchmark (full vocabulary and hidden size kept) and a
12-layer model of hidden 256 with the quickstart vocabulary for the XLCO step. Everything runs
on CPU with torch's default thread count (``--threads N`` to change it).

Inputs are built here and need no download: the quickstart recipe's embedded CLDR corpus, a
synthetic corpus of single-token words from the quickstart tokenizer (so every sequence has
exactly L tokens), and that tokenizer padded with never-matching pieces to XLM-R's 250,002 ids.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import math
import os
import platform
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

# the row modules beside this file (run.py runs as a script, not as a package): imported one way
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_step  # noqa: E402
import data_bench  # noqa: E402
import memory_speed  # noqa: E402
import padding_fraction  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
XLMR_VOCAB = 250_002

# key -> (direction, goal, description)
GOALS: dict[str, tuple[str, float, str]] = {
    "mlm_head_speedup": (">=", 1.7, "HF full-vocab MLM step / objkit masked-only MLM step"),
    "framework_overhead": ("<=", 1.03, "objkit Trainer step / hand-written loop, same work"),
    "xlco_step_ratio": ("<=", 1.5, "InfoXLM step / MLM+TLM step (XLCO at layer 8 of 12)"),
    "ema_foreach_speedup": (">=", 2.5, "reference EMA loop / objkit fused EMA (base body)"),
    "enqueue_ratio": ("<=", 1.2, "enqueue at queue 131,072 / at 1,024 (d=768)"),
    "data_pipeline_margin": (">=", 10.0, "data pipeline tokens/s / trainer tokens/s (quickstart)"),
    "vs_hf_trainer": (">=", 1.0, "objkit MLM tokens/s / HF Trainer tokens/s (quickstart model)"),
    "padding_fraction": ("<=", 0.10, "padded token slots of TLM/XLCO with length bucketing (Multi30k pairs)"),
    # memory and speed (benchmarks/memory_speed.py)
    "large_peak_vs_analytic": ("<=", 1.15, "peak RSS of an infoxlm_large step (checkpointing + chunked head) / "
                               "analytic sum"),
    "checkpointing_step_ratio": ("<=", 1.4, "MLM step with activation checkpointing / without (base shape)"),
    "chunked_head_time_ratio": ("<=", 1.1, "MLM step with the chunked LM head / head in one piece (base shape)"),
    "compile_speedup": (">=", 1.0, "eager MLM step / train.compile step (base shape)"),
    "gpu_mfu": (">=", 0.40, "model FLOP/s of an XLM-R-base MLM step (L=512, bf16) / the card's peak bf16"),
    "tokenizer_throughput": (">=", 0.8, "objkit tokenization tokens/s per core / SentencePiece encode tokens/s"),
    "cache_startup_speedup": (">=", 2.0, "trainer start-up on a cold data.cache_dir / on the warm one"),
    "sampler_bytes_per_row": ("<=", 0.1, "bytes the α-sampler holds per row (10^8 simulated rows)"),
    "cpu_step_speedup": cpu_step.GOAL,  # benchmarks/cpu_step.py
}


# ============================================================================ settings
@dataclass
class Settings:
    """Sizes and repetition counts; ``quick()`` / ``full()`` / ``toy()`` (the smoke test)."""

    name: str = "full"
    # mlm_head_speedup
    head_layers: int = 12
    head_hidden: int = 768
    head_heads: int = 12
    head_ffn: int = 3072
    head_vocab: int = XLMR_VOCAB
    head_batch: int = 4
    head_length: int = 128
    head_reps: int = 7
    # framework_overhead and vs_hf_trainer (quickstart model)
    overhead_reps: int = 40
    hf_reps: int = 40
    # xlco_step_ratio
    xlco_layers: int = 12
    xlco_layer: int = 8
    xlco_hidden: int = 768
    xlco_heads: int = 12
    xlco_ffn: int = 3072
    xlco_vocab: int = XLMR_VOCAB  # 0: the quickstart tokenizer's vocabulary
    xlco_batch: int = 4
    xlco_length: int = 128
    xlco_queue: int = 131_072
    xlco_reps: int = 6
    # ema_foreach_speedup (a base-size body)
    ema_layers: int = 12
    ema_hidden: int = 768
    ema_heads: int = 12
    ema_ffn: int = 3072
    ema_vocab: int = XLMR_VOCAB
    ema_reps: int = 9
    # enqueue_ratio
    queue_sizes: tuple[int, int] = (131_072, 1_024)
    queue_dim: int = 768
    queue_keys: int = 128
    queue_sweep: tuple[int, ...] = (16, 1024)
    queue_calls: int = 50
    queue_reps: int = 15
    # data_pipeline_margin
    pipeline_steps: int = 300
    pipeline_trainer_steps: int = 5
    pipeline_reps: int = 5
    # peak RSS of infoxlm_large (subprocess); MFU
    memory_recipe: str = "infoxlm_large"
    memory_preset: str = "large"
    memory_vocab: int = XLMR_VOCAB
    memory_layers: int = 0  # 0: the preset's
    memory_xlco_layer: int = 0  # 0: the recipe's
    memory_length: int = 128
    run_memory: bool = True
    matmul_size: int = 2048
    # memory and speed rows (benchmarks/memory_speed.py); the base shape is head_*'s
    device: str = "cpu"  # --device cuda: the trainer-based rows on the GPU, and gpu_mfu
    chunk_rows: int = 256  # train.lm_head_chunk_rows of the chunked variants
    # chunked_head_time_ratio's chunk (0: chunk_rows), below the step's masked rows (4 × 128 tokens: 76, 3 chunks)
    head_chunk_rows: int = 32
    compile_layers: int = 0  # 0: head_layers
    compile_warmup: int = 2
    compile_reps: int = 5
    mfu_reps: int = 10
    lean_batch: int = 8  # large_peak_vs_analytic: micro-batch × length of the infoxlm_large step
    lean_length: int = 512
    lean_steps: int = 2  # the first allocates AdamW's moments; the peak is the steady state's
    # extra --set overrides for every quickstart-based trainer (the smoke test shrinks the data)
    quickstart_sets: list[str] = field(default_factory=list)
    corpus_lines: int = 256
    # data path (benchmarks/data_bench.py)
    tokenizer_lines: int = 200_000
    tokenizer_reps: int = 3
    cache_lines: int = 200_000
    cache_reps: int = 3
    sampler_rows: int = 10**8
    sampler_draws: int = 1_000_000

    @classmethod
    def full(cls) -> Settings:
        return cls()

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            name="quick", head_layers=4, head_reps=5, overhead_reps=30, hf_reps=30,
            xlco_hidden=256, xlco_heads=4, xlco_ffn=1024, xlco_vocab=0, xlco_batch=16, xlco_reps=8,
            ema_reps=5, queue_reps=11, pipeline_reps=3, pipeline_steps=300, compile_reps=3,
            tokenizer_lines=200_000, tokenizer_reps=3, cache_lines=50_000, cache_reps=2, sampler_draws=200_000,
        )

    @classmethod
    def gpu(cls) -> Settings:
        """``--device cuda``: the XLM-R-base shape at L = 512 (12 layers, hidden 768, vocab
        250,002, B = 8) for the GPU rows, few repetitions (benchmarks/gpu_check.sh's budget)."""
        return cls(name="gpu", device="cuda", head_batch=8, head_length=512, head_reps=5, compile_reps=5,
                   compile_warmup=3, mfu_reps=10, chunk_rows=256, head_chunk_rows=256, run_memory=False)

    @classmethod
    def toy(cls) -> Settings:
        """Every code path at toy sizes (seconds): for the smoke test, numbers mean nothing."""
        return cls(
            name="toy", head_layers=1, head_hidden=32, head_heads=2, head_ffn=64, head_vocab=6000,
            head_batch=2, head_length=16, head_reps=1, overhead_reps=2, hf_reps=2,
            xlco_layers=3, xlco_layer=2, xlco_hidden=32, xlco_heads=2, xlco_ffn=64, xlco_vocab=0,
            xlco_batch=2, xlco_length=16, xlco_queue=64, xlco_reps=1,
            ema_layers=1, ema_hidden=32, ema_heads=2, ema_ffn=64, ema_vocab=6000, ema_reps=1,
            queue_sizes=(4096, 64), queue_dim=16, queue_keys=8, queue_sweep=(4,), queue_calls=5, queue_reps=1,
            pipeline_steps=3, pipeline_trainer_steps=1, pipeline_reps=1,
            memory_preset="tiny", memory_vocab=6000, memory_layers=2, memory_xlco_layer=1, memory_length=16,
            chunk_rows=4, head_chunk_rows=0, compile_warmup=2, compile_reps=1, mfu_reps=2, lean_batch=2, lean_length=16,
            matmul_size=128, corpus_lines=24,
            tokenizer_lines=200, tokenizer_reps=1, cache_lines=100, cache_reps=1, sampler_rows=10**6,
            sampler_draws=8192,
            quickstart_sets=["data.mono.max_lines=40", "data.parallel.max_lines=20",
                             "model.tokenizer.vocab_size=400", "train.batch_size=4"],
        )


# ============================================================================ timing
def alternate(variants: dict[str, Callable[[], Any]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall time of each variant over ``reps`` repetitions, run in alternating order
    (A B, B A, A B, ...) after ``warmup`` untimed rounds. Returns seconds per call."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    gc.collect()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - started)
    return times


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-repetition ratios (each pair ran back to back)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": len(times)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ============================================================================ inputs
class Workspace:
    """Temporary files shared by the benchmarks: tokenizers, the synthetic corpus, run dirs."""

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        from objkit.registry import default_registry

        self.settings = settings
        self.owned = root is None  # a temporary directory of our own: removed by close()
        self.root = Path(root or tempfile.mkdtemp(prefix="objkit-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = default_registry()
        self._tokenizer_dir: Path | None = None
        self._padded: dict[int, Path] = {}
        self._corpus: dict[int, dict[str, Path]] = {}
        self._runs = 0

    def run_dir(self) -> Path:
        self._runs += 1
        return self.root / f"run{self._runs}"

    # ------------------------------------------------------------------ recipes
    def recipe(self, name: str, sets: list[str] | None = None, edit: Callable[[dict], None] | None = None) -> Any:
        """A shipped recipe, fully resolved, with ``--set`` overrides and an optional edit of its dict."""
        from objkit.recipe import load_recipe, validate_recipe

        resolved = load_recipe(RECIPES / f"{name}.toml", sets or [], self.registry)
        if edit is None:
            return resolved
        raw = resolved.to_dict()
        edit(raw)
        return validate_recipe(raw, self.registry, source=f"{name}.toml (benchmark)")

    def quickstart(self, sets: list[str] | None = None) -> Any:
        base = ["train.log_every=1000000", "train.checkpoint_every=1000000", "train.steps=1000000"]
        return self.recipe("quickstart", base + self.settings.quickstart_sets + (sets or []))

    def trainer(self, resolved: Any) -> Any:
        from objkit.trainer import Trainer

        with quiet():
            return Trainer(resolved, self.run_dir(), self.registry, progress=False)

    # ------------------------------------------------------------------ tokenizers
    def tokenizer_dir(self) -> Path:
        """The quickstart recipe's trained tokenizer (trained once, cached by objkit)."""
        if self._tokenizer_dir is None:
            from objkit.build import load_tokenizer

            with quiet():
                tokenizer = load_tokenizer(self.quickstart())
            self._tokenizer_dir = Path(tokenizer.name_or_path)
        return self._tokenizer_dir

    def padded_tokenizer(self, size: int) -> Path:
        """The quickstart tokenizer with ``size`` ids: never-matching pieces (private-use
        characters, type UNUSED) appended, so text tokenizes exactly as before while the
        vocabulary -- embeddings, LM head, random-token masking -- has XLM-R's size."""
        if size in self._padded:
            return self._padded[size]
        from sentencepiece import sentencepiece_model_pb2 as pb
        from transformers import XLMRobertaTokenizer

        from objkit.tokenizer import SPM_FILE

        model = pb.ModelProto()
        model.ParseFromString((self.tokenizer_dir() / SPM_FILE).read_bytes())
        floor = min(p.score for p in model.pieces) - 10.0
        for i in range(size - 2 - len(model.pieces)):  # fairseq layout: + <pad> and <mask>
            piece = model.pieces.add()
            piece.piece = chr(0xF0000 + i // 60_000) + chr(0xF0000 + i % 60_000)
            piece.score = floor
            piece.type = pb.ModelProto.SentencePiece.UNUSED
        out = self.root / f"tokenizer-{size}"
        out.mkdir(parents=True, exist_ok=True)
        (out / SPM_FILE).write_bytes(model.SerializeToString())
        with quiet():
            XLMRobertaTokenizer.from_pretrained(str(out)).save_pretrained(str(out))
        self._padded[size] = out
        return out

    def tokenizer_for(self, vocab: int) -> Path:
        return self.tokenizer_dir() if vocab == 0 else self.padded_tokenizer(vocab)

    # ------------------------------------------------------------------ synthetic corpus
    def corpus(self, length: int) -> dict[str, Path]:
        """Text and parallel files whose every line is exactly ``length - 2`` tokens (single-token
        words of the quickstart tokenizer), so MLM blocks, TLM pairs and XLCO sides are all
        ``length`` tokens with their special tokens."""
        if length in self._corpus:
            return self._corpus[length]
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(self.tokenizer_dir()))
        candidates = [p[1:] for p in tokenizer.get_vocab() if p.startswith("▁") and len(p) > 2 and p[1:].isalpha()]
        ids = tokenizer(candidates, add_special_tokens=False)["input_ids"]
        words = sorted(w for w, i in zip(candidates, ids, strict=True) if len(i) == 1)
        if len(words) < 20:
            raise RuntimeError(f"only {len(words)} single-token words in the quickstart tokenizer")
        rng = random.Random(0)
        n = length - 2
        lines: list[str] = []
        while len(lines) < 3 * self.settings.corpus_lines:
            batch = [" ".join(rng.choices(words, k=n)) for _ in range(64)]
            counts = tokenizer(batch, add_special_tokens=False)["input_ids"]
            lines.extend(line for line, c in zip(batch, counts, strict=True) if len(c) == n)
        k = self.settings.corpus_lines
        out = self.root / f"corpus-{length}"
        out.mkdir(parents=True, exist_ok=True)
        files = {"mono": out / "mono.txt", "src": out / "para.en", "tgt": out / "para.de"}
        for (key, path), part in zip(files.items(), (lines[:k], lines[k : 2 * k], lines[2 * k : 3 * k]), strict=True):
            path.write_text("\n".join(part) + "\n", encoding="utf-8")
        self._corpus[length] = files
        return files

    def corpus_data(self, length: int) -> dict[str, Any]:
        files = self.corpus(length)
        return {
            "mono": {"type": "text", "files": [{"path": str(files["mono"]), "lang": "en"}]},
            "parallel": {"type": "parallel", "pairs": [{"src": str(files["src"]), "tgt": str(files["tgt"]),
                                                        "src_lang": "en", "tgt_lang": "de"}]},
        }

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def quiet() -> Any:
    """Silence progress bars and warnings of datasets/transformers while building things."""
    import datasets
    import transformers

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(level)
        if was_enabled:
            datasets.enable_progress_bars()


def model_dims(layers: int, hidden: int, heads: int, ffn: int) -> dict[str, int]:
    return {"num_layers": layers, "hidden_size": hidden, "num_heads": heads, "intermediate_size": ffn}


def xlmr_mlm_recipe(ws: Workspace, *, layers: int, hidden: int, heads: int, ffn: int, vocab: int,
                    batch: int, length: int) -> Any:
    """``recipes/xlmr_mlm.toml`` (MLM only, XLM-R base) with random weights of the given shape
    and the synthetic corpus: every batch is ``batch`` × ``length`` tokens."""
    tokenizer = ws.tokenizer_for(vocab)

    def edit(raw: dict) -> None:
        raw["model"].pop("init", None)
        raw["model"].update(model_dims(layers, hidden, heads, ffn), max_length=length, tokenizer=str(tokenizer))
        raw["data"] = {"mono": ws.corpus_data(length)["mono"]}
        raw["train"].pop("micro_batch_size", None)
        raw["train"].update(batch_size=batch, steps=1_000_000, log_every=1_000_000, checkpoint_every=1_000_000)

    return ws.recipe("xlmr_mlm", edit=edit)


# ============================================================================ FLOPs
def train_flops(*, layers: int, hidden: int, ffn: int, tokens: int, seq_len: int, head_rows: int,
                vocab: int, backward: bool = True) -> float:
    """Matmul FLOPs of a (forward +) backward pass of an XLM-R encoder over ``tokens`` tokens in
    sequences of ``seq_len``, plus the LM head (dense h×h + decoder h×V) on ``head_rows`` rows."""
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * ffn) + 2 * 2 * seq_len * hidden
    head = 2 * (hidden * hidden + hidden * vocab) * head_rows
    forward = layers * per_token_layer * tokens + head
    return forward * (3 if backward else 1)


def matmul_peak(size: int, reps: int = 5) -> dict[str, float]:
    """Best fp32 GFLOP/s of ``size``×``size`` matmuls on this machine (torch's thread count)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = math.inf
    for _ in range(reps):
        started = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return {"size": size, "gflops": 2 * size**3 / best / 1e9}


# ============================================================================ benchmarks
def twin_stream(trainer: Any, name: str) -> Any:
    """An independent copy of a trainer's example stream: the same examples in the same order."""
    return copy.deepcopy(trainer.streams[name])


def same_optimizer(trainer: Any, params: Any) -> torch.optim.Optimizer:
    """A new optimizer configured exactly as the trainer's (class, hyperparameters, implementation)."""
    keys = ("lr", "betas", "eps", "weight_decay", "foreach", "fused")
    return type(trainer.optimizer)(params, **{k: trainer.optimizer.defaults[k] for k in keys})


def objective(trainer: Any, name: str) -> Any:
    return next(b.objective for b in trainer.objectives if b.name == name)


def bench_mlm_head(ws: Workspace) -> dict[str, Any]:
    """HF ``XLMRobertaForMaskedLM(input_ids, attention_mask, labels)`` -- full [B, L, V] logits and
    their cross-entropy -- against objkit's ``Trainer.train_step`` with the MLM objective, whose
    LM head runs on the masked positions only. The HF arm is the very same module
    (``trainer.encoder.mlm``) with its own AdamW of the trainer's configuration; both clip
    gradients; both get the same batches (a twin of the trainer's stream, the same masking seeds)."""
    from objkit.step import micro_batch_seed

    s = ws.settings
    resolved = xlmr_mlm_recipe(ws, layers=s.head_layers, hidden=s.head_hidden, heads=s.head_heads, ffn=s.head_ffn,
                               vocab=s.head_vocab, batch=s.head_batch, length=s.head_length)
    trainer = ws.trainer(resolved)
    model = trainer.encoder.mlm
    assert model.config.vocab_size == s.head_vocab, model.config.vocab_size
    mlm = objective(trainer, "mlm")
    stream = twin_stream(trainer, "mlm")
    optimizer = same_optimizer(trainer, model.parameters())
    clip = trainer.train_cfg.clip_norm
    seed = trainer.train_cfg.seed
    hf_step = [0]

    def hf() -> None:
        generator = torch.Generator().manual_seed(micro_batch_seed(seed, "mlm", hf_step[0], 0, 0))
        batch = mlm.collate(stream.next_examples(trainer.micro_batch_size), generator)
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        hf_step[0] += 1

    times = alternate({"hf_full_vocab": hf, "objkit_masked_only": trainer.train_step}, s.head_reps)
    ratio = median_ratio(times["hf_full_vocab"], times["objkit_masked_only"])
    tokens = s.head_batch * s.head_length
    masked = round(0.15 * (s.head_length - 2) * s.head_batch)
    dims = {"layers": s.head_layers, "hidden": s.head_hidden, "ffn": s.head_ffn, "tokens": tokens, "seq_len": s.head_length,
            "vocab": s.head_vocab}
    flops_objkit = train_flops(layers=dims["layers"], hidden=dims["hidden"], ffn=dims["ffn"], tokens=tokens,
                               seq_len=s.head_length, head_rows=masked, vocab=s.head_vocab)
    flops_hf = train_flops(layers=dims["layers"], hidden=dims["hidden"], ffn=dims["ffn"], tokens=tokens,
                           seq_len=s.head_length, head_rows=tokens, vocab=s.head_vocab)
    result = {
        "value": ratio,
        "model": dims | {"parameters": sum(p.numel() for p in model.parameters())},
        "batch": f"{s.head_batch} x {s.head_length}",
        "optimizer": repr({k: trainer.optimizer.defaults[k] for k in ("foreach", "fused")}),
        "times": {k: summary(v) for k, v in times.items()},
        "model_tflop_per_step": {"objkit": flops_objkit / 1e12, "hf": flops_hf / 1e12},
    }
    del trainer, model, optimizer
    gc.collect()
    return result


def bench_framework_overhead(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """objkit's ``Trainer.train_step`` (quickstart recipe, MLM only: stream, collate, composite
    loss, clipping, AdamW, schedule, hooks, stats) against the minimal loop a user would write on
    the same model: draw the same examples from a twin stream, collate them with the same
    masking seeds, forward, masked-position LM head, cross-entropy, backward, clip, step, zero."""
    import torch.nn.functional as F

    from objkit.step import micro_batch_seed
    from objkit.masking import IGNORE_INDEX

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart(["objectives.tlm.enabled=false"]))
    mlm = objective(trainer, "mlm")
    stream = twin_stream(trainer, "mlm")
    model = copy.deepcopy(trainer.encoder.mlm)
    params = list(model.parameters())
    optimizer = same_optimizer(trainer, params)
    scheduler = type(trainer.scheduler)(optimizer, trainer.scheduler.lr_lambdas[0])
    clip, seed, size = trainer.train_cfg.clip_norm, trainer.train_cfg.seed, trainer.micro_batch_size
    step = [trainer.step]

    def manual() -> None:
        generator = torch.Generator().manual_seed(micro_batch_seed(seed, "mlm", step[0], 0, 0))
        batch = mlm.collate(stream.next_examples(size), generator)
        model.train()
        hidden = model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        loss = F.cross_entropy(model.lm_head(hidden[selected]), labels[selected])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step[0] += 1

    tokens: list[int] = []

    def objkit() -> None:
        tokens.append(trainer.train_step().tokens)

    times = alternate({"objkit_trainer": objkit, "manual_loop": manual}, s.overhead_reps, warmup=2)
    ratio = median_ratio(times["objkit_trainer"], times["manual_loop"])
    return {
        "value": ratio,
        "recipe": "quickstart (MLM only)",
        "batch": f"{trainer.micro_batch_size} sequences, max_length {trainer.recipe.model.max_length}",
        "times": {k: summary(v) for k, v in times.items()},
        "mean_ratio": statistics.mean(a / b for a, b in zip(times["objkit_trainer"], times["manual_loop"])),
        "tokens_per_step": statistics.mean(tokens),
    }


def bench_xlco_step(ws: Workspace) -> dict[str, Any]:
    """``recipes/infoxlm_base.toml`` (MLM + TLM + XLCO: momentum encoder, 131,072-key queue
    filled beforehand, projection, mixup, masked inputs, XLCO at layer 8) against the same recipe
    with XLCO disabled (its ablation), on a 12-layer model with random weights; every objective
    gets B sequences of exactly L tokens per step (synthetic corpus). Then InfoXLM with truncated
    passes against ``truncate_passes = false`` (full depth, the reference's cost)."""
    s = ws.settings
    tokenizer = ws.tokenizer_for(s.xlco_vocab)

    def build(*, xlco: bool, truncate: bool = True) -> Any:
        def edit(raw: dict) -> None:
            raw["model"].pop("init", None)
            raw["model"].update(model_dims(s.xlco_layers, s.xlco_hidden, s.xlco_heads, s.xlco_ffn),
                                max_length=s.xlco_length, tokenizer=str(tokenizer))
            raw["data"] = ws.corpus_data(s.xlco_length)
            raw["train"].pop("micro_batch_size", None)
            raw["train"].update(batch_size=s.xlco_batch, steps=1_000_000, log_every=1_000_000,
                                checkpoint_every=1_000_000)
            xl = raw["objectives"]["xlco"]
            xl.update(enabled=xlco, layer=s.xlco_layer, truncate_passes=truncate)
            xl["negatives"] = {"momentum_queue": {"size": s.xlco_queue, "fill_before_start": True}}

        trainer = ws.trainer(ws.recipe("infoxlm_base", edit=edit))
        if xlco:  # fill the queue now, so the timed steps compute the XLCO loss (as after warm-up)
            xl = objective(trainer, "xlco")
            for store in xl.stores.values():
                store.enqueue(torch.randn(s.xlco_queue, xl.dim))
                store.flush()
            assert all(store.ready for store in xl.stores.values())
        return trainer

    base = build(xlco=False)
    infoxlm = build(xlco=True)
    xl = objective(infoxlm, "xlco")
    sample = xl.collate(infoxlm.streams["xlco"].next_examples(2), torch.Generator().manual_seed(0))
    def width(mask: str) -> int:  # the widest of the side's length groups (attention_mask, attention_mask.1, ...)
        return max(int(t.shape[1]) for name, t in sample.items() if name.partition(".")[0] == mask)

    lengths = {"xlco_query": width("attention_mask"), "xlco_key": width("key_attention_mask")}
    assert "xlco/loss" in infoxlm.train_step().sums, "XLCO computed no loss: the queue is not full"
    times = alternate({"infoxlm": infoxlm.train_step, "mlm_tlm": base.train_step}, s.xlco_reps)
    ratio = median_ratio(times["infoxlm"], times["mlm_tlm"])
    del base
    gc.collect()
    full = build(xlco=True, truncate=False)
    times_full = alternate({"infoxlm_full_depth": full.train_step, "infoxlm": infoxlm.train_step}, s.xlco_reps)
    truncation = median_ratio(times_full["infoxlm"], times_full["infoxlm_full_depth"])
    key_params = {"truncated": xl.tracker.numel(), "full_depth": objective(full, "xlco").tracker.numel()}
    del full, infoxlm
    gc.collect()
    return {
        "value": ratio,
        "model": {"layers": s.xlco_layers, "hidden": s.xlco_hidden, "xlco_layer": s.xlco_layer,
                  "vocab": s.xlco_vocab or "quickstart tokenizer"},
        "sequences_per_objective": s.xlco_batch,
        "sequence_length": s.xlco_length,
        "xlco_input_lengths": lengths,
        "queue": s.xlco_queue,
        "times": {k: summary(v) for k, v in times.items()},
        "truncation": {
            "times": {k: summary(v) for k, v in times_full.items()},
            "truncated_over_full_depth": truncation,
            "saving": 1.0 - truncation,
            "full_depth_step_ratio": ratio / truncation,
            "key_encoder_parameters": key_params,
        },
        "encoder_arithmetic": {"truncated": 1 + (s.xlco_layer / s.xlco_layers) * (1 + 1 / 3) / 2,
                               "full_depth": 1 + (1 + 1 / 3) / 2},
    }


def bench_ema(ws: Workspace) -> dict[str, Any]:
    """The reference's EMA update -- ``for k, q in pairs: k.copy_(k * m + q * (1 - m))``, a Python
    loop with three full-size temporaries per tensor -- against ``MomentumTracker.update(m)``
    (one ``torch._foreach_lerp_`` in place), over a base-size XLM-R body and its momentum copy."""
    from objkit.encoder import PresetEncoderConfig, XLMREncoder, architecture
    from objkit.momentum import MomentumTracker, make_momentum_copy

    s = ws.settings
    config = PresetEncoderConfig(**model_dims(s.ema_layers, s.ema_hidden, s.ema_heads, s.ema_ffn), max_length=512,
                         tokenizer="unused")
    body = XLMREncoder.from_hf_config(architecture(config, s.ema_vocab)).body()
    key = make_momentum_copy(body)
    tracker = MomentumTracker.between(body, key)
    m = 0.9999

    @torch.no_grad()
    def reference() -> None:
        for q, k in zip(tracker.sources, tracker.targets, strict=True):
            k.data.copy_(k.data * m + q.data * (1 - m))

    times = alternate({"reference_loop": reference, "objkit_foreach": lambda: tracker.update(m)}, s.ema_reps)
    numel = tracker.numel()
    result = {
        "value": median_ratio(times["reference_loop"], times["objkit_foreach"]),
        "parameters": numel,
        "tensors": len(tracker.targets),
        "times": {k: summary(v) for k, v in times.items()},
        "objkit_gb_per_s": 3 * 4 * numel / statistics.median(times["objkit_foreach"]) / 1e9,
    }
    del body, key, tracker
    gc.collect()
    return result


def bench_enqueue(ws: Workspace) -> dict[str, Any]:
    """``MomentumQueue.enqueue(keys)`` plus the write into the ring buffer (``flush``, which
    ``negatives()`` calls) at two queue sizes, both filled with keys beforehand. In training a
    whole forward/backward pass runs between two enqueues and evicts the CPU caches, so before
    every timed enqueue a 64 MB scratch buffer is written (untimed): neither queue is
    cache-resident, as in a real step, and the ratio shows how the cost depends on the queue
    size alone. Single enqueues are paired (big, small, small, big, ...); ``queue_keys`` keys
    per enqueue (128: the paper's 16 per GPU gathered from 8 GPUs); ``details.sweep`` repeats
    it for other key counts."""
    from objkit.interfaces import WorldInfo
    from objkit_plugins.momentum_queue import MomentumQueue, MomentumQueueConfig

    s = ws.settings
    big, small = s.queue_sizes
    queues = {}
    for n in s.queue_sizes:
        queue = MomentumQueue(MomentumQueueConfig(size=n), s.queue_dim, torch.device("cpu"), WorldInfo())
        queue.enqueue(torch.randn(n, s.queue_dim))
        queue.flush()
        queues[n] = queue
    scratch = torch.zeros(16 * 2**20)  # 64 MB: more than the last-level cache

    def measure(count: int) -> tuple[float, dict[str, Any]]:
        """``queue_reps`` × ``queue_calls`` pairs of single enqueues, big and small back to back
        (order alternating), each after a cache eviction; the median of the per-pair ratios."""
        keys = torch.randn(count, s.queue_dim)

        def once(queue: MomentumQueue) -> float:
            scratch.add_(1.0)
            started = time.perf_counter()
            queue.enqueue(keys)
            queue.flush()
            return time.perf_counter() - started

        for queue in queues.values():  # warm-up
            once(queue)
        pairs: list[tuple[float, float]] = []
        for i in range(s.queue_reps * s.queue_calls):
            if i % 2 == 0:
                a = once(queues[big])
                b = once(queues[small])
            else:
                b = once(queues[small])
                a = once(queues[big])
            pairs.append((a, b))
        times = {f"size_{big}": [a for a, _ in pairs], f"size_{small}": [b for _, b in pairs]}
        per_call = {k: statistics.median(v) * 1e6 for k, v in times.items()}
        ratio = median_ratio(times[f"size_{big}"], times[f"size_{small}"])
        return ratio, {"ratio": ratio, "median_us_per_enqueue": per_call,
                       "times": {k: summary(v) for k, v in times.items()}}

    ratio, main = measure(s.queue_keys)
    sweep = {}
    for count in s.queue_sweep:
        if count != s.queue_keys and count <= small:
            sweep[str(count)] = measure(count)[1]
    return {
        "value": ratio,
        "keys_per_enqueue": s.queue_keys,
        "dim": s.queue_dim,
        "median_us_per_enqueue": main["median_us_per_enqueue"],
        "times": main["times"],
        "sweep": sweep,
    }


def bench_data_pipeline(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """Tokens/s the quickstart data pipeline delivers -- tokenize the CLDR corpus, pack MLM
    blocks and lay out TLM pairs (``Trainer._build_streams``), then α-sample and collate (mask,
    pad) the MLM and TLM micro-batches of ``pipeline_steps`` steps -- against tokens/s the
    quickstart ``Trainer.train_step`` consumes (MLM + TLM), alternating."""
    from objkit.step import micro_batch_seed

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart())
    seed, size = trainer.train_cfg.seed, trainer.micro_batch_size
    delivered: list[int] = []
    consumed: list[int] = []
    build_seconds: list[float] = []

    def pipeline() -> None:
        started = time.perf_counter()
        with quiet():
            streams = trainer._build_streams()
        build_seconds.append(time.perf_counter() - started)
        total = 0
        for step in range(s.pipeline_steps):
            for built in trainer.objectives:
                generator = torch.Generator().manual_seed(micro_batch_seed(seed, built.name, step, 0, 0))
                batch = built.objective.collate(streams[built.name].next_examples(size), generator)
                total += int(batch["attention_mask"].sum())
        delivered.append(total)

    def train() -> None:
        consumed.append(sum(trainer.train_step().tokens for _ in range(s.pipeline_trainer_steps)))

    times = alternate({"pipeline": pipeline, "trainer": train}, s.pipeline_reps)
    warm = len(delivered) - len(times["pipeline"])
    rates_p = [n / t for n, t in zip(delivered[warm:], times["pipeline"], strict=True)]
    rates_t = [n / t for n, t in zip(consumed[warm:], times["trainer"], strict=True)]
    margin = statistics.median(a / b for a, b in zip(rates_p, rates_t, strict=True))
    build = statistics.median(build_seconds[warm:])
    steady = [(n / (t - b)) for n, t, b in zip(delivered[warm:], times["pipeline"], build_seconds[warm:], strict=True)]
    return {
        "value": margin,
        "recipe": "quickstart (MLM + TLM, embedded CLDR corpus)",
        "pipeline_tokens_per_s": statistics.median(rates_p),
        "trainer_tokens_per_s": statistics.median(rates_t),
        "steps_delivered_per_rep": s.pipeline_steps,
        "tokenize_pack_seconds": build,
        "sample_collate_tokens_per_s": statistics.median(steady),
        "times": {k: summary(v) for k, v in times.items()},
    }


def bench_vs_hf_trainer(ws: Workspace, trainer: Any | None = None) -> dict[str, Any]:
    """objkit's ``Trainer.train_step`` (quickstart recipe, MLM only) against ``transformers.Trainer``
    with ``DataCollatorForLanguageModeling`` (15%, 80/10/10) on a copy of the same model, the
    same packed MLM blocks (objkit's ``load_source`` + MLM ``prepare``), the same batch size,
    learning rate, betas, eps, weight decay, warm-up and clipping; HF's default optimizer.
    The two alternate step by step: a ``TrainerCallback`` runs one objkit step after each HF
    step. Tokens are non-padding tokens of each forward."""
    from transformers import DataCollatorForLanguageModeling, TrainerCallback, TrainingArguments
    from transformers import Trainer as HFTrainer

    from objkit.data import load_source

    s = ws.settings
    trainer = trainer or ws.trainer(ws.quickstart(["objectives.tlm.enabled=false"]))
    recipe = trainer.recipe
    mlm = objective(trainer, "mlm")
    with quiet():
        source = recipe.data["mono"]
        blocks = mlm.prepare(load_source("mono", source, trainer.tokenizer, max_tokens=recipe.model.max_length - 2))
    blocks = blocks.remove_columns([c for c in blocks.column_names if c != "input_ids"])
    model = copy.deepcopy(trainer.encoder.mlm)
    hf_tokens: list[int] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: hf_tokens.append(int(kwargs["attention_mask"].sum())), with_kwargs=True
    )
    warmup = 2
    steps = warmup + s.hf_reps
    times: dict[str, list[float]] = {"objkit": [], "hf_trainer": []}
    objkit_tokens: list[int] = []

    class Alternate(TrainerCallback):
        def __init__(self) -> None:
            self.mark = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            hf_seconds = time.perf_counter() - self.mark
            started = time.perf_counter()
            stats = trainer.train_step()
            objkit_seconds = time.perf_counter() - started
            if state.global_step > warmup:
                times["hf_trainer"].append(hf_seconds)
                times["objkit"].append(objkit_seconds)
                objkit_tokens.append(stats.tokens)
            self.mark = time.perf_counter()

    opt = trainer.resolved.optimizer_config  # [train.optimizer] as the adamw plugin validated it
    args = TrainingArguments(
        output_dir=str(ws.run_dir()), per_device_train_batch_size=trainer.micro_batch_size, max_steps=steps,
        learning_rate=recipe.train.lr, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1], adam_epsilon=opt.eps,
        weight_decay=opt.weight_decay, warmup_steps=recipe.train.warmup_steps, lr_scheduler_type="linear",
        max_grad_norm=recipe.train.clip_norm or 0.0, logging_steps=recipe.train.log_every, save_strategy="no",
        report_to=[], use_cpu=True, dataloader_num_workers=0, seed=recipe.train.seed, disable_tqdm=True,
    )
    collator = DataCollatorForLanguageModeling(trainer.tokenizer, mlm_probability=0.15)
    with quiet(), contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 (HF prints its metrics)
        hf = HFTrainer(model=model, args=args, train_dataset=blocks, data_collator=collator, callbacks=[Alternate()])
        hf.train()
    hf_per_step = hf_tokens[-len(times["hf_trainer"]) :]
    rate_hf = [n / t for n, t in zip(hf_per_step, times["hf_trainer"], strict=True)]
    rate_ok = [n / t for n, t in zip(objkit_tokens, times["objkit"], strict=True)]
    return {
        "value": statistics.median(a / b for a, b in zip(rate_ok, rate_hf, strict=True)),
        "objkit_tokens_per_s": statistics.median(rate_ok),
        "hf_tokens_per_s": statistics.median(rate_hf),
        "hf_optimizer": str(args.optim),
        "objkit_optimizer": repr({k: trainer.optimizer.defaults[k] for k in ("foreach", "fused")}),
        "batch": trainer.micro_batch_size,
        "times": {k: summary(v) for k, v in times.items()},
    }


# ---------------------------------------------------------------------------- memory (child)
def memory_child(settings: Settings, root: Path) -> dict[str, Any]:
    """One ``infoxlm_large`` step at batch 1 (random weights, the queue pre-filled so XLCO runs):
    peak RSS and its analytic estimate. Runs in a fresh process (``--memory-child``)."""
    from objkit.masking import IGNORE_INDEX  # noqa: F401  (import cost counted in the baseline)
    from objkit.trainer import Trainer  # noqa: F401

    s = settings
    ws = Workspace(s, root)
    tokenizer = ws.tokenizer_for(s.memory_vocab)
    data = ws.corpus_data(s.memory_length)
    gc.collect()
    baseline = rss_now()

    def edit(raw: dict) -> None:
        raw["model"].pop("init", None)
        raw["model"].update(preset=s.memory_preset, max_length=s.memory_length, tokenizer=str(tokenizer))
        if s.memory_layers:
            raw["model"]["num_layers"] = s.memory_layers
        raw["data"] = data
        raw["train"].pop("micro_batch_size", None)
        raw["train"].update(batch_size=1, steps=1_000_000, log_every=1_000_000, checkpoint_every=1_000_000)
        if s.memory_xlco_layer:
            raw["objectives"]["xlco"]["layer"] = s.memory_xlco_layer

    trainer = ws.trainer(ws.recipe(s.memory_recipe, edit=edit))
    xl = objective(trainer, "xlco")
    for store in xl.stores.values():
        store.enqueue(torch.randn(store.size, xl.dim))
        store.flush()
    built = rss_now()
    started = time.perf_counter()
    stats = trainer.train_step()
    step_seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    enc = trainer.encoder
    params = sum(p.numel() for p in trainer.params)
    key = xl.tracker.numel()
    queue = sum(int(st.nbytes()) for st in xl.stores.values())
    h, L, a, layers = enc.hidden_size, s.memory_length, enc.num_heads, enc.num_layers
    # Korthikanti et al. (2022) per layer s·b·h·(34 + 5·a·s/h) bytes at 16 bits: ×2 in fp32; one
    # objective's graph at a time (per-objective backward); the largest is a full-depth MLM/TLM pass.
    activations = 2 * layers * L * 1 * h * (34 + 5 * a * L / h)
    estimate = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "adam_states": 8 * params,
        "key_encoder": 4 * key,
        "queue": queue,
        "activations": activations,
    }
    total = sum(estimate.values())
    return {
        "recipe": s.memory_recipe,
        "layers": layers,
        "hidden": h,
        "vocab": enc.vocab_size,
        "xlco_layer": xl.layer,
        "query_parameters": params,
        "key_encoder_parameters": key,
        "step_seconds": step_seconds,
        "losses": {k: float(v) / stats.units[k] for k, v in stats.sums.items() if k.endswith("/loss") and stats.units[k]},
        "peak_rss_bytes": peak,
        "rss_after_imports_bytes": baseline,
        "rss_after_build_bytes": built,
        "estimate_bytes": estimate,
        "estimate_total_bytes": total,
        "estimate_plus_baseline_bytes": total + baseline,
        "peak_over_estimate_plus_baseline": peak / (total + baseline),
    }


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def bench_memory(ws: Workspace) -> dict[str, Any]:
    payload = json.dumps(asdict(ws.settings))
    out = ws.root / "memory.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", payload, "--json", str(out),
           "--workdir", str(ws.root / "memory"), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    return json.loads(out.read_text())


def bench_padding_fraction(ws: Workspace) -> dict[str, Any]:
    """Padded fraction of TLM's and XLCO's token slots without and with length bucketing, and
    the step-time ratio (``benchmarks/padding_fraction.py``)."""
    return padding_fraction.measure(ws, alternate=alternate, median_ratio=median_ratio, summary=summary, root=ROOT)


# ============================================================================ the suite
def _memory_speed(name: str) -> Callable[..., dict[str, Any]]:
    """A row of benchmarks/memory_speed.py, given this module for its helpers."""

    def bench(ws: Workspace) -> dict[str, Any]:
        return getattr(memory_speed, name)(ws, sys.modules[__name__])

    return bench


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "mlm_head_speedup": bench_mlm_head,
    "framework_overhead": bench_framework_overhead,
    "xlco_step_ratio": bench_xlco_step,
    "ema_foreach_speedup": bench_ema,
    "enqueue_ratio": bench_enqueue,
    "data_pipeline_margin": bench_data_pipeline,
    "vs_hf_trainer": bench_vs_hf_trainer,
    "padding_fraction": bench_padding_fraction,
    "large_peak_vs_analytic": _memory_speed("large_peak_vs_analytic"),
    "checkpointing_step_ratio": _memory_speed("checkpointing_step_ratio"),
    "chunked_head_time_ratio": _memory_speed("chunked_head_time_ratio"),
    "compile_speedup": _memory_speed("compile_speedup"),
    "tokenizer_throughput": data_bench.bench_tokenizer_throughput,
    "cache_startup_speedup": data_bench.bench_cache_startup,
    "sampler_bytes_per_row": data_bench.bench_sampler,
    "cpu_step_speedup": lambda ws: cpu_step.cpu_step_speedup(ws, sys.modules[__name__]),
}
DATA_ROWS = ("tokenizer_throughput", "cache_startup_speedup", "sampler_bytes_per_row")
# rows that need a GPU: run with --device cuda only
GPU_BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {"gpu_mfu": _memory_speed("gpu_mfu")}
# what --device cuda runs (the CPU-only rows compare with HF on CPU or measure host memory)
CUDA_ROWS = ("checkpointing_step_ratio", "chunked_head_time_ratio", "compile_speedup", "gpu_mfu")


def passes(key: str, value: float) -> bool:
    direction, goal, _ = GOALS[key]
    return value >= goal if direction == ">=" else value <= goal


def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.strip().startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    commit = None
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT).stdout.strip() or None
    import transformers

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg(),
        "git_commit": commit,
        "date": datetime.date.today().isoformat(),
    }


def run_suite(settings: Settings, only: list[str] | None = None, workdir: Path | None = None) -> dict[str, Any]:
    """Run the benchmarks (all, or ``only``); return the JSON document."""
    started = time.perf_counter()
    info = machine()
    load, cores = info["load_average_at_start"][0], os.cpu_count() or 1
    if load > 0.5 * cores and torch.get_num_threads() >= cores:
        info["warning"] = (f"load average {load:.1f} on {cores} cores: other processes compete for the cores "
                           "torch's threads use, so every parallel kernel may wait a scheduler slice for its "
                           "second thread and ratios become noisy; rerun on a quiet machine, or with --threads 1")
        log(f"warning: {info['warning']}")
    ws = Workspace(settings, workdir)
    results: dict[str, dict[str, Any]] = {}
    shared: dict[str, Any] = {}
    rows = dict(BENCHMARKS)
    if settings.device == "cuda":
        rows = {k: fn for k, fn in {**BENCHMARKS, **GPU_BENCHMARKS}.items() if k in CUDA_ROWS}
    wanted = only or [*rows, "memory", "mfu"]
    try:
        for key, fn in rows.items():
            if key not in wanted:
                continue
            log(f"{key} ...")
            t0 = time.perf_counter()
            kwargs: dict[str, Any] = {}
            if key in ("framework_overhead", "vs_hf_trainer"):  # the same quickstart MLM trainer
                if "mlm" not in shared:
                    shared["mlm"] = ws.trainer(ws.quickstart(["objectives.tlm.enabled=false"]))
                kwargs["trainer"] = shared["mlm"]
            results[key] = fn(ws, **kwargs)
            results[key]["seconds"] = time.perf_counter() - t0
            log(f"{key} = {results[key]['value']:.3f} ({results[key]['seconds']:.0f} s)")
        shared.clear()
        gc.collect()
        extra: dict[str, Any] = {}
        if "mfu" in wanted:
            extra["matmul_peak"] = matmul_peak(settings.matmul_size)
            extra["mfu"] = mfu(results, extra["matmul_peak"]["gflops"], ws)
        if "memory" in wanted and settings.run_memory:
            log("memory: one infoxlm_large step in a child process ...")
            t0 = time.perf_counter()
            extra["memory"] = bench_memory(ws)
            extra["memory"]["seconds"] = time.perf_counter() - t0
            if "peak_rss_bytes" in extra["memory"]:
                m = extra["memory"]
                log(f"memory: peak RSS {m['peak_rss_bytes'] / 2**30:.2f} GiB, estimate "
                    f"{m['estimate_plus_baseline_bytes'] / 2**30:.2f} GiB")
            else:
                log(f"memory: failed: {extra['memory'].get('error')}")
    finally:
        ws.close()
    doc: dict[str, Any] = {key: results[key]["value"] for key in rows if key in results}
    doc["goals"] = {
        key: {"goal": f"{GOALS[key][0]} {GOALS[key][1]}", "value": results[key]["value"],
              "pass": passes(key, results[key]["value"]), "what": GOALS[key][2]}
        for key in rows if key in results
    }
    doc["all_pass"] = all(g["pass"] for g in doc["goals"].values())
    doc["details"] = results | extra
    doc["settings"] = asdict(settings)
    doc["machine"] = info
    doc["wall_seconds"] = time.perf_counter() - started
    return doc


def mfu(results: dict[str, Any], peak_gflops: float, ws: Workspace) -> dict[str, Any]:
    """Model FLOP utilisation: useful matmul FLOPs (masked-only head) / step time / matmul peak."""
    out: dict[str, Any] = {}
    head = results.get("mlm_head_speedup")
    if head:
        seconds = head["times"]["objkit_masked_only"]["median_s"]
        flops = head["model_tflop_per_step"]["objkit"] * 1e12
        out["base_shape_mlm_step"] = {"model": head["model"], "step_s": seconds, "gflop": flops / 1e9,
                                      "mfu": flops / seconds / (peak_gflops * 1e9)}
    overhead = results.get("framework_overhead")
    if overhead:
        resolved = ws.quickstart()
        cfg = resolved.encoder_config  # [model] as the encoder plugin validated it
        from objkit.encoder import PRESETS

        dims = PRESETS[cfg.preset or "tiny"]
        tokens = overhead["tokens_per_step"]
        length = cfg.max_length
        vocab = len(_tokenizer(ws))
        flops = train_flops(layers=dims["num_hidden_layers"], hidden=dims["hidden_size"],
                            ffn=dims["intermediate_size"], tokens=tokens, seq_len=length,
                            head_rows=0.15 * tokens, vocab=vocab)
        seconds = overhead["times"]["objkit_trainer"]["median_s"]
        out["quickstart_mlm_step"] = {"tokens": tokens, "step_s": seconds, "gflop": flops / 1e9,
                                      "mfu": flops / seconds / (peak_gflops * 1e9)}
    out["peak_gflops"] = peak_gflops
    return out


def _tokenizer(ws: Workspace) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ws.tokenizer_dir()))


# ============================================================================ output
def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 0.995 or value == 0 else f"{value:.3f}"


def markdown(doc: dict[str, Any], command: str) -> str:
    info = doc["machine"]
    lines = [
        "| benchmark | ratio | goal | pass | details |",
        "|---|---:|---:|:---:|---|",
    ]
    details = doc["details"]
    for key, goal in doc["goals"].items():
        lines.append(f"| `{key}` | {fmt(goal['value'])} | {goal['goal']} | {'yes' if goal['pass'] else '**no**'} "
                     f"| {describe(key, details[key])} |")
    notes = []
    xl = details.get("xlco_step_ratio")
    if xl:
        t = xl["truncation"]
        notes.append(f"XLCO truncation at layer {xl['model']['xlco_layer']}: InfoXLM step {fmt(t['truncated_over_full_depth'])}× "
                     f"the full-depth step (saves {100 * t['saving']:.0f}%); full depth would be "
                     f"{fmt(t['full_depth_step_ratio'])}× MLM+TLM")
    mem = details.get("memory")
    if mem and "peak_rss_bytes" in mem:
        notes.append(f"peak RSS of one `{mem['recipe']}` step (B=1, L={doc['settings']['memory_length']}, random "
                     f"weights, CPU): {mem['peak_rss_bytes'] / 2**30:.1f} GiB vs analytic "
                     f"{mem['estimate_total_bytes'] / 2**30:.1f} GiB + {mem['rss_after_imports_bytes'] / 2**30:.1f} GiB "
                     f"process baseline = {mem['estimate_plus_baseline_bytes'] / 2**30:.1f} GiB")
    mfu_ = details.get("mfu")
    if mfu_:
        parts = [f"{name.replace('_', ' ')} {100 * v['mfu']:.0f}%" for name, v in mfu_.items() if isinstance(v, dict)]
        notes.append(f"MFU vs measured fp32 matmul peak {mfu_['peak_gflops']:.0f} GFLOP/s: " + ", ".join(parts))
    text = "\n".join(lines) + "\n\n"
    text += "".join(f"- {n}\n" for n in notes)
    text += (f"\nMachine: {info['cpu']}, {info['cpus']} CPU cores ({info['torch_threads']} torch threads), "
             f"{'GPU ' + info['cuda'] if info['cuda'] else 'no GPU'}; torch {info['torch']}, transformers "
             f"{info['transformers']}; {info['date']}; `{command}` took {doc['wall_seconds'] / 60:.1f} min "
             f"(load average at start {info['load_average_at_start'][0]:.1f}).\n")
    if info.get("warning"):
        text += f"\nWarning: {info['warning']}.\n"
    return text


def describe(key: str, d: dict[str, Any]) -> str:
    t = d.get("times", {})

    def ms(name: str) -> str:
        v = t[name]["median_s"]
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"

    if key == "mlm_head_speedup":
        m = d["model"]
        return (f"HF {ms('hf_full_vocab')} vs objkit {ms('objkit_masked_only')} per step; {m['layers']} layers, "
                f"hidden {m['hidden']}, vocab {m['vocab']:,}, B×L {d['batch'].replace(' x ', '×')}")
    if key == "framework_overhead":
        return f"objkit {ms('objkit_trainer')} vs hand-written {ms('manual_loop')} per step; {d['recipe']}"
    if key == "xlco_step_ratio":
        m = d["model"]
        return (f"{ms('infoxlm')} vs {ms('mlm_tlm')} per step; {m['layers']} layers, hidden {m['hidden']}, "
                f"{d['sequences_per_objective']}×{d['sequence_length']} per objective, queue {d['queue']:,}")
    if key == "ema_foreach_speedup":
        return f"{ms('reference_loop')} vs {ms('objkit_foreach')}; {d['parameters'] / 1e6:.0f}M parameters"
    if key == "enqueue_ratio":
        us = d["median_us_per_enqueue"]
        return f"{' vs '.join(f'{v:.0f} µs' for v in us.values())} per enqueue of {d['keys_per_enqueue']} keys"
    if key == "data_pipeline_margin":
        return (f"{d['pipeline_tokens_per_s']:,.0f} vs {d['trainer_tokens_per_s']:,.0f} tokens/s "
                f"(tokenize + pack {d['tokenize_pack_seconds']:.1f} s included)")
    if key == "vs_hf_trainer":
        return f"{d['objkit_tokens_per_s']:,.0f} vs {d['hf_tokens_per_s']:,.0f} tokens/s"
    if key == "padding_fraction":
        return padding_fraction.describe(d)
    if key in DATA_ROWS:
        return data_bench.describe(key, d)
    if key == "cpu_step_speedup":
        return cpu_step.describe(d)
    return memory_speed.describe(key, d)


README_BEGIN = "<!-- perf:begin (generated by benchmarks/run.py --update-docs) -->"
README_END = "<!-- perf:end -->"
# Where measured tables are published: the README and the docs site's pages. A table goes into
# every one of these files that holds its markers (the transfer table is in the README and in
# docs/results/transfer.md; the others in docs/results/).
PUBLISHED = ("README.md", "docs/**/*.md")
# A data folder given by path (absolute, or ../ beside the checkout) is shown as data/NAME/...:
# the layout `objkit data get NAME -o data/NAME` writes. Published pages never name a path of
# the machine a table was measured on.
_DATA_PATH = re.compile(r"""(?<![\w.:/-])(?:\.\./|/)(?:[^\s`'"()]*/)?data/""")


def public_paths(text: str) -> str:
    """``text`` with every path into a ``.../data/`` folder shown from ``data/`` on."""
    return _DATA_PATH.sub("data/", text)


def update_readme(path: Path, table: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Put ``table`` (its data paths as :func:`public_paths` shows them) between the markers
    ``begin`` and ``end`` of ``path``."""
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin!r} ... {end!r} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{begin}\n{public_paths(table).strip()}\n{end}{tail}", encoding="utf-8")
    tmp.replace(path)


def publish(table: str, begin: str = README_BEGIN, end: str = README_END, root: Path | None = None) -> list[Path]:
    """Put ``table`` between ``begin`` and ``end`` in every published page holding both markers
    (:data:`PUBLISHED`, under ``root``: the checkout); returns those pages."""
    root = ROOT if root is None else root
    pages = sorted({p for pattern in PUBLISHED for p in root.glob(pattern)})
    hits = [p for p in pages if begin in (text := p.read_text(encoding="utf-8")) and end in text]
    if not hits:
        raise SystemExit(f"no page of {root} ({', '.join(PUBLISHED)}) holds the markers {begin!r} ... {end!r}")
    for page in hits:
        update_readme(page, table, begin, end)
        print(f"wrote the table into {page.relative_to(root)}", file=sys.stderr)
    return hits


def print_table(doc: dict[str, Any]) -> None:
    print()
    print(f"{'benchmark':24s} {'ratio':>8s} {'goal':>8s}  pass")
    for key, goal in doc["goals"].items():
        print(f"{key:24s} {goal['value']:8.3f} {goal['goal']:>8s}  {'yes' if goal['pass'] else 'NO'}")
    print(f"wall time {doc['wall_seconds'] / 60:.1f} min")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer repetitions and layers (< 20 min on 2 CPU cores)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", type=Path, help="write the Performance table (docs/results/performance.md) here")
    p.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true",
                   help="replace the table between the perf markers of docs/results/performance.md with this run's")
    p.add_argument("--only", help="comma-separated subset: " + ", ".join([*BENCHMARKS, "memory", "mfu"]))
    p.add_argument("--toy", action="store_true", help="toy sizes: checks that everything runs (numbers mean nothing)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's, one per physical core)")
    p.add_argument("--workdir", type=Path, help="temporary files (default: a fresh temp dir, removed at the end)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cuda: the GPU rows (" + ", ".join(CUDA_ROWS) + ") at the XLM-R-base shape, L=512, bf16")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--lean-memory-child", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.lean_memory_child:
        return memory_speed.main_child(args, sys.modules[__name__])
    if args.memory_child:
        result = memory_child(Settings(**json.loads(args.memory_child)), args.workdir)
        args.json.write_text(json.dumps(result, indent=1))
        return 0
    settings = Settings.toy() if args.toy else Settings.quick() if args.quick else Settings.full()
    if args.device == "cuda":
        settings = Settings(**{**asdict(Settings.toy()), "device": "cuda"}) if args.toy else Settings.gpu()
    only = [x.strip() for x in args.only.split(",")] if args.only else None
    doc = run_suite(settings, only, args.workdir)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + (
        " --device cuda" if args.device == "cuda" else "") + (
        f" --threads {args.threads}" if args.threads else "")
    doc["command"] = command
    print_table(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(doc, command))
    if args.update_docs:
        publish(markdown(doc, command))
    print()
    print(markdown(doc, command))
    return 0 if doc["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
