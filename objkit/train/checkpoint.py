"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically and
verified on load.

Layout of ``RUN/checkpoints/step_0000100/``:

* ``model.safetensors`` -- the encoder (tied weights handled by ``safetensors.torch.save_model``)
* ``objectives.safetensors`` + ``objectives.json`` -- every objective's ``state_dict()``
  (momentum encoders, projection heads, queues with pointer and fill count), keyed by the
  recipe's instance name (``xlco``, not the class), tensors and JSON leaves split, keys
  joined with ``/``
* ``optimizer.safetensors`` + ``optimizer.json`` -- optimizer, LR scheduler and grad scaler
* ``trainer.json`` -- step, data-stream positions (every rank's), bad-step counters
* ``rng.json`` -- python, numpy, torch and CUDA generator states of every rank
* ``recipe.toml``, ``versions.json`` -- the resolved recipe and the plugin versions that wrote it
* ``manifest.json`` -- size and SHA-256 of every other file; written last

Nothing is ever unpickled: loading reads safetensors and JSON only.

Atomicity: a checkpoint is written into ``step_N.tmp``; every file and the directory are
fsync'ed, the directory is renamed to ``step_N`` and the parent directory fsync'ed. A process
killed at any instant thus leaves either a complete ``step_N`` or a ``.tmp`` directory that
is never read (and is removed by the next save). On load the manifest is checked first, so a
truncated or damaged file is reported (:class:`CheckpointError`) before anything is
modified, and the caller falls back to the previous checkpoint. Only the newest ``keep``
checkpoints are kept.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, save_model

from objkit.contract.errors import first_line
from objkit.distributed.faults import os_error_of, pause_for_test
from objkit.data.ownership import claim, follow_umask, owned_entries

STEP_DIR = re.compile(r"^step_(\d+)$")
FORMAT = 2
MANIFEST = "manifest.json"


class CheckpointError(Exception):
    """A checkpoint directory that is incomplete or damaged; ``str()`` says which file and how."""


# ----------------------------------------------------------------------------- nested state
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


# ----------------------------------------------------------------------------- RNG states
def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def capture_rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """This process's python, numpy, torch (and CUDA) generator states, as JSON values."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    cuda = []
    if device is not None and device.type == "cuda":
        cuda = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": cuda,
    }


def restore_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    version, values, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(_unb64(state["torch"]))
    if device is not None and device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ----------------------------------------------------------------------------- optimizer state
def _optimizer_from_flat(state: dict[str, Any]) -> dict[str, Any]:
    """JSON turned the optimizer's integer parameter ids into strings; turn them back (FSDP's
    full optimizer state is keyed by parameter name: those stay strings)."""
    opt = state.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("state"), dict):
        opt["state"] = {int(k) if k.isdigit() else k: v for k, v in opt["state"].items()}
    return state


# ----------------------------------------------------------------------------- durable writes
def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so that a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    objectives: dict[str, dict[str, Any]],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
    rng_states: list[dict[str, Any]] | None = None,
    recipe_toml: str | None = None,
    versions: dict[str, Any] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically (see the module doc) and prune to ``keep``.

    An ``OSError`` (disk full, unwritable directory) propagates after the partial ``.tmp``
    directory has been removed; the checkpoints already in place are untouched.
    """
    root = run_dir / "checkpoints"
    final = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    root.mkdir(parents=True, exist_ok=True)
    _claim_checkpoints(run_dir)
    for stale in root.iterdir():  # leftovers of writes that were killed
        if stale.is_dir() and stale.name.startswith("step_") and stale.suffix in (".tmp", ".old"):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    writing = tmp / "model.safetensors"  # named by the error if a write fails
    try:
        save_model(model, str(writing))
        pause_for_test("save-mid", step)
        tensors, values = flatten_state(objectives)
        save_file(_clone_shared(tensors), str(writing := tmp / "objectives.safetensors"))
        _write_json(tmp / "objectives.json", values)
        tensors, values = flatten_state(optimizer_state)
        save_file(_clone_shared(tensors), str(writing := tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", values)
        _write_json(tmp / "trainer.json", {"format": FORMAT, **trainer_state})
        _write_json(tmp / "rng.json", {"ranks": rng_states or []})
        if recipe_toml is not None:
            (tmp / "recipe.toml").write_text(recipe_toml, encoding="utf-8")
        if versions is not None:
            _write_json(tmp / "versions.json", versions)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        follow_umask(tmp)  # safetensors writes 0600 whatever the umask
        _write_json(tmp / MANIFEST, {"format": FORMAT, "step": step, "files": files})
        fsync_tree(tmp)
        old = root / f"step_{step:07d}.old"
        if final.exists():  # the same step written again (a resumed run): swap, then drop the old one
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        error = os_error_of(exc, writing) if isinstance(exc, SafetensorError) else None
        if error is not None:  # safetensors reports a full disk as its own error type
            raise error from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    pause_for_test("save-done", step)
    for stale in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _claim_checkpoints(run_dir: Path) -> None:
    """Record ``run_dir/checkpoints`` in the run directory's manifest (objkit wrote it)."""
    if "checkpoints" not in owned_entries(run_dir):
        claim(run_dir, ["checkpoints"], "objkit run")


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories (``step_N``, never ``.tmp``), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- loading
@dataclass
class CheckpointData:
    """Everything one checkpoint holds, read and verified, not yet applied to anything."""

    path: Path
    model: dict[str, torch.Tensor]
    objectives: dict[str, Any]
    optimizer: dict[str, Any]
    trainer: dict[str, Any]
    rng_states: list[dict[str, Any]]
    recipe_toml: str | None
    versions: dict[str, Any] | None
    sharded: bool = False
    """Written with ``checkpoint_format = "sharded"``: ``model`` is empty, ``objectives`` holds
    the JSON leaves only and ``optimizer`` the schedule and scaler; the tensors are loaded
    rank by rank (:func:`objkit.train.sharded_checkpoint.load_sharded`)."""

    @property
    def step(self) -> int:
        return int(self.trainer["step"])


def verify_checkpoint(path: Path) -> None:
    """Check every file against the manifest; raise :class:`CheckpointError` naming the first
    one that is missing, truncated or altered."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{MANIFEST} is missing") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{MANIFEST} is damaged") from None
    for name, expected in sorted(files.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{name} is missing")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{name} has {size} bytes, the manifest says {expected['bytes']} (truncated?)")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{name} does not match its SHA-256 in the manifest")


def read_checkpoint(path: Path, *, verify: bool = True) -> CheckpointData:
    """Verify and read one checkpoint; nothing is modified. :class:`CheckpointError` if it is
    incomplete or damaged. ``verify=False`` skips the SHA-256 check (another rank verified it)."""
    if verify:
        verify_checkpoint(path)
    current = "trainer.json"
    try:
        trainer = json.loads((path / current).read_text(encoding="utf-8"))
        if trainer.get("checkpoint_format") == "sharded":  # tensors: objkit/train/sharded_checkpoint.py
            values = []
            for current in ("objectives.json", "optimizer.json"):
                values.append(json.loads((path / current).read_text(encoding="utf-8")))
            current = "rng.json"
            rng_states = json.loads((path / current).read_text(encoding="utf-8"))["ranks"]
            int(trainer["step"])
            recipe = (path / "recipe.toml").read_text(encoding="utf-8") if (path / "recipe.toml").exists() else None
            current = "versions.json"
            versions = json.loads((path / current).read_text(encoding="utf-8")) if (path / current).exists() else None
            return CheckpointData(path, {}, values[0], values[1], trainer, rng_states, recipe, versions, sharded=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{current}: {first_line(exc)[:200]}") from None
    current = "model.safetensors"
    try:
        model = load_file(str(path / current))
        current = "objectives.safetensors"
        objectives = unflatten_state(
            load_file(str(path / current)), json.loads((path / "objectives.json").read_text(encoding="utf-8"))
        )
        current = "trainer.json"
        trainer = json.loads((path / current).read_text(encoding="utf-8"))
        int(trainer["step"])
        current = "optimizer.safetensors"
        optimizer = _optimizer_from_flat(unflatten_state(
            load_file(str(path / current)), json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
        ))
        current = "rng.json"
        rng_states = json.loads((path / current).read_text(encoding="utf-8"))["ranks"]
        current = "recipe.toml"
        recipe_toml = (path / current).read_text(encoding="utf-8") if (path / current).exists() else None
        current = "versions.json"
        versions = json.loads((path / current).read_text(encoding="utf-8")) if (path / current).exists() else None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{current}: {first_line(exc)[:200]}") from None
    return CheckpointData(path, model, objectives, optimizer, trainer, rng_states, recipe_toml, versions)


def newest_readable(run_dir: Path) -> tuple[CheckpointData | None, list[str]]:
    """The newest checkpoint that reads back intact, and one line for each newer one that did
    not (``"RUN/checkpoints/step_N: model.safetensors has ... bytes ..."``)."""
    problems: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return read_checkpoint(path), problems
        except CheckpointError as exc:
            problems.append(f"{path}: {exc}")
    return None, problems


def apply_model_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``tensors`` into ``model`` (tied weights saved once, as ``save_model`` does)."""
    _, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise CheckpointError(f"{source}/model.safetensors: unexpected keys {sorted(unexpected)[:5]}")


# ----------------------------------------------------------------------------- small files
def atomic_write_text(path: Path, text: str) -> None:
    """Write ``path`` via a fsync'ed temporary file and a rename (never half written)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
