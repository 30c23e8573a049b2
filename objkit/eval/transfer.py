"""Zero-shot cross-lingual transfer: fine-tune every model on the same data, seeds and settings,
test on every language, and tabulate (a row per model, a column per language, mean over seeds).

Two settings, as in XTREME and InfoXLM: ``cross-lingual`` (train on ``train_langs``, English by
default; the average is over the other languages) and ``translate-train-all`` (train on every
language's training split; the average is over all languages). Model selection on the dev split of
the training languages (XTREME, the default) or on the average dev score over all languages
(``avg-dev``, xTune). Each split is tokenized once per tokenizer and reused across seeds and models.
"""

from __future__ import annotations

import contextlib
import hashlib
import statistics
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from objkit.contract.errors import UserError, first_line
from objkit.eval.finetune import (
    Encoded,
    FinetuneSettings,
    encode_split,
    finetune,
    majority_scores,
    tqdm_factory,
)
from objkit.eval.retrieval import (
    check_encoder_config,
    check_model_dir,
    model_load_error,
    quiet_transformers,
    tokenizer_load_error,
)
from objkit.eval.tasks import TaskData
from objkit.data.tokenizer import model_max_tokens

PROTOCOL = {
    "train-dev": "XTREME (run_classify.py / run_tag.py): fine-tune the whole model, keep the checkpoint "
                 "with the best dev score of the training language(s), report its test scores",
    "avg-dev": "xTune: fine-tune the whole model, keep the checkpoint with the best average dev score "
               "over all languages, report its test scores",
}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        """``NAME=PATH`` or ``PATH`` (named by its last two path parts)."""
        name, sep, path = spec.partition("=")
        if sep and name and path and not Path(spec).exists():
            return cls(name, path)
        parts = Path(spec.rstrip("/")).parts
        return cls("/".join(parts[-2:]) if parts and parts[-1] == "export" else (parts[-1] if parts else spec), spec)


def check_model(spec: ModelSpec) -> tuple[Any, Any]:
    """(config, tokenizer) of a model, or a one-line UserError naming it: every model is checked
    before any is fine-tuned."""
    from transformers import AutoConfig, AutoTokenizer

    from objkit.blocks.hub import meant_as_local_path, offline_unless_reachable

    if meant_as_local_path(spec.path):
        raise UserError(f"{spec.path}: no such model directory (expected an objkit export, a transformers "
                        "model directory or a hub id)")
    check_model_dir(spec.path)
    local = offline_unless_reachable(spec.path)
    with quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(spec.path, local_files_only=local)
        except (OSError, ValueError, KeyError) as err:
            raise model_load_error(spec.path, err) from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=local)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise tokenizer_load_error(spec.path, err) from None
    check_encoder_config(spec.path, config)
    return config, tokenizer


