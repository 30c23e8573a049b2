"""GPU sweep (stage 4 of gpu_check.sh; CUDA only): the model FLOP utilisation of an XLM-R-base-
shaped objkit ``Trainer.train_step`` (MLM, 12 layers, hidden 768, vocab 250,002, L = 512, bf16
autocast, fused AdamW, SDPA) at micro-batches 32 and 64, eager, with ``train.compile`` and with
``train.activation_checkpointing``, and with ``train.param_dtype = "bf16"`` (bf16 weights, fp32
masters); ``torch.profiler`` tables of three eager steps with fp32 and with bf16 weights
(``profile.txt``, ``profile_bf16w.txt``: CUDA time per operator, the top kernels' shares in the
JSON); and an InfoXLM-base step (MLM + TLM + XLCO, queue full) against the
same recipe without XLCO at 32 x 512. Writes ``$OUT/gpu_sweep.json``.

    OUT=/tmp/gs python3 benchmarks/gpu_sweep.py

MFU = train_flops(...) (benchmarks/run.py: encoder matmuls and attention, the masked-only head,
x3 for the backward) / step time / the card's peak dense bf16 (989 TFLOP/s: H100 SXM, H200)."""
import json, os, sys, time, traceback
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench

OUT = os.environ.get("OUT", "/tmp")
if not torch.cuda.is_available():
    sys.exit("gpu_sweep.py: needs a CUDA device")
res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
PEAK = 989e12  # dense bf16, H100 SXM / H200
res["peak_tflops_bf16"] = PEAK / 1e12
ws = bench.Workspace(bench.Settings.full())

def save():
    with open(os.path.join(OUT, "gpu_sweep.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print(json.dumps(res, indent=1), flush=True)

def build(batch, length, sets):
    r = bench.xlmr_mlm_recipe(ws, layers=12, hidden=768, heads=12, ffn=3072, vocab=250002, batch=batch, length=length)
    if sets:
        raw = r.to_dict()
        for k, v in sets.items():
            sec, key = k.split(".", 1)
            raw[sec][key] = v
        from objkit.recipe.loader import validate_recipe
        r = validate_recipe(raw, ws.registry, source="mfu")
    return ws.trainer(r)

def timed(trainer, warm=4, reps=12):
    for _ in range(warm):
        trainer.train_step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        trainer.train_step()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps

def profiled(trainer, name):
    """A torch.profiler table of three steps (``profile_NAME.txt``; ``profile.txt`` for eager) and,
    in the JSON, the ten kernels with the most GPU time and their share of it."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            trainer.train_step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30)
    open(os.path.join(OUT, "profile.txt" if name == "eager" else f"profile_{name}.txt"), "w").write(table)
    ev = prof.key_averages()
    cuda = sum(e.self_device_time_total for e in ev)
    top = sorted(ev, key=lambda e: e.self_device_time_total, reverse=True)[:10]
    res["profile_3_steps" if name == "eager" else f"profile_3_steps_{name}"] = {
        "cuda_s": cuda / 1e6, "cpu_s": sum(e.self_cpu_time_total for e in ev) / 1e6,
        "item_calls": sum(e.count for e in ev if e.key in ("aten::item", "aten::_local_scalar_dense")),
        "top_kernels": [{"name": e.key[:80], "share": e.self_device_time_total / cuda if cuda else 0.0,
                         "calls": e.count} for e in top]}

BF16W = {"train.param_dtype": "bf16"}  # bf16 weights, fp32 masters in the optimizer: no autocast weight casts
variants = [("eager", 32, {}), ("bf16w", 32, BF16W), ("eager_B64", 64, {}), ("bf16w_B64", 64, BF16W),
            ("compile", 32, {"train.compile": True}),
            ("checkpointing", 32, {"train.activation_checkpointing": True}),
            ("compile_B64", 64, {"train.compile": True}),
            ("bf16w_compile_B64", 64, {**BF16W, "train.compile": True})]
for name, batch, sets in variants:
    length = 512
    try:
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        tr = build(batch, length, sets)
        sec = timed(tr)
        tokens = batch * length
        fl = bench.train_flops(layers=12, hidden=768, ffn=3072, tokens=tokens, seq_len=length,
                               head_rows=0.15 * tokens, vocab=250002)
        res[f"mlm_{name}"] = {"batch": f"{batch}x{length}", "sets": sets, "precision": tr.precision,
                              "step_s": sec, "tflops": fl / sec / 1e12, "mfu": fl / sec / PEAK,
                              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                              "build_and_time_s": time.perf_counter() - started}
        if name in ("eager", "bf16w"):  # the profile before and after bf16 weights
            profiled(tr, name)
        del tr
    except Exception:
        res[f"mlm_{name}_error"] = traceback.format_exc()[-1500:]
    torch.cuda.empty_cache()
    save()

try:
    s = ws.settings
    s.xlco_length, s.xlco_batch, s.xlco_reps = 512, 32, 5
    out = bench.bench_xlco_step(ws)
    res["xlco_step_ratio_B32_L512"] = {k: out[k] for k in ("value", "times") if k in out}
except Exception:
    res["xlco_error"] = traceback.format_exc()[-1500:]
save()
ws.close()
