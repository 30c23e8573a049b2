"""What every row uses: timing (alternating repetitions, median of ratios), the
:class:`Workspace` of inputs (recipes, tokenizers, the synthetic corpus, trainers), and small
helpers on trainers, model shapes and FLOPs. Rows get these from here; ``run.py`` re-exports
them for the scripts that ``import run`` (memory_phases.py, gpu_sweep.py)."""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from suite.settings import XLMR_VOCAB, Settings

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
RUN_PY = ROOT / "benchmarks" / "run.py"
"""The runner: child processes (``--memory-child``, ``--lean-memory-child``) run it again."""


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


def ms(d: dict[str, Any], name: str) -> str:
    """The median time of variant ``name`` of a row's details (``d["times"]``), for the table."""
    v = d["times"][name]["median_s"]
    return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ============================================================================ inputs
class Workspace:
    """Temporary files shared by the benchmarks: tokenizers, the synthetic corpus, run dirs."""

    def __init__(self, settings: Settings, root: Path | None = None) -> None:
        from objkit.contract.registry import default_registry

        self.settings = settings
        self.owned = root is None  # a temporary directory of our own: removed by close()
        self.root = Path(root or tempfile.mkdtemp(prefix="objkit-bench-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = default_registry()
        self._tokenizer_dir: Path | None = None
        self._padded: dict[int, Path] = {}
        self._corpus: dict[int, dict[str, Path]] = {}
        self._runs = 0
        self._shared: dict[str, Any] = {}

    def run_dir(self) -> Path:
        self._runs += 1
        return self.root / f"run{self._runs}"

    # ------------------------------------------------------------------ recipes
    def recipe(self, name: str, sets: list[str] | None = None, edit: Callable[[dict], None] | None = None) -> Any:
        """A shipped recipe, fully resolved, with ``--set`` overrides and an optional edit of its dict."""
        from objkit.recipe.loader import load_recipe, validate_recipe

        resolved = load_recipe(RECIPES / f"{name}.toml", sets or [], self.registry)
        if edit is None:
            return resolved
        raw = resolved.to_dict()
        edit(raw)
        return validate_recipe(raw, self.registry, source=f"{name}.toml (benchmark)")

    def quickstart(self, sets: list[str] | None = None) -> Any:
        base = ["train.log_every=1000000", "train.checkpoint_every=1000000", "train.steps=1000000"]
        return self.recipe("quickstart", base + self.settings.quickstart_sets + (sets or []))

    def quickstart_mlm(self) -> Any:
        """The quickstart trainer with MLM only, shared by the rows that compare with it."""
        return self.shared("quickstart_mlm", lambda: self.trainer(self.quickstart(["objectives.tlm.enabled=false"])))

    def trainer(self, resolved: Any) -> Any:
        from objkit.train.trainer import Trainer

        with quiet():
            return Trainer(resolved, self.run_dir(), self.registry, progress=False)

    def shared(self, name: str, build: Callable[[], Any]) -> Any:
        """One object several rows use (e.g. the quickstart MLM trainer of ``framework_overhead``
        and ``vs_hf_trainer``): built by the first row that asks, kept until :meth:`release`."""
        if name not in self._shared:
            self._shared[name] = build()
        return self._shared[name]

    def release(self) -> None:
        """Drop the shared objects (the runner does, after the rows and before the extras)."""
        self._shared.clear()
        gc.collect()

    # ------------------------------------------------------------------ tokenizers
    def tokenizer_dir(self) -> Path:
        """The quickstart recipe's trained tokenizer (trained once, cached by objkit)."""
        if self._tokenizer_dir is None:
            from objkit.train.build import load_tokenizer

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

        from objkit.data.tokenizer import SPM_FILE

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


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


__all__ = ["RECIPES", "ROOT", "RUN_PY", "XLMR_VOCAB", "Settings", "Workspace", "alternate", "log", "matmul_peak",
           "median_ratio", "model_dims", "ms", "objective", "quiet", "rss_now", "same_optimizer", "summary",
           "train_flops", "twin_stream", "xlmr_mlm_recipe"]
