"""Sharded checkpoints (``train.checkpoint_format = "sharded"``): every rank writes its own
shard through ``torch.distributed.checkpoint`` (DCP), in parallel, instead of gathering the
full model and optimizer state to rank 0.

Layout of ``RUN/checkpoints/step_0000100/`` (the single-file layout of :mod:`objkit.train.checkpoint`
with the three safetensors files replaced by one DCP directory):

* ``shards/`` -- DCP's ``.metadata`` and one ``__RANK_0.distcp`` file per rank holding the
  encoder and trainable heads (``get_state_dict`` of the trained module: FQNs, FSDP shards
  as DTensors), the optimizer state keyed by parameter name, and the tensors of every
  objective's state (key encoder, queue) under ``objectives``. Replicated tensors (DDP, one
  process) are written once, by one rank.
* ``objectives.json`` (JSON leaves of the objectives' states), ``optimizer.json`` (LR
  schedule, grad scaler), ``trainer.json`` (``"checkpoint_format": "sharded"``, step, streams,
  world size), ``rng.json``, ``recipe.toml``, ``versions.json``: as in the single-file layout.
* ``manifest.json``: size and SHA-256 of every file, shards included: each rank hashes the
  shard it wrote (in parallel), rank 0 the rest; written last.

Atomicity is the single-file layout's: everything goes into ``step_N.tmp`` (DCP fsyncs each
shard), rank 0 writes the manifest, fsyncs the tree and renames it into place only after every
rank finished, so a kill -9 at any instant leaves the previous checkpoint as the newest
complete one. ``-o`` must be on a filesystem every rank shares (as for resuming).

Asynchronous saves (``train.checkpoint_async``, :func:`start_async_save`): each rank's tensors
are copied to host memory (``dcp.async_save``'s staging) and the step loop goes on; a thread
writes the shards, then hashes them and completes the checkpoint exactly as above (its
collectives -- DCP's planning, the digests, the barriers -- on a gloo group of its own, so
they never interleave with the training thread's). The previous checkpoint stays the newest
complete one until the rename; the trainer waits for the write in flight before the next
save, at the end of training and on a fault (:class:`PendingSave`).

Resuming loads each rank's part in place (``dcp.load`` into the live module and optimizer,
then ``set_state_dict``); DCP reshards on load, so the tensors would also load on another
number of ranks, but objkit checks the same world size and parallelism, as it does for every
checkpoint (see :func:`objkit.distributed.check_resumable`). Unlike the single-file layout,
DCP's ``.metadata`` is a pickle: load sharded checkpoints only from run directories you trust.
The export (``save_pretrained``) is unchanged and the single-file layout stays the default.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from objkit.train.checkpoint import (
    _claim_checkpoints,
    FORMAT,
    MANIFEST,
    _sha256,
    _write_json,
    flatten_state,
    fsync_path,
    fsync_tree,
    list_checkpoints,
    unflatten_state,
)
from objkit.distributed import all_gather_objects, barrier
from objkit.distributed.faults import pause_for_test
from objkit.data.ownership import follow_umask
from objkit.contract.interfaces import WorldInfo

SHARDS = "shards"


def _dcp(call: str, state: dict[str, Any], path: Path) -> None:
    """``dcp.save`` / ``dcp.load`` of ``state`` at ``path`` (one process: no process group)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process"
        warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
        getattr(dcp, call)(state, checkpoint_id=str(path))


def live_state(module: nn.Module, optimizer: torch.optim.Optimizer, objectives: dict[str, dict[str, Any]]
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what DCP saves / loads into, the objectives' JSON leaves): the trained module's and the
    optimizer's state by parameter name, and the objectives' tensors, all as this rank holds them."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(module, [optimizer])
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    for name, tensor in list(model_state.items()):  # tied weights (embeddings = LM decoder): saved once
        local = getattr(tensor, "_local_tensor", tensor)
        if not isinstance(local, torch.Tensor) or local.numel() == 0:
            continue
        key = (local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape))
        if key in seen:
            del model_state[name]
        seen.add(key)
    tensors, values = flatten_state(objectives)
    return {"model": model_state, "optimizer": optimizer_state, "objectives": tensors}, values


def save_sharded(run_dir: Path, step: int, *, world: WorldInfo, state: dict[str, Any], objective_values: dict[str, Any],
                 extra: dict[str, Any], trainer_state: dict[str, Any], keep: int, rng_states: list[dict[str, Any]],
                 recipe_toml: str | None, versions: dict[str, Any] | None) -> Path | None:
    """Every rank calls this with its own ``state``; returns the checkpoint on rank 0 (None
    elsewhere). ``extra``: JSON state written by rank 0 (LR schedule, grad scaler)."""
    tmp = _begin(run_dir, step, world)
    try:
        _dcp("save", state, tmp / SHARDS)
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish(run_dir, step, world=world, objective_values=objective_values, extra=extra,
                   trainer_state=trainer_state, keep=keep, rng_states=rng_states, recipe_toml=recipe_toml,
                   versions=versions)


class PendingSave:
    """A sharded checkpoint being written in the background (``train.checkpoint_async``):
    :func:`start_async_save` copied this rank's tensors to host memory and returned; a
    thread writes the shards (``dcp.async_save``), then hashes them and completes the
    checkpoint as :func:`save_sharded` does (manifest, rename, pruning), its collectives on a
    process group of its own. :meth:`wait` joins it: the checkpoint (rank 0; None elsewhere),
    or the error of the write."""

    def __init__(self, step: int, work: Callable[[], Path | None]) -> None:
        self.step = step
        self._result: Path | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # re-raised by wait(), on the training thread
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"objkit-save-{step}", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> Path | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


_ASYNC_GROUP: Any = None


