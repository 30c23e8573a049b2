"""Checkpoints: safetensors for weights and plugin tensors, JSON for the rest, written atomically.

Layout of ``RUN/checkpoints/step_000100/``:

* ``model.safetensors`` -- the encoder (tied weights handled by ``safetensors.torch.save_model``)
* ``objectives.safetensors`` + ``objectives.json`` -- every objective's ``state_dict()``,
  tensors and JSON leaves split, keys joined with ``/``
* ``optimizer.pt`` -- optimizer, LR scheduler and grad-scaler state (``torch.save``, loaded
  with ``weights_only=True``)
* ``trainer.json`` -- step, data-stream positions, RNG state

A checkpoint is written into ``step_N.tmp`` and renamed into place, so a crash never
leaves a half-written ``step_N``; older ones beyond ``keep`` are removed afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

STEP_DIR = re.compile(r"^step_(\d+)$")


def flatten_state(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested state dict into ``{"a/b": tensor}`` and ``{"a/c": json_value}``."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        if "/" in str(key):
            raise ValueError(f"state key {key!r} must not contain '/'")
        path = f"{prefix}{key}"
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
        elif isinstance(value, dict):
            sub_tensors, sub_values = flatten_state(value, prefix=f"{path}/")
            tensors.update(sub_tensors)
            values.update(sub_values)
            if not value:
                values[path] = {}
        else:
            values[path] = value
    return tensors, values


def unflatten_state(tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path, value in [*tensors.items(), *values.items()]:
        node = state
        *parents, leaf = path.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return state


def _clone_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors sharing storage; clone the repeats."""
    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    objectives: dict[str, dict[str, Any]],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
) -> Path:
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    tensors, values = flatten_state(objectives)
    save_file(_clone_shared(tensors), str(tmp / "objectives.safetensors"))
    (tmp / "objectives.json").write_text(json.dumps(values, indent=1))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def load_checkpoint(path: Path, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load weights into ``model``; return (objective states, optimizer state, trainer state)."""
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    if unexpected:
        raise RuntimeError(f"{path}/model.safetensors: unexpected keys {sorted(unexpected)[:5]}")
    objectives = unflatten_state(
        load_file(str(path / "objectives.safetensors")),
        json.loads((path / "objectives.json").read_text()),
    )
    optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
    trainer_state = json.loads((path / "trainer.json").read_text())
    return objectives, optimizer_state, trainer_state


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
