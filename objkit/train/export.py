"""Exports: the ``save_pretrained`` encoder and tokenizer of a run, with a model card.

One function writes every export (:func:`write_export`): the end of ``objkit run``
(``RUN/export``, :meth:`objkit.train.trainer.Trainer.export`) and ``objkit export RUN -o DIR``, which
exports any complete checkpoint of a run -- finished, stopped by a signal, or still training.
The command rebuilds the encoder the checkpoint's recorded ``recipe.toml`` describes (through
the plugin registry, on CPU, as the trainer builds it: vocabulary fitting and the objectives
that change the encoder's modules included) and loads the checkpoint's model weights into it;
nothing else of the checkpoint (optimizer, objectives' state) is read. A sharded checkpoint's
weights are gathered from its shards in this one process. The export of the last checkpoint of
a finished run holds the same weight and tokenizer bytes as the run's own export.

An export folder is written whole, through :func:`objkit.data.ownership.write_folder`: built in a
private temporary sibling, then renamed into place. A folder objkit did not write is never
replaced (one line, exit 2, nothing touched). Files follow the umask.

``--sentence-transformers`` adds what :class:`sentence_transformers.SentenceTransformer` loads,
pooling as objkit's retrieval evaluation pools (:mod:`objkit.eval.retrieval`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from objkit.contract.errors import UserError
from objkit.train.model_card import CardInfo, SentenceSpec, model_card

if TYPE_CHECKING:
    from objkit.contract.interfaces import Encoder
    from objkit.recipe.loader import ResolvedRecipe
    from objkit.contract.registry import Registry

__all__ = ["export_checkpoint", "export_command", "write_export"]

RUN_EXPORT = "export"


# ----------------------------------------------------------------------------- writing
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(root: Path) -> None:
    """Files 0666 and folders 0777 less the umask (safetensors creates its files 0600)."""
    mask = _umask()
    for folder, dirs, files in os.walk(root):
        for name in files:
            os.chmod(Path(folder) / name, 0o666 & ~mask)
        for name in dirs:
            os.chmod(Path(folder) / name, 0o777 & ~mask)
    os.chmod(root, 0o777 & ~mask)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _write_json(path: Path, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2) + "\n")


def sentence_transformers_files(folder: Path, spec: SentenceSpec, hidden_size: int) -> None:
    """modules.json (Transformer, Pooling, Normalize), sentence_bert_config.json,
    1_Pooling/config.json, 2_Normalize/ and config_sentence_transformers.json in ``folder``.
    A middle layer is pooled by loading the model with ``num_hidden_layers = layer``
    (``config_args``): the last hidden state is then exactly ``hidden_states[layer]``."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    _write_json(folder / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    config: dict[str, Any] = {"max_seq_length": spec.max_seq_length, "do_lower_case": False}
    if spec.layer < spec.num_layers:
        config["config_args"] = {"num_hidden_layers": spec.layer}
    _write_json(folder / "sentence_bert_config.json", config)
    _write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": spec.pooling == "cls",
        "pooling_mode_mean_tokens": spec.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    (folder / "2_Normalize").mkdir(exist_ok=True)
    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    try:
        versions = {"sentence_transformers": version("sentence-transformers"), **versions}
    except PackageNotFoundError:  # not installed here: the loader's version check has nothing to compare
        pass
    _write_json(folder / "config_sentence_transformers.json", {
        "__version__": versions, "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    })


@contextlib.contextmanager
def _without_call_state(tokenizer: Any) -> Iterator[None]:
    """A fast tokenizer keeps the truncation and padding of its last call (an evaluation's
    ``truncation=True, max_length=...``) and ``save_pretrained`` writes them into tokenizer.json:
    cleared while saving, so that every export of the same tokenizer has the same bytes."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    truncation = getattr(backend, "truncation", None)
    padding = getattr(backend, "padding", None)
    if backend is None or (truncation is None and padding is None):
        yield
        return
    backend.no_truncation()
    backend.no_padding()
    try:
        yield
    finally:
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


def write_export(target: Path, model: Encoder, tokenizer: Any, *, card: CardInfo, record: dict[str, Any],
                 recipe_toml: str, writer: str, hint: str) -> Path:
    """Write the export folder ``target`` whole: ``model.save_pretrained`` (config.json and
    model.safetensors: ``AutoModel`` / ``AutoModelForMaskedLM``), the tokenizer
    (:func:`objkit.data.tokenizer.save_tokenizer_for`), ``objkit.json`` (``record``), the resolved
    ``recipe.toml``, the model card ``README.md`` and, with ``card.sentence``, the
    sentence-transformers files. ``writer`` names the command in the folder's ownership manifest.
    A failed write is one line naming ``target`` and the OS's reason, then ``hint``."""
    from objkit.train import checkpoint as ckpt
    from objkit.distributed import faults
    from objkit.data.ownership import write_folder
    from objkit.data.tokenizer import save_tokenizer_for

    target = Path(target)

    def build(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        with _without_call_state(tokenizer):
            save_tokenizer_for(model, tokenizer, tmp)
        (tmp / "objkit.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        _write_text(tmp / "recipe.toml", recipe_toml)
        _write_text(tmp / "README.md", model_card(card))
        if card.sentence is not None:
            sentence_transformers_files(tmp, card.sentence, model.hidden_size)
        _follow_umask(tmp)
        ckpt.fsync_tree(tmp)

    try:
        write_folder(target, build, writer)
    except UserError:
        raise
    except Exception as exc:  # safetensors and tokenizers (Rust) report a full disk in their own types
        error = faults.os_error_of(exc, target)
        if error is None:
            raise
        raise faults.write_error(OSError(error.errno, error.strerror, str(target)), "the export", hint) from None
    ckpt.fsync_path(target.parent)
    return target


def export_record(step: int, total_steps: int, recipe_source: str, checkpoint: Path | None = None) -> dict[str, Any]:
    """``objkit.json`` of an export: the step, the recipe it came from, and the checkpoint exported."""
    record: dict[str, Any] = {"step": step, "recipe": recipe_source, "total_steps": total_steps}
    if checkpoint is not None:
        record["checkpoint"] = str(checkpoint)
    return record


def objkit_version() -> str:
    from objkit import __version__

    return __version__


# ----------------------------------------------------------------------------- reading a checkpoint
def _step_of(text: str) -> int | None:
    from objkit.train.checkpoint import STEP_DIR

    name = Path(text).name
    match = STEP_DIR.match(name)
    if match:
        return int(match.group(1))
    return int(name) if name.isdigit() else None


def _verify(path: Path, names: list[str]) -> None:
    """Check ``names`` (files of checkpoint ``path``) against its manifest: sizes and SHA-256.
    :class:`objkit.train.checkpoint.CheckpointError` names the first that is missing or altered."""
    from objkit.train.checkpoint import MANIFEST, CheckpointError, _sha256

    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{MANIFEST} is missing") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"{MANIFEST} is damaged") from None
    for name in names:
        if name not in files:
            raise CheckpointError(f"{name} is not in {MANIFEST}")
        file, expected = path / name, files[name]
        if not file.is_file():
            raise CheckpointError(f"{name} is missing")
        if file.stat().st_size != expected["bytes"]:
            raise CheckpointError(f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}")
        if _sha256(file) != expected["sha256"]:
            raise CheckpointError(f"{name} does not match its SHA-256 in the manifest")


def _model_files(path: Path) -> list[str]:
    """The files of checkpoint ``path`` this export reads (the model's tensors, step, recipe)."""
    from objkit.train.sharded_checkpoint import SHARDS, is_sharded

    names = ["trainer.json", "recipe.toml"]
    if is_sharded(path):
        names += sorted(f"{SHARDS}/{p.name}" for p in (path / SHARDS).iterdir())
    else:
        names.append("model.safetensors")
    return names


def choose_checkpoint(run_dir: Path, wanted: str | None) -> Path:
    """The checkpoint to export: ``wanted`` (``step_N``, ``N`` or the folder), else the newest
    complete one whose files read back intact (a damaged newer one is reported and skipped)."""
    from objkit.train.checkpoint import CheckpointError, list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        raise UserError(f"RUN_DIR {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'} "
                        "(a run directory of objkit run holds checkpoints/step_N)")
    if wanted is not None:
        step = _step_of(wanted)
        matches = [p for p in found if step is not None and _step_of(p.name) == step]
        if not matches:
            have = ", ".join(p.name for p in found)
            raise UserError(f"--checkpoint {wanted}: no complete checkpoint of that step in {run_dir / 'checkpoints'} "
                            f"(there are: {have}; expected step_N or N)")
        candidates = matches
    else:
        candidates = list(reversed(found))
    for path in candidates:
        try:
            _verify(path, _model_files(path))
            return path
        except (CheckpointError, OSError) as exc:
            if wanted is not None:
                raise UserError(f"{path}: {exc}; export another checkpoint (--checkpoint)") from None
            click.echo(f"warning: checkpoint {path}: {exc}; skipping it", err=True)
    raise UserError(f"RUN_DIR {run_dir}: no checkpoint is intact ({len(candidates)} damaged)")


def load_model_tensors(path: Path, encoder: Encoder) -> None:
    """Load checkpoint ``path``'s model weights into ``encoder`` (on CPU): ``model.safetensors``,
    or, for a sharded checkpoint, the encoder's tensors gathered from every rank's shard
    (``torch.distributed.checkpoint`` in this one process). Tied weights are saved under one
    name; any other weight the checkpoint lacks, or a shape that differs, is a one-line error."""
    import torch

    from objkit.train.sharded_checkpoint import SHARDS, is_sharded

    state = encoder.state_dict()
    if is_sharded(path):
        import warnings

        import torch.distributed.checkpoint as dcp

        reader = dcp.FileSystemReader(str(path / SHARDS))
        saved = reader.read_metadata().state_dict_metadata
        template = {f"encoder.{k}": torch.empty_like(v, device="cpu") for k, v in state.items()
                    if f"model.encoder.{k}" in saved}
        shapes = {k: tuple(saved[f"model.{k}"].size) for k in template if hasattr(saved[f"model.{k}"], "size")}
        wrong = [k for k, shape in shapes.items() if shape != tuple(template[k].shape)]
        if wrong:
            raise UserError(f"{path}: {wrong[0][len('encoder.'):]} has shape {list(shapes[wrong[0]])} in the checkpoint, "
                            f"{list(template[wrong[0]].shape)} in the encoder its recipe.toml builds")
        wrapped = {"model": template}
        with warnings.catch_warnings():  # "torch.distributed is ... uninitialized, assuming ... a single process"
            warnings.filterwarnings("ignore", message=".*assuming the intent is to", category=UserWarning)
            dcp.load(wrapped, storage_reader=reader, no_dist=True)
        tensors = {k[len("encoder."):]: v for k, v in wrapped["model"].items()}
        source = path / SHARDS
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path / "model.safetensors"))
        source = path / "model.safetensors"
    shared = {}
    for name, tensor in state.items():
        shared.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape)),
                          []).append(name)
    missing = [name for names in shared.values() if not any(n in tensors for n in names) for name in names]
    if missing:
        raise UserError(f"{source}: has no weights for {missing[0]}"
                        f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}: the encoder its "
                        "recipe.toml builds (with the plugins installed now) is not the one trained")
    try:
        _, unexpected = encoder.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # a size mismatch
        detail = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
        raise UserError(f"{source}: the weights do not fit the encoder its recipe.toml builds ({detail})") from None
    if unexpected:
        raise UserError(f"{source}: weights the encoder its recipe.toml builds does not have: {sorted(unexpected)[:3]}")


