"""The memory and speed rows of ``benchmarks/run.py`` (issue 17): activation checkpointing, the
chunked LM head, torch.compile, the peak memory of an ``infoxlm_large`` step against its
analytic sum and the dry-run estimate, and the MFU of an XLM-R-base step on a GPU.

Every function takes the suite's ``Workspace`` and ``bench`` (the suite's helpers,
``suite.common``: ``alternate``, ``median_ratio``, ``summary``, ``xlmr_mlm_recipe``, ...) and
returns the row's details with the gated number under ``"value"``; ``ROWS`` at the end declares
the rows (benchmarks/suite/registry.py). ``--device cuda`` runs the trainer-based
rows on the GPU (bf16 autocast there); the memory row is CPU-only (peak RSS of a child process).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from suite import common
from suite.registry import Row

GiB = 2**30

# Peak dense bf16 tensor-core FLOP/s (no sparsity), from the vendors' data sheets, by a substring
# of torch.cuda.get_device_name(); the first match wins.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5 / "H100 80GB HBM3"
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
]


def peak_bf16(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step(trainer: Any, device: str) -> Any:
    """One ``Trainer.train_step``, synchronised on CUDA so wall times hold the whole step."""
    stats = trainer.train_step()
    _sync(device)
    return stats


def _mlm_trainer(ws: Any, bench: Any, *sets: str, layers: int | None = None) -> Any:
    """``recipes/xlmr_mlm.toml`` at the base shape of the settings (``head_*``: hidden, vocab, B, L)."""
    s = ws.settings
    resolved = bench.xlmr_mlm_recipe(ws, layers=layers or s.head_layers, hidden=s.head_hidden, heads=s.head_heads,
                                     ffn=s.head_ffn, vocab=s.head_vocab, batch=s.head_batch, length=s.head_length)
    raw = resolved.to_dict()
    raw["train"]["device"] = s.device
    from objkit.recipe.loader import apply_overrides, validate_recipe

    raw = apply_overrides(raw, list(sets))
    return ws.trainer(validate_recipe(raw, ws.registry, source="xlmr_mlm.toml (benchmark)"))


def _losses(stats: Any) -> dict[str, float]:
    return {k: float(v) / stats.units[k] for k, v in stats.sums.items() if k.endswith("/loss") and stats.units[k]}


# ---------------------------------------------------------------------------- checkpointing
def checkpointing_step_ratio(ws: Any, bench: Any) -> dict[str, Any]:
    """``Trainer.train_step`` of the MLM recipe at the base shape with
    ``train.activation_checkpointing = true`` / without: the price of recomputing every block
    (ideal: (1 + 1 + 2) / (1 + 2) = 1.33, one more forward per backward)."""
    s = ws.settings
    plain = _mlm_trainer(ws, bench)
    checkpointed = _mlm_trainer(ws, bench, "train.activation_checkpointing=true")
    times = bench.alternate({"checkpointed": lambda: _step(checkpointed, s.device),
                             "plain": lambda: _step(plain, s.device)}, s.head_reps)
    result = {
        "value": bench.median_ratio(times["checkpointed"], times["plain"]),
        "model": {"layers": s.head_layers, "hidden": s.head_hidden, "vocab": s.head_vocab},
        "batch": f"{s.head_batch} x {s.head_length}",
        "device": s.device,
        "times": {k: bench.summary(v) for k, v in times.items()},
    }
    del plain, checkpointed
    gc.collect()
    return result


# ---------------------------------------------------------------------------- chunked LM head
def chunked_head_time_ratio(ws: Any, bench: Any) -> dict[str, Any]:
    """The MLM step at the base shape with ``train.lm_head_chunk_rows`` / the head in one piece
    (time), and the head's peak memory both ways: the largest tensor the head keeps for its
    backward, and on CUDA the peak allocated during one head forward + backward."""
    s = ws.settings
    chunk = s.head_chunk_rows or s.chunk_rows
    rows = masked_rows(s)
    if chunk >= rows:
        raise ValueError(f"head_chunk_rows {chunk} is not below the step's {rows} masked rows: nothing is chunked")
    whole = _mlm_trainer(ws, bench)
    chunked = _mlm_trainer(ws, bench, f"train.lm_head_chunk_rows={chunk}")
    times = bench.alternate({"chunked": lambda: _step(chunked, s.device), "whole": lambda: _step(whole, s.device)},
                            s.head_reps)
    memory = {name: head_peak_bytes(trainer.encoder, s, chunk if name == "chunked" else 0)
              for name, trainer in (("whole", whole), ("chunked", chunked))}
    result = {
        "value": bench.median_ratio(times["chunked"], times["whole"]),
        "chunk_rows": chunk,
        "masked_rows_per_micro_batch": rows,
        "head_memory_bytes": memory,
        "memory_saved_bytes": memory["whole"] - memory["chunked"],
        "device": s.device,
        "times": {k: bench.summary(v) for k, v in times.items()},
    }
    del whole, chunked
    gc.collect()
    return result


def masked_rows(settings: Any) -> int:
    """The LM-head rows of one base-shape micro-batch: 15% of its tokens but ``<s>`` and ``</s>``."""
    return math.ceil(0.15 * settings.head_batch * (settings.head_length - 2))


def head_peak_bytes(encoder: Any, settings: Any, chunk: int) -> int:
    """Bytes of the tensors the LM head holds at once for one micro-batch's masked rows: on CUDA
    the peak allocated above the start during a forward + backward of :func:`objkit.lm_head_loss`;
    on CPU the tensors it saves for its backward plus the live ``rows × vocab`` logits."""
    from objkit.blocks.lm_head import lm_head_loss

    rows = masked_rows(settings)
    device = next(encoder.parameters()).device
    hidden = torch.randn(rows, encoder.hidden_size, device=device, requires_grad=True)
    targets = torch.randint(0, encoder.vocab_size, (rows,), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        lm_head_loss(encoder, hidden, targets, chunk_rows=chunk).loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start
    else:
        saved: dict[int, int] = {}
        params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}

        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in params:
                saved[ptr] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = lm_head_loss(encoder, hidden, targets, chunk_rows=chunk)
        live = 4 * min(chunk or rows, rows) * encoder.vocab_size  # one piece's logits, freed or recomputed
        peak = sum(saved.values()) + live
        out.loss.backward()
    encoder.zero_grad(set_to_none=True)
    return int(peak)


# ---------------------------------------------------------------------------- torch.compile
def compile_speedup(ws: Any, bench: Any) -> dict[str, Any]:
    """Eager / compiled ``Trainer.train_step`` (``train.compile = true``: every block's forward
    compiled), on the quickstart recipe and on the MLM recipe at the base shape; the value is
    the base-shape ratio. Compilation happens in untimed warm-up steps (its seconds reported)."""
    s = ws.settings
    out: dict[str, Any] = {"device": s.device}
    for name, build in (
        ("quickstart", lambda *sets: ws.trainer(ws.quickstart([f"train.device={s.device}", "model.dropout=0.0", *sets]))),
        ("base_shape", lambda *sets: _mlm_trainer(ws, bench, "model.dropout=0.0", *sets, layers=s.compile_layers)),
    ):
        eager = build()
        compiled = build("train.compile=true")
        started = time.perf_counter()
        for _ in range(s.compile_warmup):  # compiles (and recompiles for a second shape)
            _step(compiled, s.device)
            _step(eager, s.device)
        warmup = time.perf_counter() - started
        times = bench.alternate({"eager": lambda: _step(eager, s.device),
                                 "compiled": lambda: _step(compiled, s.device)}, s.compile_reps, warmup=0)
        out[name] = {"speedup": bench.median_ratio(times["eager"], times["compiled"]),
                     "warmup_seconds": warmup, "times": {k: bench.summary(v) for k, v in times.items()}}
        del eager, compiled
        gc.collect()
        torch._dynamo.reset()
    out["value"] = out["base_shape"]["speedup"]
    out["model"] = {"layers": s.compile_layers or s.head_layers, "hidden": s.head_hidden, "vocab": s.head_vocab,
                    "batch": f"{s.head_batch} x {s.head_length}"}
    return out


# ---------------------------------------------------------------------------- bf16 weights on a GPU
def bf16_weights_step_speedup(ws: Any, bench: Any) -> dict[str, Any]:
    """The MLM step at the base shape with fp32 weights under bf16 autocast (every matmul casts its
    weight first) / with ``train.param_dtype = "bf16"`` (bf16 weights, fp32 masters in the
    optimizer: no casts); the first step's losses of both are reported beside the times."""
    s = ws.settings
    if s.device != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("bf16_weights_step_speedup needs --device cuda on a machine with a CUDA device")
    plain = _mlm_trainer(ws, bench, "model.dropout=0.0")
    bf16 = _mlm_trainer(ws, bench, "model.dropout=0.0", "train.param_dtype=bf16")
    first = {"fp32_weights": _losses(_step(plain, s.device)), "bf16_weights": _losses(_step(bf16, s.device))}
    times = bench.alternate({"fp32_weights": lambda: _step(plain, s.device),
                             "bf16_weights": lambda: _step(bf16, s.device)}, s.head_reps)
    peak = {}
    for name, trainer in (("fp32_weights", plain), ("bf16_weights", bf16)):
        torch.cuda.reset_peak_memory_stats()
        _step(trainer, s.device)
        peak[name] = torch.cuda.max_memory_allocated()
    result = {
        "value": bench.median_ratio(times["fp32_weights"], times["bf16_weights"]),
        "first_step_losses": first,
        "max_memory_allocated_bytes": peak,
        "model": {"layers": s.head_layers, "hidden": s.head_hidden, "vocab": s.head_vocab},
        "batch": f"{s.head_batch} x {s.head_length}",
        "device": s.device,
        "times": {k: bench.summary(v) for k, v in times.items()},
    }
    del plain, bf16
    gc.collect()
    return result