def _async_group(world: WorldInfo) -> Any:
    """A gloo process group for the background saves' collectives (DCP's planning, the digests),
    so that they never interleave with the training thread's on the default group. Created once,
    by every rank (the first asynchronous save)."""
    global _ASYNC_GROUP
    if world.world_size <= 1:
        return None
    if _ASYNC_GROUP is None:
        import torch.distributed as dist

        _ASYNC_GROUP = dist.new_group(backend="gloo")
    return _ASYNC_GROUP


def start_async_save(run_dir: Path, step: int, *, world: WorldInfo, state: dict[str, Any],
                     objective_values: dict[str, Any], extra: dict[str, Any], trainer_state: dict[str, Any],
                     keep: int, rng_states: list[dict[str, Any]], recipe_toml: str | None,
                     versions: dict[str, Any] | None) -> PendingSave:
    """:func:`save_sharded` in the background: returns once ``state``'s tensors are copied to
    host memory (``dcp.async_save``'s staging), so training may change them. Every rank calls it,
    after the previous :class:`PendingSave` was waited for. Until the write finishes the previous
    checkpoint stays the newest complete one."""
    import torch.distributed.checkpoint as dcp

    group = _async_group(world)
    if world.world_size <= 1:  # said by DCP's writer thread, outside any catch_warnings of ours
        warnings.filterwarnings("ignore", message=".*assuming the intent is to save in a single process",
                                category=UserWarning)
    tmp = _begin(run_dir, step, world)
    try:
        with warnings.catch_warnings():  # one process: "assuming the intent is to save on a single process"
            warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*experimental", category=UserWarning)
            upload = dcp.async_save(state, checkpoint_id=str(tmp / SHARDS), process_group=group,
                                    no_dist=world.world_size <= 1)
        upload = getattr(upload, "upload_completion", upload)  # AsyncSaveResponse (staging in the background)
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise

    def work() -> Path | None:
        try:
            upload.result()
        except BaseException:
            if world.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _finish(run_dir, step, world=world, objective_values=objective_values, extra=extra,
                       trainer_state=trainer_state, keep=keep, rng_states=rng_states, recipe_toml=recipe_toml,
                       versions=versions, group=group)

    return PendingSave(step, work)


def _begin(run_dir: Path, step: int, world: WorldInfo) -> Path:
    """Rank 0 removes leftovers of killed writes and makes ``step_N.tmp/shards``; every rank waits."""
    root = run_dir / "checkpoints"
    tmp = root / f"step_{step:07d}.tmp"
    failed = None
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        _claim_checkpoints(run_dir)
        for stale in root.iterdir():  # leftovers of writes that were killed
            if stale.is_dir() and stale.name.startswith("step_") and stale.suffix in (".tmp", ".old"):
                shutil.rmtree(stale, ignore_errors=True)
        try:
            (tmp / SHARDS).mkdir(parents=True)
        except OSError as exc:
            failed = exc
    barrier(world)
    if failed is not None:
        raise failed
    return tmp


def _finish(run_dir: Path, step: int, *, world: WorldInfo, objective_values: dict[str, Any], extra: dict[str, Any],
            trainer_state: dict[str, Any], keep: int, rng_states: list[dict[str, Any]], recipe_toml: str | None,
            versions: dict[str, Any] | None, group: Any = None) -> Path | None:
    """After every rank wrote its shard: each hashes its own, rank 0 writes the JSON files and
    the manifest, fsyncs and renames ``step_N.tmp`` into place, then prunes old checkpoints."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step_{step:07d}", root / f"step_{step:07d}.tmp"
    try:
        mine = {f"{SHARDS}/{p.name}": {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted((tmp / SHARDS).glob(f"__{world.rank}_*"))}
        digests = all_gather_objects(mine, world, group)
        if not world.is_main:
            barrier(world, group)
            return None
        pause_for_test("save-mid", step)
        _write_json(tmp / "objectives.json", objective_values)
        _write_json(tmp / "optimizer.json", extra)
        _write_json(tmp / "trainer.json", {"format": FORMAT, "checkpoint_format": "sharded", **trainer_state})
        _write_json(tmp / "rng.json", {"ranks": rng_states})
        if recipe_toml is not None:
            (tmp / "recipe.toml").write_text(recipe_toml, encoding="utf-8")
        if versions is not None:
            _write_json(tmp / "versions.json", versions)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in sorted(os.listdir(tmp / SHARDS)):  # DCP's metadata, and shards no rank reported
            key = f"{SHARDS}/{name}"
            if not any(key in d for d in digests):
                files[key] = {"bytes": (tmp / key).stat().st_size, "sha256": _sha256(tmp / key)}
        for rank_files in digests:
            files.update(rank_files)
        follow_umask(tmp)  # safetensors writes 0600 whatever the umask
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": dict(sorted(files.items()))})
        fsync_tree(tmp)
        old = root / f"step_{step:07d}.old"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    pause_for_test("save-done", step)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    barrier(world, group)
    return final


def is_sharded(path: Path) -> bool:
    try:
        return json.loads((path / "trainer.json").read_text(encoding="utf-8")).get("checkpoint_format") == "sharded"
    except (OSError, ValueError, AttributeError):
        return False


def load_sharded(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                 objectives: dict[str, dict[str, Any]], objective_values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Load this rank's part of checkpoint ``path`` into ``module`` and ``optimizer`` (in
    place); returns every objective's state to pass to its ``load_state_dict``. Every rank
    calls it. ``objectives``: the objectives' current states (the templates DCP fills)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state, _ = live_state(module, optimizer, objectives)
    _dcp("load", state, path / SHARDS)
    # strict=False: a tied weight is loaded through the one name it was saved under
    set_state_dict(module, [optimizer], model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))
    return unflatten_state(state["objectives"], objective_values)