def _tokenizer_key(tokenizer: Any, max_length: int) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    blob = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{type(tokenizer).__name__}|{max_length}|{blob}".encode()).hexdigest()


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def evaluate_transfer(
    models: list[ModelSpec],
    data: TaskData,
    settings: FinetuneSettings,
    seeds: list[int],
    *,
    setting: str = "cross-lingual",
    device: str = "auto",
    log: Any = None,
) -> dict[str, Any]:
    """Fine-tune every model with every seed; return the JSON-able result (see ``objkit eval transfer``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from objkit.distributed.device import resolve_device

    dev = resolve_device(device)
    checked = [(m, *check_model(m)) for m in models]  # fail fast, before any training
    label_ids = {x: i for i, x in enumerate(data.label_names)}
    auto = AutoModelForTokenClassification if data.spec.level == "token" else AutoModelForSequenceClassification
    zero = [x for x in data.languages if x not in data.train_langs] if setting == "cross-lingual" else data.languages
    cache: dict[str, dict[tuple[str, str], Encoded]] = {}
    rows = []
    for spec, config, tokenizer in checked:
        limit = min(settings.max_length, model_max_tokens(config) or settings.max_length)
        key = _tokenizer_key(tokenizer, limit)
        if key not in cache:
            cache[key] = {k: encode_split(split, tokenizer, label_ids, limit) for k, split in data.splits.items()}
        encoded = cache[key]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (config.pad_token_id or 0)

        def build(spec: ModelSpec = spec) -> torch.nn.Module:
            kwargs: dict[str, Any] = {"num_labels": len(data.label_names), "label2id": label_ids,
                                      "id2label": dict(enumerate(data.label_names))}
            if settings.dropout is not None:
                kwargs.update(hidden_dropout_prob=settings.dropout, attention_probs_dropout_prob=settings.dropout)
            with quiet_transformers():
                try:
                    model = auto.from_pretrained(spec.path, **kwargs)
                except (OSError, ValueError, KeyError, RuntimeError) as err:
                    raise UserError(f"{spec.path}: cannot load for fine-tuning ({first_line(err)})") from None
            if settings.frozen:
                for param in model.base_model.parameters():
                    param.requires_grad_(False)
            return model.to(dev)

        results = []
        for seed in seeds:
            res = finetune(build, data, encoded, settings, seed, pad_id, tqdm_factory(f"{spec.name} seed {seed}"))
            avg = statistics.fmean(res.test[x] for x in zero)
            if log is not None:
                log(f"[{spec.name}] seed {seed}: " + "  ".join(f"{x} {res.test[x]:.1f}" for x in data.languages)
                    + f"  | avg {avg:.1f}  (best step {res.best_step}/{res.steps}, {res.seconds:.1f} s)")
            results.append({**asdict(res), "avg": avg, "avg_all": statistics.fmean(res.test.values())})
        per_lang = {x: _mean_std([r["test"][x] for r in results]) for x in data.languages}
        rows.append({
            "name": spec.name, "model": spec.path, "max_length": limit, "seeds": results,
            "mean": {x: v["mean"] for x, v in per_lang.items()}, "std": {x: v["std"] for x, v in per_lang.items()},
            "avg": _mean_std([r["avg"] for r in results]), "avg_all": _mean_std([r["avg_all"] for r in results]),
            "seconds_per_seed": statistics.fmean(r["seconds"] for r in results),
        })
    return {
        "task": data.spec.name, "metric": data.spec.metric, "setting": setting,
        "protocol": PROTOCOL[settings.select], "languages": data.languages, "train_langs": data.train_langs,
        "avg_over": zero, "labels": data.label_names,
        "sizes": {f"{s}-{x}": len(d) for (s, x), d in data.splits.items()},
        "settings": {**settings.as_dict(), "seeds": seeds, "task": data.spec.name, "setting": setting,
                     "train_langs": data.train_langs, "device": str(dev)},
        "majority": majority_scores(data), "models": rows,
    }


def format_table(result: dict[str, Any], std: bool = False, markdown: bool = False) -> str:
    """The paper's layout: a row per model, a column per language, then the average (over the
    non-training languages in the cross-lingual setting, over all in translate-train-all)."""
    langs = result["languages"]
    head = ["model", *langs, "avg"]

    def cell(mean: float, sd: float) -> str:
        return f"{mean:.1f} ± {sd:.1f}" if std else f"{mean:.1f}"

    rows = [[m["name"], *(cell(m["mean"][x], m["std"][x]) for x in langs), cell(m["avg"]["mean"], m["avg"]["std"])]
            for m in result["models"]]
    maj = result["majority"]
    rows.append(["majority class", *(f"{maj[x]:.1f}" for x in langs),
                 f"{statistics.fmean(maj[x] for x in result['avg_over']):.1f}"])
    s = result["settings"]
    metric = "entity F1" if result["metric"] == "f1" else "accuracy"
    caption = (f"{result['task']}: {metric} (%), {result['setting']} (trained on {', '.join(result['train_langs'])}), "
               f"mean over seeds {','.join(map(str, s['seeds']))}; avg over {len(result['avg_over'])} languages")
    if markdown:
        lines = [caption, "", "| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = [f"{{:<{widths[0]}}}", *(f"{{:>{w}}}" for w in widths[1:])]
    lines = [caption] + ["  ".join(f.format(v) for f, v in zip(fmt, r)) for r in [head, *rows]]
    return "\n".join(lines)


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class TransferDuringTraining:
    """The ``transfer`` evaluator's work during training (``[eval.NAME]`` with ``plugin =
    "transfer"``, or the deprecated ``[eval.transfer.NAME]``): the task is read and checked when
    the run starts; at evaluation time the encoder is saved (as the export would be) to
    ``RUN_DIR/eval-transfer.tmp``, fine-tuned on a copy, and removed. The run's RNG states are
    restored afterwards, so a run with transfer evaluation trains exactly as one without. It runs
    on rank 0 with the full copy (``weights = "main"``) while the other ranks wait (keep
    ``max_steps`` small for long runs: they wait in a barrier)."""

    def __init__(self, config: Any) -> None:
        from objkit.eval.tasks import TASKS, Columns, load_task

        self.config = config
        cols = Columns.parse(config.columns) if config.columns else None
        self.data = load_task(TASKS[config.task], Path(config.data_dir), config.langs, config.train_langs,
                              config.setting, cols, config.max_train)
        self.settings = FinetuneSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                                         max_length=config.max_length, warmup=config.warmup,
                                         select=config.select, max_steps=config.max_steps)

    def __call__(self, ctx: Any) -> dict[str, float]:
        """``{LANG: score, "avg": average}`` of the model of ``ctx`` (an :class:`objkit.EvalContext`)."""
        import shutil
        import tempfile

        scratch = None if ctx.run_dir is not None else tempfile.mkdtemp(prefix="objkit-eval-transfer-")
        tmp = Path(ctx.run_dir) / "eval-transfer.tmp" if ctx.run_dir is not None else Path(scratch) / "model"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            ctx.save_pretrained(tmp)
            with _preserved_rng():
                out = evaluate_transfer([ModelSpec(ctx.name, str(tmp))], self.data, self.settings,
                                        list(self.config.seeds), setting=self.config.setting, device=str(ctx.device))
        finally:
            shutil.rmtree(scratch or tmp, ignore_errors=True)
        row = out["models"][0]
        results = {lang: value for lang, value in row["mean"].items()}
        results["avg"] = row["avg"]["mean"]
        return results


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    """torch's CPU and CUDA generators (``torch.random.fork_rng``), python's and numpy's restored on exit."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