# ---------------------------------------------------------------------------- MFU on a GPU
def gpu_mfu(ws: Any, bench: Any) -> dict[str, Any]:
    """Model FLOP utilisation of the XLM-R-base-shaped MLM step (``recipes/xlmr_mlm.toml`` through
    ``Trainer.train_step``: bf16 autocast, fused AdamW, SDPA, the masked-only head) at L = 512:
    matmul FLOPs (encoder, attention, masked-row head; ×3 for the backward) per second over the
    card's peak dense bf16 FLOP/s (:data:`PEAK_BF16_FLOPS`)."""
    s = ws.settings
    if s.device != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("gpu_mfu needs --device cuda on a machine with a CUDA device")
    sets = [f"train.param_dtype={s.mfu_param_dtype}"]
    trainer = _mlm_trainer(ws, bench, *sets, layers=s.head_layers)
    masked: list[int] = []
    for _ in range(2):  # warm-up
        _step(trainer, "cuda")
    times = []
    for _ in range(s.mfu_reps):
        started = time.perf_counter()
        stats = _step(trainer, "cuda")
        times.append(time.perf_counter() - started)
        masked.append(int(stats.units.get("mlm/loss", 0)))
    seconds = statistics.median(times)
    tokens = s.head_batch * s.head_length * trainer.accumulation
    flops = bench.train_flops(layers=s.head_layers, hidden=s.head_hidden, ffn=s.head_ffn, tokens=tokens,
                              seq_len=s.head_length, head_rows=statistics.mean(masked), vocab=s.head_vocab)
    name = torch.cuda.get_device_name(0)
    peak = peak_bf16(name)
    achieved = flops / seconds
    result = {
        "value": achieved / peak if peak else float("nan"),
        "device_name": name,
        "peak_bf16_tflops": peak / 1e12 if peak else None,
        "achieved_tflops": achieved / 1e12,
        "step_s": seconds,
        "tflop_per_step": flops / 1e12,
        "precision": trainer.precision,
        "param_dtype": s.mfu_param_dtype,
        "fused_adamw": bool(trainer.optimizer.defaults.get("fused")),
        "attention": trainer.encoder.mlm.config._attn_implementation,
        "model": {"layers": s.head_layers, "hidden": s.head_hidden, "vocab": s.head_vocab,
                  "batch": f"{s.head_batch} x {s.head_length}"},
        "max_memory_allocated_bytes": torch.cuda.max_memory_allocated(),
        "times": bench.summary(times),
    }
    del trainer
    gc.collect()
    return result


