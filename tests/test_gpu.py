"""The CUDA path: bf16 autocast with fused AdamW and SDPA attention, activation checkpointing and the
chunked LM head, torch.compile, and an NCCL process group. Skipped without a CUDA device
(``benchmarks/gpu_check.sh`` runs them on a GPU machine: ``pytest -m gpu``)."""

from __future__ import annotations

import math

import pytest
import torch

from test_memory import RECIPE, _assert_same_run, _train, inductor_in_process  # noqa: F401 (the tiny MLM + TLM + XLCO recipe)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found by torch.cuda)"),
]


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "gpu.toml"
    path.write_text(RECIPE)
    return path


def test_bf16_step_on_cuda_with_fused_adamw_and_sdpa(recipe_path, tmp_path):
    losses, trainer = _train(recipe_path, tmp_path / "bf16", 3, "train.device=cuda", "train.precision=bf16")
    assert trainer.device.type == "cuda" and trainer.precision == "bf16"
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainer.params)  # fp32 master weights
    assert trainer.optimizer.defaults.get("fused") is True
    assert trainer.encoder.mlm.config._attn_implementation == "sdpa"
    assert {"mlm/loss", "tlm/loss", "xlco/loss"} <= set(losses[-1])
    assert all(math.isfinite(v) for step in losses for v in step.values())
    key = next(b.objective for b in trainer.objectives if b.name == "xlco").key_body
    assert all(p.dtype == torch.float32 for p in key.parameters())  # the momentum encoder stays fp32


def test_bf16_weights_on_cuda_track_the_fp32_weights_run(recipe_path, tmp_path):
    """``train.param_dtype = "bf16"`` on the card: bf16 encoder weights, fp32 masters with fused
    AdamW, the momentum encoder fp32; the losses follow those of fp32 weights under autocast."""
    sets = ("train.device=cuda", "train.precision=bf16", "model.dropout=0.0")
    autocast, _ = _train(recipe_path, tmp_path / "autocast", 3, *sets)
    losses, trainer = _train(recipe_path, tmp_path / "bf16w", 3, *sets, "train.param_dtype=bf16")
    assert trainer.master_weights is not None
    assert all(p.dtype == torch.bfloat16 for p in trainer.encoder.parameters() if p.requires_grad)
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in trainer.params)
    assert trainer.optimizer.defaults.get("fused") is True
    key = next(b.objective for b in trainer.objectives if b.name == "xlco").key_body
    assert all(p.dtype == torch.float32 for p in key.parameters())
    for a, b in zip(autocast, losses, strict=True):
        for name in a:
            assert abs(a[name] - b[name]) <= 0.05 * abs(a[name]) + 1e-3, (name, a[name], b[name])


def test_checkpointing_and_chunked_head_on_cuda_equal_without(recipe_path, tmp_path):
    sets = ("train.device=cuda", "train.precision=fp32")
    plain = _train(recipe_path, tmp_path / "plain", 3, *sets)
    lean = _train(recipe_path, tmp_path / "lean", 3, *sets, "train.activation_checkpointing=true",
                  "train.lm_head_chunk_rows=5")
    _assert_same_run(plain, lean, rel=1e-4)  # CUDA kernels may pick other reduction orders


def test_checkpointed_chunked_bf16_step_on_cuda_uses_less_memory(recipe_path, tmp_path):
    peaks = {}
    for name, extra in (("plain", ()), ("lean", ("train.activation_checkpointing=true", "train.lm_head_chunk_rows=2"))):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        _train(recipe_path, tmp_path / name, 2, "train.device=cuda", "train.precision=bf16",
               "train.batch_size=32", "train.micro_batch_size=32", *extra)
        peaks[name] = torch.cuda.max_memory_allocated()
    assert peaks["lean"] < peaks["plain"], peaks


def test_compile_on_cuda_trains_like_eager(recipe_path, tmp_path, inductor_in_process):
    sets = ("train.device=cuda", "train.precision=fp32", "model.dropout=0.0", "train.batch_size=4",
            "train.micro_batch_size=4")
    eager = _train(recipe_path, tmp_path / "eager", 2, *sets)
    compiled = _train(recipe_path, tmp_path / "compiled", 2, *sets, "train.compile=true")
    _assert_same_run(eager, compiled, rel=1e-3)  # TF32 / inductor kernels round differently


def test_one_process_nccl_group_gathers_rows():
    import torch.distributed as dist

    from objkit.distributed import dist_all_gather, gather_rows

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    dist.init_process_group("nccl", rank=0, world_size=1, store=dist.HashStore(), device_id=torch.device("cuda", 0))
    try:
        rows = torch.arange(6.0, device="cuda").reshape(3, 2)
        total = rows.clone()
        dist.all_reduce(total)
        torch.testing.assert_close(total, rows)
        gathered, sizes = gather_rows(rows, dist_all_gather)
        assert sizes == [3]
        torch.testing.assert_close(gathered, rows)
    finally:
        dist.destroy_process_group()
