"""Train a recipe with the Trainer (under torchrun, or as one process) and dump what each rank holds.

Used by ``tests/test_distributed.py``:
``python tests/distributed_worker.py RECIPE RUN_DIR DUMP_DIR [KEY=VALUE ...]``, optionally under
``torchrun --standalone --nproc_per_node N``. Writes ``DUMP_DIR/rank{R}.safetensors`` (every
objective's state: momentum encoder, queue) and ``DUMP_DIR/rank{R}.json`` (checkpoint writes,
backward passes per step, DDP gradient-synchronisation calls per step, ...).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from objkit.train import checkpoint as ckpt
from objkit import distributed
from objkit.train import sharded_checkpoint as sharded
from objkit.train.checkpoint import flatten_state
from objkit.distributed.device import training_device
from objkit.recipe.loader import load_recipe
from objkit.contract.registry import default_registry
from objkit.train.trainer import Trainer


def fp32_master_weights() -> None:
    """``OBJKIT_TEST_FP32_MASTERS=1``: the trainer's master-weights path (``train.param_dtype``)
    with fp32 "low-precision" weights, which CPU ranks can run (objkit refuses bf16 on a CPU)."""
    import torch

    from objkit.blocks.master_weights import MasterWeights
    from objkit.train import trainer

    def masters(train, precision, encoder, world):  # noqa: ANN001, ANN202
        return MasterWeights([p for p in encoder.parameters() if p.requires_grad], torch.float32)

    trainer.master_weights_for = masters


def cpu_bf16() -> None:
    """``OBJKIT_TEST_CPU_BF16=1``: bf16 compute (CPU autocast) on these CPU ranks, which objkit
    refuses outside tests (slow), to run ``train.param_dtype = "bf16"``."""
    from objkit.train import trainer

    trainer.resolve_precision = lambda precision, device: "bf16"


def main() -> None:
    recipe, run_dir, dump_dir, *overrides = sys.argv[1:]
    if os.environ.get("OBJKIT_TEST_FP32_MASTERS") == "1":
        fp32_master_weights()
    if os.environ.get("OBJKIT_TEST_CPU_BF16") == "1":
        cpu_bf16()
    dump = Path(dump_dir)
    dump.mkdir(parents=True, exist_ok=True)
    saves: list[int] = []
    write = ckpt.save_checkpoint

    def counting_save(run: Path, step: int, **kwargs):  # noqa: ANN003, ANN202
        saves.append(step)
        return write(run, step, **kwargs)

    ckpt.save_checkpoint = counting_save  # the trainer calls it through the module
    finish_sharded = sharded._finish  # completes every sharded save, synchronous or in the background

    def counting_sharded(run: Path, step: int, **kwargs):  # noqa: ANN003, ANN202
        path = finish_sharded(run, step, **kwargs)
        if path is not None:  # rank 0 returns the checkpoint it renamed into place
            saves.append(step)
        return path

    sharded._finish = counting_sharded
    verified: list[str] = []
    verify = ckpt.verify_checkpoint

    def counting_verify(path: Path) -> None:
        verified.append(Path(path).name)
        verify(path)

    ckpt.verify_checkpoint = counting_verify
    resolved = load_recipe(Path(recipe), overrides)
    train = resolved.recipe.train
    # joins and leaves the group as objkit run does (on a normal exit: a barrier, then a drain)
    with distributed.process_group(training_device(train.device, distributed.env_world().rank),
                                   train.collective_timeout) as world:
        trainer = Trainer(resolved, Path(run_dir), default_registry(), progress=False, world=world)
        resumed_from: list[str] = []
        resume = trainer.resume

        def recording_resume(source):  # noqa: ANN001, ANN202
            resumed_from.append(Path(getattr(source, "path", source)).name)
            return resume(source)

        trainer.resume = recording_resume
        info: dict = {"rank": trainer.world.rank, "world_size": trainer.world.world_size,
                      "mode": trainer.strategy.mode, "master_weights": trainer.master_weights is not None,
                      "encoder_dtypes": sorted({str(p.dtype) for p in trainer.encoder.parameters()}), "steps": {}, "sync_calls": {}}
        ddp = getattr(trainer.strategy, "ddp", None)
        if ddp is not None:  # count gradient all-reduce calls (one per bucket) per step
            from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

            def counting_hook(state, bucket):  # noqa: ANN001, ANN202
                info["sync_calls"][trainer.step] = info["sync_calls"].get(trainer.step, 0) + 1
                return allreduce_hook(state, bucket)

            ddp.register_comm_hook(None, counting_hook)
            info["find_unused_parameters"] = trainer.strategy.find_unused_parameters
        first_block = next(iter(trainer.encoder.shard_units()))

        def weights_in_forward(module, args):  # noqa: ANN001, ANN202  (FSDP: the gathered weights)
            info["block_dtype_in_forward"] = str(next(module.parameters()).dtype)

        first_block.register_forward_pre_hook(weights_in_forward)
        step = trainer.train_step

        def recording_step(*args, **kwargs):  # noqa: ANN202
            stats = step(*args, **kwargs)
            info["steps"][trainer.step - 1] = {"backwards": stats.backwards, "synced": stats.synced_backwards}
            return stats

        trainer.train_step = recording_step
        trainer.fit()
        trainer.export()
        if ddp is not None:
            info["buckets"] = len(str(ddp._get_ddp_logging_data()["bucket_sizes"]).split(","))
        states = {b.name: trainer.strategy.full_state(b.objective.state_dict()) for b in trainer.objectives}
        tensors, _ = flatten_state(states)
        save_file({k: v.clone() for k, v in tensors.items()}, str(dump / f"rank{trainer.world.rank}.safetensors"))
        info["saves"] = saves
        info["verified"] = verified  # checkpoints this rank hashed on resume
        info["resumed_from"] = resumed_from
        info["step"] = trainer.step
        (dump / f"rank{trainer.world.rank}.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