# ---------------------------------------------------------------------------- peak memory (child)
def large_peak_vs_analytic(ws: Any, bench: Any) -> dict[str, Any]:
    """Peak RSS of ``infoxlm_large`` training steps (random weights, fp32, CPU, the queue filled)
    at micro-batch ``lean_batch × lean_length`` with activation checkpointing and the chunked
    head, each variant in a fresh child process, against (a) the analytic sum -- weights,
    gradients, AdamW moments, the key encoder, the queue and one block's activations, plus the
    process's RSS after imports -- and (b) ``objkit run --dry-run``'s estimate for the same
    recipe. The same step without the options runs too when its estimate fits in the memory
    available (else its estimate alone is reported)."""
    s = ws.settings
    out: dict[str, Any] = {}
    for variant in ("lean", "plain"):
        out[variant] = _memory_child_run(ws, bench, variant)
    lean = out["lean"]
    if "peak_rss_bytes" not in lean:
        raise RuntimeError(f"the memory child failed: {lean.get('error')}")
    out["value"] = lean["peak_rss_bytes"] / lean["analytic_plus_baseline_bytes"]
    dry = (lean["dry_run_total_bytes"] + lean["rss_after_imports_bytes"]) / lean["peak_rss_bytes"]
    out["dry_run_over_peak"] = dry
    out["dry_run_within_15_percent"] = abs(dry - 1) <= 0.15
    plain = out["plain"]
    if "peak_rss_bytes" in plain:
        out["saving_bytes"] = plain["peak_rss_bytes"] - lean["peak_rss_bytes"]
    out["batch"] = f"{s.lean_batch} x {s.lean_length}"
    return out


