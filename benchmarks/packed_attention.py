"""``packed_tokens_per_s_ratio``: effective tokens/s (real, non-pad tokens per second of
``Trainer.train_step``) of MLM + TLM with packed rows and per-document attention
(``packing = "documents"``) over the same step padded one sentence / one pair a row
(``packing = "none"``). A row of ``benchmarks/run.py``.

Two trainers, identical but for the objectives' ``packing``: a ``small`` encoder (6 layers, hidden
256; 1 layer, hidden 32 at ``--toy``), ``max_length`` 128, a SentencePiece tokenizer trained on the
data, MLM on every side as monolingual text and TLM on the pairs, ``train.packed_attention = "auto"``
(on CPU: the block-diagonal mask through SDPA). They draw the same sentences and pairs (batch_size
counts documents) and mask them alike, so both steps hold the same real tokens and compute the same
loss (tests/test_packed_attention.py); the row times them alternating, and the value is the
median of the per-repetition ratios padded / packed step time, which is the ratio of effective
tokens/s. On a CPU the gain is the padded slots no longer computed (linear layers, attention over
shorter rows); a GPU's varlen kernel saves the same slots and the block-diagonal mask's work too.
The row runs on the CPU (``devices=("cpu",)``); with ``Settings.device = "cuda"`` its trainers would
run on the GPU (precision auto: bf16), packed rows through FlashAttention-2's varlen kernel where
flash-attn is installed (``details.kernel`` says which) -- not run yet.

Data: WMT newstest (``train.en-XX.{en,XX}``, XX in de fr cs es ru, those present) from the folder
``OBJKIT_NEWSTEST`` names (default ``data/newstest`` under the working directory; the WMT news test
sets 2008-2020, e.g. as collected in github.com/Helsinki-NLP/OPUS-MT-testsets), at most
``packed_lines`` lines per file. Where it is missing, and always at ``--toy``, synthetic text
written here: lines of words with news-like lengths (log-normal, median 22 words), pairs
whose sides differ in length by up to a third. The row says which it used.
"""

from __future__ import annotations

import math
import os
import random
import statistics
from pathlib import Path
from typing import Any

from suite import common
from suite.registry import Row

PAIRS = ("de", "fr", "cs", "es", "ru")
WORDS = ("the of and to in a is that for on with as was by at from it be are this which have has an not but "
         "government minister said year people new market police city would will million percent after two "
         "president country company years first last could state week time world per cent official").split()


def newstest_dir() -> Path | None:
    path = Path(os.environ.get("OBJKIT_NEWSTEST", Path("data") / "newstest"))
    return path if _pairs(path) else None


def _pairs(path: Path) -> list[tuple[str, Path, Path]]:
    found = [(x, path / f"train.en-{x}.en", path / f"train.en-{x}.{x}") for x in PAIRS]
    return [(x, en, xx) for x, en, xx in found if en.is_file() and xx.is_file()]


def synthetic(root: Path, lines: int, seed: int = 0) -> Path:
    """``train.en-de.{en,de}`` of ``lines`` lines with news-like lengths (see the module docstring)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    src, tgt = [], []
    for _ in range(lines):
        n = max(1, min(120, round(rng.lognormvariate(math.log(22), 0.55))))
        src.append(" ".join(rng.choices(WORDS, k=n)))
        tgt.append(" ".join(rng.choices(WORDS, k=max(1, round(n * rng.uniform(0.75, 1.33))))))
    (root / "train.en-de.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (root / "train.en-de.de").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return root


def recipe_text(corpus: Path, s: Any) -> str:
    pairs = _pairs(corpus)
    mono = [f'{{path="{en}",lang="en"}}' for _, en, _ in pairs[:1]] + [f'{{path="{xx}",lang="{x}"}}' for x, _, xx in pairs]
    para = [f'{{src="{en}",tgt="{xx}",src_lang="en",tgt_lang="{x}"}}' for x, en, xx in pairs]
    dims = ('preset = "small"' if s.name != "toy" else
            "num_layers = 1\nhidden_size = 32\nnum_heads = 2\nintermediate_size = 64")
    return f"""name = "packed_attention"
