"""Checkpoint save and load time: the single-file layout (rank 0 writes safetensors and hashes
them) against ``checkpoint_format = "sharded"`` (torch.distributed.checkpoint), synchronous and
with ``train.checkpoint_async``, on one process, for an XLM-R-base-shaped model (random weights,
vocabulary 250,002) with its AdamW state.

    python benchmarks/checkpoint_io.py [--layers 12] [--hidden 768] [--reps 3] [--dir DIR] [--json OUT] [--toy]

The asynchronous save (``objkit.train.sharded_checkpoint.start_async_save``) reports two times: what
the step loop waits for (``async_save``: the copy of the tensors to host memory and the start
of the writer thread) and the time until the checkpoint is complete (``async_complete``:
written, hashed, renamed; here with nothing training meanwhile). ``--toy``: a one-layer model,
one repetition (the smoke test; numbers mean nothing).

Both go through objkit's own writers and readers (``objkit.train.checkpoint.save_checkpoint`` /
``read_checkpoint`` + ``load_state_dict``; ``objkit.train.sharded_checkpoint.save_sharded`` /
``load_sharded``), alternating, and report medians. One process measures the format's own cost
(serialisation, hashing, fsync); the sharded layout's point -- N ranks writing N shards in
parallel instead of rank 0 gathering and writing everything -- needs several ranks and is not
measured here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

from objkit.train import checkpoint as ckpt
from objkit.train import sharded_checkpoint as sharded
from objkit.contract.interfaces import WorldInfo


def build(layers: int, hidden: int, vocab: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    config = XLMRobertaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden)
    model = XLMRobertaForMaskedLM(config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # Adam state exists, as in a checkpoint taken during training
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--vocab", type=int, default=250_002)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--toy", action="store_true", help="a one-layer, hidden-32 model with a 1,000-token vocabulary, one rep")
    args = p.parse_args(argv)
    if args.toy:
        args.layers, args.hidden, args.vocab, args.reps = 1, 32, 1000, 1
    model, optimizer = build(args.layers, args.hidden, args.vocab)
    numel = sum(t.numel() for t in model.parameters())
    root = Path(tempfile.mkdtemp(prefix="objkit-ckpt-io-", dir=args.dir))
    world = WorldInfo()
    times: dict[str, list[float]] = {"single_save": [], "single_load": [], "sharded_save": [], "sharded_load": [],
                                     "async_save": [], "async_complete": []}
    formats = ("single", "sharded", "async")
    sizes: dict[str, int] = {}
    try:
        for rep in range(args.reps):
            for fmt in formats if rep % 2 == 0 else formats[::-1]:
                run = root / f"{fmt}{rep}"
                t0 = time.perf_counter()
                if fmt == "single":
                    path = ckpt.save_checkpoint(run, 1, model=model, objectives={},
                                                optimizer_state={"optimizer": optimizer.state_dict()},
                                                trainer_state={"step": 1}, keep=1)
                elif fmt == "sharded":
                    state, values = sharded.live_state(model, optimizer, {})
                    path = sharded.save_sharded(run, 1, world=world, state=state, objective_values=values, extra={},
                                                trainer_state={"step": 1}, keep=1, rng_states=[], recipe_toml=None,
                                                versions=None)
                else:  # the step loop waits for start_async_save only
                    state, values = sharded.live_state(model, optimizer, {})
                    pending = sharded.start_async_save(run, 1, world=world, state=state, objective_values=values,
                                                       extra={}, trainer_state={"step": 1}, keep=1, rng_states=[],
                                                       recipe_toml=None, versions=None)
                    times["async_save"].append(time.perf_counter() - t0)
                    path = pending.wait()
                    times["async_complete"].append(time.perf_counter() - t0)
                    assert path is not None and (path / ckpt.MANIFEST).is_file()
                    sizes[fmt] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                    shutil.rmtree(run)
                    print(f"rep {rep} async: the loop waits {times['async_save'][-1]:.2f} s, complete after "
                          f"{times['async_complete'][-1]:.1f} s", file=sys.stderr, flush=True)
                    continue
                times[f"{fmt}_save"].append(time.perf_counter() - t0)
                assert path is not None
                sizes[fmt] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                t0 = time.perf_counter()
                if fmt == "single":
                    data = ckpt.read_checkpoint(path)
                    ckpt.apply_model_state(model, data.model, path)
                    optimizer.load_state_dict(data.optimizer["optimizer"])
                else:
                    data = ckpt.read_checkpoint(path)
                    sharded.load_sharded(path, model, optimizer, {}, data.objectives)
                times[f"{fmt}_load"].append(time.perf_counter() - t0)
                shutil.rmtree(run)
                print(f"rep {rep} {fmt}: save {times[f'{fmt}_save'][-1]:.1f} s, load {times[f'{fmt}_load'][-1]:.1f} s",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    doc = {
        "parameters": numel, "layers": args.layers, "hidden": args.hidden, "vocab": args.vocab, "reps": args.reps,
        "bytes": sizes, "median_s": medians,
        "save_ratio_sharded_over_single": medians["sharded_save"] / medians["single_save"],
        "load_ratio_sharded_over_single": medians["sharded_load"] / medians["single_load"],
        "loop_wait_ratio_async_over_sharded": medians["async_save"] / medians["sharded_save"],
        "loop_wait_ratio_async_over_single": medians["async_save"] / medians["single_save"],
    }
    print(json.dumps(doc, indent=1))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