def _memory_child_run(ws: Any, bench: Any, variant: str) -> dict[str, Any]:
    payload = json.dumps(asdict(ws.settings))
    target = ws.root / f"lean-memory-{variant}.json"
    cmd = [sys.executable, str(common.RUN_PY), "--lean-memory-child", variant, "--settings", payload,
           "--json", str(target), "--workdir", str(ws.root / f"lean-memory-{variant}"),
           "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    return json.loads(target.read_text())


def memory_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def lean_memory_child(settings: Any, root: Path, variant: str, bench: Any) -> dict[str, Any]:
    """In a fresh process: build the step, compare the dry-run estimate with the memory available,
    run ``lean_steps`` steps (the first allocates AdamW's moments), report the peak RSS."""
    from objkit.train.plan import activation_elements, plan_with_memory  # noqa: F401 (import cost in the baseline)
    from objkit.train.trainer import Trainer  # noqa: F401

    s = settings
    ws = bench.Workspace(s, root)
    tokenizer = ws.tokenizer_for(s.memory_vocab)
    data = ws.corpus_data(s.lean_length)
    lean = variant == "lean"
    gc.collect()
    baseline = bench.rss_now()

    def edit(raw: dict) -> None:
        raw["model"].pop("init", None)
        raw["model"].update(preset=s.memory_preset, max_length=s.lean_length, tokenizer=str(tokenizer))
        if s.memory_layers:
            raw["model"]["num_layers"] = s.memory_layers
        raw["data"] = data
        raw["train"].update(batch_size=s.lean_batch, micro_batch_size=s.lean_batch, steps=1_000_000,
                            log_every=1_000_000, checkpoint_every=1_000_000, device="cpu",
                            activation_checkpointing=lean, lm_head_chunk_rows=s.chunk_rows if lean else 0)
        if s.memory_xlco_layer:
            raw["objectives"]["xlco"]["layer"] = s.memory_xlco_layer

    resolved = ws.recipe(s.memory_recipe, edit=edit)
    _, estimates = plan_with_memory(resolved, ws.registry, world_size=1)
    estimate = estimates["run"]
    available = memory_available()
    if estimate.total + baseline > 0.9 * available:
        return {"variant": variant, "skipped": f"estimated {(estimate.total + baseline) / GiB:.1f} GiB, more than 90% "
                f"of the {available / GiB:.1f} GiB available", "dry_run_total_bytes": estimate.total,
                "dry_run": estimate.as_dict()}
    trainer = ws.trainer(resolved)
    xl = bench.objective(trainer, "xlco")
    for store in xl.stores.values():
        store.enqueue(torch.randn(store.size, xl.dim))
        store.flush()
    built = bench.rss_now()
    started = time.perf_counter()
    for _ in range(s.lean_steps):
        stats = trainer.train_step()
    seconds = (time.perf_counter() - started) / s.lean_steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = trainer.encoder.mlm.config
    params = sum(p.numel() for p in trainer.params)
    key = xl.tracker.numel()
    queue = sum(int(st.nbytes()) for st in xl.stores.values())
    shape = {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "ffn": cfg.intermediate_size}
    length, batch, h, f = s.lean_length, s.lean_batch, cfg.hidden_size, cfg.intermediate_size
    one_block = 4 * (8 * length * batch * h + 2 * length * batch * f + length * length * batch)
    analytic = {
        "weights": 4 * params,
        "gradients": 4 * params,
        "adam_states": 8 * params,
        "key_encoder": 4 * key,
        "queue": queue,
        "one_block_activations": one_block,
    }
    total = sum(analytic.values())
    return {
        "variant": variant,
        "recipe": s.memory_recipe,
        "shape": shape,
        "vocab": cfg.vocab_size,
        "batch": f"{batch} x {length}",
        "activation_checkpointing": lean,
        "lm_head_chunk_rows": s.chunk_rows if lean else 0,
        "step_seconds": seconds,
        "losses": _losses(stats),
        "peak_rss_bytes": peak,
        "rss_after_imports_bytes": baseline,
        "rss_after_build_bytes": built,
        "analytic_bytes": analytic,
        "analytic_total_bytes": total,
        "analytic_plus_baseline_bytes": total + baseline,
        "peak_over_analytic_plus_baseline": peak / (total + baseline),
        "dry_run_total_bytes": estimate.total,
        "dry_run": estimate.as_dict(),
        "memory_available_bytes": available,
    }


def main_child(args: Any, bench: Any) -> int:
    """``run.py --lean-memory-child VARIANT --settings JSON --json OUT --workdir DIR``."""
    result = lean_memory_child(bench.Settings(**json.loads(args.settings)), args.workdir, args.lean_memory_child, bench)
    args.json.write_text(json.dumps(result, indent=1))
    return 0


def describe(key: str, d: dict[str, Any]) -> str:
    """The details column of the README table for this module's rows."""
    t = d.get("times", {})

    def ms(times: dict[str, Any], name: str) -> str:
        v = times[name]["median_s"]
        return f"{v * 1000:.0f} ms" if v < 10 else f"{v:.1f} s"

    if key == "checkpointing_step_ratio":
        m = d["model"]
        return (f"{ms(t, 'checkpointed')} vs {ms(t, 'plain')} per step; MLM, {m['layers']} layers, hidden "
                f"{m['hidden']}, vocab {m['vocab']:,}, B×L {d['batch'].replace(' x ', '×')}, {d['device']}")
    if key == "chunked_head_time_ratio":
        mem = d["head_memory_bytes"]
        return (f"{ms(t, 'chunked')} vs {ms(t, 'whole')} per step; head memory {mem['chunked'] / 2**20:,.0f} vs "
                f"{mem['whole'] / 2**20:,.0f} MiB ({d['masked_rows_per_micro_batch']:,} rows, chunks of "
                f"{d['chunk_rows']})")
    if key == "compile_speedup":
        return (f"base shape {d['base_shape']['speedup']:.2f}× ({d['model']['layers']} layers), quickstart "
                f"{d['quickstart']['speedup']:.2f}×; compile warm-up {d['base_shape']['warmup_seconds']:.0f} s, "
                f"{d['device']}")
    if key == "large_peak_vs_analytic":
        lean = d["lean"]
        plain = d["plain"]
        without = (f"{plain['peak_rss_bytes'] / GiB:.1f} GiB" if "peak_rss_bytes" in plain
                   else f"not run ({plain.get('skipped') or plain.get('error')})")
        return (f"B×L {d['batch'].replace(' x ', '×')}: peak {lean['peak_rss_bytes'] / GiB:.1f} GiB vs analytic "
                f"{lean['analytic_plus_baseline_bytes'] / GiB:.1f} GiB; dry run {d['dry_run_over_peak']:.2f}× the "
                f"peak; without the options {without}")
    if key == "gpu_mfu":
        return (f"{d['achieved_tflops']:.0f} TFLOP/s of {d['peak_bf16_tflops'] or '?'} on {d['device_name']}; "
                f"{d['step_s'] * 1000:.0f} ms per step, B×L {d['model']['batch'].replace(' x ', '×')}, "
                f"{d.get('param_dtype', 'fp32')} weights")
    if key == "bf16_weights_step_speedup":
        return (f"{ms(t, 'bf16_weights')} vs {ms(t, 'fp32_weights')} per step (param_dtype bf16 vs fp32 under "
                f"autocast); MLM, {d['model']['layers']} layers, B×L {d['batch'].replace(' x ', '×')}")
    return ""


def _row(key: str, direction: str, goal: float, what: str, devices: tuple[str, ...] = ("cpu",)) -> Row:
    """The row ``key``: this module's function of that name, given the suite's helpers."""
    function = globals()[key]
    return Row(key, lambda ws: function(ws, common), direction, goal, what, lambda d: describe(key, d), devices)


ROWS = [
    _row("large_peak_vs_analytic", "<=", 1.15,
         "peak RSS of an infoxlm_large step (checkpointing + chunked head) / analytic sum"),
    _row("checkpointing_step_ratio", "<=", 1.4, "MLM step with activation checkpointing / without (base shape)",
         ("cpu", "cuda")),
    _row("chunked_head_time_ratio", "<=", 1.1, "MLM step with the chunked LM head / head in one piece (base shape)",
         ("cpu", "cuda")),
    _row("compile_speedup", ">=", 1.0, "eager MLM step / train.compile step (base shape)", ("cpu", "cuda")),
    _row("bf16_weights_step_speedup", ">=", 1.05,
         "MLM step with fp32 weights under bf16 autocast / with train.param_dtype = bf16 (base shape)", ("cuda",)),
    _row("gpu_mfu", ">=", 0.40, "model FLOP/s of an XLM-R-base MLM step (L=512, bf16) / the card's peak bf16",
         ("cuda",)),
]
