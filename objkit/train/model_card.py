"""The model card (``README.md``) of an export: what was trained (recipe, objectives and their
weights, data), which step the weights are, the evaluation results found in the run directory,
and how to load it. Plain text from the recorded recipe and the run directory's files; nothing
here imports torch or transformers."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CardInfo", "SentenceSpec", "evaluation_records", "model_card"]

EVAL_PREFIX = "eval/"


@dataclass(frozen=True)
class SentenceSpec:
    """How the sentence-transformers files pool: what ``objkit eval retrieval`` does with the
    same layer, pooling and length, as a :class:`sentence_transformers.SentenceTransformer`."""

    layer: int
    num_layers: int
    pooling: str  # "mean" (every non-padding token, <s> and </s> included) or "cls"
    max_seq_length: int


@dataclass(frozen=True)
class CardInfo:
    recipe: dict[str, Any]
    """The resolved recipe as recorded (``recipe.toml`` of the run or checkpoint, parsed)."""
    step: int
    total_steps: int
    run_dir: Path
    checkpoint: str | None = None
    """The checkpoint folder exported (``step_0000100``); None: the end of training."""
    objkit_version: str = ""
    sentence: SentenceSpec | None = None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.4g}"
    if value is None:
        return "–"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text.replace("|", "\\|").replace("\n", " ")


def _short(value: Any, limit: int = 120) -> str:
    text = _cell(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def evaluation_records(run_dir: Path) -> dict[int, dict[str, float]]:
    """``{step: {"eval/NAME/...": value}}`` from ``run_dir/metrics.jsonl``: what the recipe's
    ``[eval]`` (retrieval sets, transfer tasks) measured during training."""
    out: dict[int, dict[str, float]] = {}
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
        values = {k: v for k, v in record.items() if isinstance(k, str) and k.startswith(EVAL_PREFIX)}
        if values:
            out.setdefault(step, {}).update(values)
    return out


def _numbers(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, float]]:
    """Numeric leaves of a JSON value up to two levels deep (``avg``, ``mean``, per language)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(prefix or "value", float(value))]
    if isinstance(value, dict) and depth < 2:
        return [pair for key, sub in value.items() for pair in _numbers(sub, f"{prefix}.{key}" if prefix else str(key),
                                                                        depth + 1)]
    return []


