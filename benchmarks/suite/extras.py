"""What the suite reports beside its rows, under ``details`` and not gated: ``memory`` (peak
RSS of one ``infoxlm_large`` step in a child process against an analytic estimate) and ``mfu``
(model FLOP utilisation of the rows' steps against the machine's measured matmul peak)."""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from suite.common import RUN_PY, Settings, Workspace, matmul_peak, objective, rss_now, train_flops

__all__ = ["bench_memory", "matmul_peak", "memory_child", "mfu"]


# ---------------------------------------------------------------------------- memory (child)
def memory_child(settings: Settings, root: Path) -> dict[str, Any]:
    """One ``infoxlm_large`` step at batch 1 (random weights, the queue pre-filled so XLCO runs):
    peak RSS and its analytic estimate. Runs in a fresh process (``--memory-child``)."""
    from objkit.blocks.masking import IGNORE_INDEX  # noqa: F401  (import cost counted in the baseline)
    from objkit.train.trainer import Trainer  # noqa: F401

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


def bench_memory(ws: Workspace) -> dict[str, Any]:
    payload = json.dumps(asdict(ws.settings))
    out = ws.root / "memory.json"
    cmd = [sys.executable, str(RUN_PY), "--memory-child", payload, "--json", str(out),
           "--workdir", str(ws.root / "memory"), "--threads", str(torch.get_num_threads())]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-5:]}
    return json.loads(out.read_text())

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
        from objkit.blocks.encoder import PRESETS

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