def rebuild_encoder(resolved: ResolvedRecipe, registry: Registry, tokenizer: Any) -> Encoder:
    """The encoder a run of ``resolved`` trains, as the trainer builds it, on CPU: the encoder
    plugin, vocabulary fitting to an extended tokenizer, then the objectives that change the
    encoder's modules (TLM's language embeddings) -- only those are built."""
    import torch

    from objkit.train.build import build_encoder
    from objkit.contract.interfaces import BuildContext, VocabInfo, WorldInfo
    from objkit.data.vocab import fit_vocabulary

    encoder = build_encoder(resolved, registry, vocab_size=len(tokenizer)).to(torch.device("cpu"))
    fit_vocabulary(resolved, encoder, tokenizer)
    recipe = resolved.recipe
    vocab = VocabInfo.from_tokenizer(tokenizer)
    for name, entry in recipe.enabled_objectives().items():
        cls = registry.get(entry.plugin, kind="objective").cls
        config = resolved.objective_configs[name]
        if not cls.modifies_encoder(config):
            continue
        cls(config, BuildContext(
            encoder=encoder, tokenizer=tokenizer, vocab=vocab, registry=registry, instance_name=name,
            seed=recipe.train.seed, device=torch.device("cpu"), total_steps=recipe.train.steps,
            max_length=recipe.model.max_length, world=WorldInfo(), precision="fp32",
        ))
    return encoder.eval()