[model]
{dims}
max_length = 128
dropout = 0.1
tokenizer = {{ vocab_size = {s.packed_vocab}, max_sentences = 50000 }}
[data.mono]
type = "text"
max_lines = {s.packed_lines}
files = [{", ".join(mono)}]
[data.parallel]
type = "parallel"
max_lines = {s.packed_lines}
pairs = [{", ".join(para)}]
[objectives.mlm]
data = "mono"
[objectives.tlm]
data = "parallel"
[train]
steps = 1000000
batch_size = {s.packed_batch}
lr = 1e-4
seed = 1
log_every = 1000000
checkpoint_every = 1000000
packed_attention = "auto"
device = "{s.device}"
"""


def measure(ws: Any) -> dict[str, Any]:
    from objkit.recipe.loader import load_recipe

    s = ws.settings
    corpus = None if s.name == "toy" else newstest_dir()
    data = f"WMT newstest en-{{{','.join(x for x, _, _ in _pairs(corpus))}}} ({corpus})" if corpus else \
        "synthetic news-length text (no newstest folder)" if s.name != "toy" else "synthetic news-length text (--toy)"
    corpus = corpus or synthetic(ws.root / "packed-corpus", s.packed_lines)
    path = ws.root / "packed_attention.toml"
    path.write_text(recipe_text(corpus.resolve(), s), encoding="utf-8")
    load_start = os.getloadavg()[0]
    trainers = {name: ws.trainer(load_recipe(path, [f"objectives.mlm.packing={packing}",
                                                    f"objectives.tlm.packing={packing}"], ws.registry))
                for name, packing in (("padded", "none"), ("packed", "documents"))}
    tokens: dict[str, list[int]] = {name: [] for name in trainers}
    padding: dict[str, list[float]] = {name: [] for name in trainers}

    def step(name: str) -> None:
        stats = trainers[name].train_step()
        if s.device == "cuda":
            import torch

            torch.cuda.synchronize()  # the wall time holds the whole step
        tokens[name].append(stats.tokens)
        slots = [float(stats.sums[k]) / stats.units[k] for k in stats.sums if k.endswith("/padding") and stats.units[k]]
        padding[name].append(statistics.mean(slots) if slots else 0.0)

    times = common.alternate({name: (lambda n=name: step(n)) for name in trainers}, s.packed_reps)
    warm = len(tokens["padded"]) - s.packed_reps  # the untimed warm-up steps
    if tokens["padded"] != tokens["packed"]:
        raise RuntimeError(f"padded and packed steps drew different tokens: {tokens}")
    rate = {name: sum(tokens[name][warm:]) / sum(times[name]) for name in trainers}
    return {
        "value": common.median_ratio(times["padded"], times["packed"]),
        "effective_tokens_per_s": rate,
        "tokens_per_step": statistics.mean(tokens["padded"][warm:]),
        "padded_slot_fraction": {name: statistics.mean(padding[name][warm:]) for name in trainers},
        "documents_per_step": trainers["padded"].train_cfg.batch_size,
        "model": "small (6 layers, hidden 256)" if s.name != "toy" else "1 layer, hidden 32",
        "max_length": 128,
        "kernel": kernel(trainers["packed"]),
        "device": s.device,
        "data": data,
        "times": {name: common.summary(v) for name, v in times.items()},
        "load_average": {"start": load_start, "end": os.getloadavg()[0]},
    }


def kernel(trainer: Any) -> str:
    """The kernel the packed trainer's rows ran with (``train.packed_attention = "auto"`` resolved)."""
    from objkit.blocks.packed import flash_varlen_available

    options = trainer.encoder.run_options
    return "varlen" if trainer.device.type == "cuda" and flash_varlen_available(options) else "mask"


def describe(d: dict[str, Any]) -> str:
    rate, pad = d["effective_tokens_per_s"], d["padded_slot_fraction"]
    return (f"{rate['packed']:,.0f} vs {rate['padded']:,.0f} effective tokens/s (MLM + TLM, "
            f"{d['documents_per_step']} sentences and pairs a step; padded slots {pad['padded']:.0%} → "
            f"{pad['packed']:.0%}; {d['kernel']} kernel, {d['device']}); {d['data']}")


ROWS = [
    Row("packed_tokens_per_s_ratio", measure, ">=", 1.5,
        "effective tokens/s of MLM + TLM packed with per-document attention / padded one a row (newstest)", describe),
]