def _eval_files(run_dir: Path) -> list[str]:
    """Lines for JSON results saved in the run directory (``objkit eval ... --json > RUN/eval-x.json``)."""
    lines = []
    for path in sorted(Path(run_dir).glob("eval*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            lines.append(f"- `{path.name}`: not readable as JSON")
            continue
        model = data.get("model") if isinstance(data, dict) else None
        numbers = _numbers({k: v for k, v in data.items() if k != "model"} if isinstance(data, dict) else data)
        shown = ", ".join(f"{k} {_cell(v)}" for k, v in numbers[:12])
        more = f" (and {len(numbers) - 12} more)" if len(numbers) > 12 else ""
        of = f" (model evaluated: `{model}`)" if isinstance(model, str) else ""
        lines.append(f"- `{path.name}`{of}: {shown or 'no numbers at its top levels'}{more}")
    return lines


def _evaluation(info: CardInfo) -> list[str]:
    out = ["## Evaluation", ""]
    records = evaluation_records(info.run_dir)
    at_step = records.get(info.step)
    if at_step:
        out += [f"Measured during training at step {info.step} (these weights), from the run's `metrics.jsonl` "
                "(retrieval: top-1 accuracy in percent; transfer: the task's score in percent):", "",
                "| metric | value |", "|---|---|"]
        out += [f"| {_cell(k[len(EVAL_PREFIX):])} | {_cell(v)} |" for k, v in sorted(at_step.items())]
        out.append("")
    else:
        earlier = [s for s in records if s < info.step]
        out.append(f"No evaluation of step {info.step} was found in the run directory.")
        if earlier:
            last = max(earlier)
            out += ["", f"The latest earlier one, step {last} (other weights than these), from `metrics.jsonl`:", "",
                    "| metric | value |", "|---|---|"]
            out += [f"| {_cell(k[len(EVAL_PREFIX):])} | {_cell(v)} |" for k, v in sorted(records[last].items())]
        out.append("")
    files = _eval_files(info.run_dir)
    if files:
        out += ["Results saved in the run directory (check which model each evaluated):", "", *files, ""]
    return out


def _objectives(recipe: dict[str, Any]) -> list[str]:
    rows = ["| objective | plugin | weight | data | settings |", "|---|---|---|---|---|"]
    core = {"plugin", "weight", "enabled", "data"}
    for name, entry in (recipe.get("objectives") or {}).items():
        if not isinstance(entry, dict) or not entry.get("enabled", True):
            continue
        settings = ", ".join(f"{k}={_short(v, 60)}" for k, v in entry.items() if k not in core)
        rows.append(f"| {_cell(name)} | {_cell(entry.get('plugin'))} | {_cell(entry.get('weight', 1.0))} | "
                    f"{_cell(entry.get('data'))} | {settings or '–'} |")
    return rows


def _data(recipe: dict[str, Any]) -> list[str]:
    rows = []
    for name, source in (recipe.get("data") or {}).items():
        if not isinstance(source, dict):
            continue
        keys = ", ".join(f"{k}={_short(v, 160)}" for k, v in source.items() if v not in (None, [], {}))
        rows.append(f"- `{name}`: {keys}")
    return rows or ["- (none recorded)"]


def _model(recipe: dict[str, Any]) -> list[str]:
    model = recipe.get("model") or {}
    keys = ", ".join(f"{k}={_short(v, 80)}" for k, v in model.items() if v is not None)
    return [f"- `[model]`: {keys}"] if keys else []


def _loading(info: CardInfo) -> list[str]:
    out = ["## How to load", "", "`PATH`: this folder (or its hub id once uploaded).", "", "```python", "from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer",
           "", 'tokenizer = AutoTokenizer.from_pretrained("PATH")',
           'encoder = AutoModel.from_pretrained("PATH")            # the body: hidden states',
           'mlm = AutoModelForMaskedLM.from_pretrained("PATH")     # the body and its LM head', "```", ""]
    spec = info.sentence
    if spec is not None:
        pooled = ("mean of every non-padding token's vector, `<s>` and `</s>` included"
                  if spec.pooling == "mean" else "the first token's (`<s>`) vector")
        out += ["### Sentence embeddings (sentence-transformers)", "",
                "```python", "from sentence_transformers import SentenceTransformer", "",
                'model = SentenceTransformer("PATH")', 'vectors = model.encode(["a sentence", "ein Satz"])', "```", "",
                f"This pools as objkit's retrieval evaluation does (`objkit eval retrieval PATH --layer {spec.layer} "
                f"--pooling {spec.pooling} --max-length {spec.max_seq_length}`): the hidden states of layer "
                f"{spec.layer} of {spec.num_layers}, {pooled}, L2-normalised; at most {spec.max_seq_length} "
                "tokens per sentence, specials included."]
        if spec.layer < spec.num_layers:
            out += ["", f"Layer {spec.layer} is not the last one: `sentence_bert_config.json` loads the model with "
                    f"`num_hidden_layers = {spec.layer}` (`config_args`), so the blocks above layer {spec.layer} are not "
                    "loaded (transformers reports their weights as unused) and the pooled vectors are exactly "
                    "the evaluation's. `AutoModel` loads all "
                    f"{spec.num_layers} layers; to reproduce the vectors with plain transformers, mean-pool "
                    f"`outputs.hidden_states[{spec.layer}]` (with `output_hidden_states=True`) over "
                    "`attention_mask`, then L2-normalise. Saving the SentenceTransformer again writes the "
                    f"{spec.layer}-layer model."]
        out.append("")
    return out


def model_card(info: CardInfo) -> str:
    """The export's ``README.md``."""
    recipe = info.recipe
    name = recipe.get("name") or "objkit encoder"
    when = (f"checkpoint `{info.checkpoint}`, step {info.step} of {info.total_steps}" if info.checkpoint
            else f"the end of training, step {info.step} of {info.total_steps}")
    stopped = " Training had not finished when this checkpoint was written." if info.step < info.total_steps else ""
    lines = ["---", "library_name: transformers", "tags:", "- objkit", "- fill-mask", "- cross-lingual"]
    if info.sentence is not None:
        lines += ["- sentence-transformers", "- feature-extraction"]
    lines += ["---", "", f"# {name}", ""]
    if recipe.get("description"):
        lines += [str(recipe["description"]).strip(), ""]
    lines += [f"An encoder pretrained with [objkit](https://pypi.org/project/objkit/){' ' + info.objkit_version if info.objkit_version else ''}; "
              f"these weights are {when}.{stopped}", "",
              "## Training", "", *_model(recipe),
              f"- steps: {info.total_steps} planned; exported: {info.step}",
              f"- batch size: {_cell((recipe.get('train') or {}).get('batch_size'))}, "
              f"peak learning rate: {_cell((recipe.get('train') or {}).get('lr'))}, "
              f"seed: {_cell((recipe.get('train') or {}).get('seed'))}", "",
              "Objectives (the loss is their weighted sum):", "", *_objectives(recipe), "",
              "Data sources:", "", *_data(recipe), "",
              "The resolved recipe that trained it (every key, defaults included) is `recipe.toml` beside this card.", "",
              *_evaluation(info), *_loading(info)]
    return "\n".join(lines).rstrip() + "\n"