def sentence_spec(resolved: ResolvedRecipe, encoder: Encoder) -> SentenceSpec:
    """The pooling of the run's retrieval evaluation: the recipe's ``[eval]`` layer and pooling
    (default: :func:`objkit.eval.retrieval.default_layer`, mean), ``model.max_length`` tokens."""
    from objkit.eval.retrieval import default_layer

    config = resolved.recipe.eval
    layer = config.layer if config is not None and config.layer is not None else default_layer(encoder.num_layers)
    limit = encoder.max_tokens or resolved.recipe.model.max_length
    return SentenceSpec(layer=min(layer, encoder.num_layers), num_layers=encoder.num_layers,
                        pooling=config.pooling if config is not None else "mean",
                        max_seq_length=min(resolved.recipe.model.max_length, limit))


def export_checkpoint(run_dir: Path, output: Path, *, checkpoint: str | None = None,
                      sentence_transformers: bool = False, registry: Registry | None = None) -> tuple[Path, int]:
    """Write the export of ``run_dir``'s checkpoint (``checkpoint``, default the newest intact)
    to ``output``; returns (the checkpoint exported, its step)."""
    from objkit.data.ownership import check_replaceable

    run_dir, output = Path(run_dir), Path(output)
    if not run_dir.is_dir():
        raise UserError(f"RUN_DIR {run_dir}: not a directory (expected the -o folder of objkit run)")
    inside = output.resolve()
    if inside == run_dir.resolve() or inside.is_relative_to((run_dir / "checkpoints").resolve()):
        raise UserError(f"-o {output}: inside the run's own files; choose a folder of its own (e.g. {run_dir}/export-step)")
    check_replaceable(output, "-o")  # before the work: the write checks again
    path = choose_checkpoint(run_dir, checkpoint)
    try:
        trainer_state = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        step = int(trainer_state["step"])
        recipe_toml = (path / "recipe.toml").read_text(encoding="utf-8")
        raw = tomllib.loads(recipe_toml)
    except FileNotFoundError as exc:
        raise UserError(f"{path}: {Path(str(exc.filename)).name} is missing (removed while exporting? "
                        "train.keep_checkpoints prunes old checkpoints)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: cannot read its trainer.json / recipe.toml ({exc})") from None

    from objkit.train.build import load_tokenizer
    from objkit.recipe.loader import validate_recipe
    from objkit.contract.registry import default_registry

    registry = registry or default_registry()
    resolved = validate_recipe(raw, registry, source=str(path / "recipe.toml"))
    tokenizer = load_tokenizer(resolved)
    encoder = rebuild_encoder(resolved, registry, tokenizer)
    load_model_tensors(path, encoder)
    card = CardInfo(recipe=raw, step=step, total_steps=resolved.recipe.train.steps, run_dir=run_dir,
                    checkpoint=path.name, objkit_version=objkit_version(),
                    sentence=sentence_spec(resolved, encoder) if sentence_transformers else None)
    write_export(output, encoder, tokenizer, card=card,
                 record=export_record(step, resolved.recipe.train.steps, str(path / "recipe.toml"), path),
                 recipe_toml=recipe_toml, writer="objkit export", hint="the run's checkpoints are untouched")
    return path, step


