"""Rows on InfoXLM's cross-lingual contrast (XLCO): the cost of a whole InfoXLM step over MLM + TLM
(``xlco_step_ratio``), the momentum encoder's EMA update (``ema_foreach_speedup``) and the
momentum queue's enqueue at a large queue (``enqueue_ratio``)."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

import torch

from suite.common import Workspace, alternate, median_ratio, model_dims, ms, objective, summary
from suite.registry import Row


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
    from objkit.blocks.encoder import PresetEncoderConfig, XLMREncoder, architecture
    from objkit.blocks.momentum import MomentumTracker, make_momentum_copy

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
    from objkit.contract.interfaces import WorldInfo
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


def describe_xlco_step(d: dict[str, Any]) -> str:
    m = d["model"]
    return (f"{ms(d, 'infoxlm')} vs {ms(d, 'mlm_tlm')} per step; {m['layers']} layers, hidden {m['hidden']}, "
            f"{d['sequences_per_objective']}×{d['sequence_length']} per objective, queue {d['queue']:,}")


def describe_ema(d: dict[str, Any]) -> str:
    return f"{ms(d, 'reference_loop')} vs {ms(d, 'objkit_foreach')}; {d['parameters'] / 1e6:.0f}M parameters"


def describe_enqueue(d: dict[str, Any]) -> str:
    us = d["median_us_per_enqueue"]
    return f"{' vs '.join(f'{v:.0f} µs' for v in us.values())} per enqueue of {d['keys_per_enqueue']} keys"


ROWS = [
    Row("xlco_step_ratio", bench_xlco_step, "<=", 1.5, "InfoXLM step / MLM+TLM step (XLCO at layer 8 of 12)",
        describe_xlco_step),
    Row("ema_foreach_speedup", bench_ema, ">=", 2.5, "reference EMA loop / objkit fused EMA (base body)", describe_ema),
    Row("enqueue_ratio", bench_enqueue, "<=", 1.2, "enqueue at queue 131,072 / at 1,024 (d=768)", describe_enqueue),
]