@click.command("export", epilog="""\b
Examples:
  objkit export runs/quickstart -o exports/quickstart
  objkit export runs/base --checkpoint step_0020000 -o exports/base-20k
  objkit export runs/qi -o exports/qi-st --sentence-transformers
""")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", metavar="step_N",
              help="The checkpoint to export (step_N, or N). Default: the newest complete one that reads back intact.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Folder to write (new, empty, or an export objkit wrote: it is replaced whole).")
@click.option("--sentence-transformers", "sentence", is_flag=True,
              help="Also write the sentence-transformers files: SentenceTransformer(DIR) pools as "
                   "objkit's retrieval evaluation does (the recipe's [eval] layer and pooling).")
def export_command(run_dir: Path, checkpoint: str | None, output: Path, sentence: bool) -> None:
    """Export a checkpoint of RUN_DIR (a run of objkit run: finished, stopped, or training) as a
    transformers model folder: config.json, model.safetensors and the tokenizer (AutoModel,
    AutoModelForMaskedLM, AutoTokenizer), a model card README.md and the recipe. The last
    checkpoint of a finished run gives the same weights, byte for byte, as RUN_DIR/export."""
    path, step = export_checkpoint(run_dir, output, checkpoint=checkpoint, sentence_transformers=sentence)
    click.echo(f"exported {path} (step {step}) to {output}", err=True)
