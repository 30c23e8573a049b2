"""Fine-tune a pretrained encoder on one task and score it on every language (one seed).

The model is the standard one, so numbers compare with the literature:
``AutoModelForSequenceClassification`` (XLM-R: ``<s>`` of the last layer → dense → tanh →
linear) or ``AutoModelForTokenClassification`` (a linear layer on every token; a word's label is
predicted at its first subword, the other subwords are ignored, as in XTREME). The optimisation
follows XTREME's ``run_classify.py`` / ``run_tag.py``: AdamW (ε 1e-8, no weight decay on biases
and LayerNorm weights), linear warmup and decay, gradient clipping at 1.0, one shuffle per epoch.
The checkpoint kept is the one with the best dev score of the selection languages, measured after
every epoch or every ``eval_every`` steps; test scores are those of that checkpoint.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from objkit.contract.errors import UserError
from objkit.eval.tasks import Split, TaskData

IGNORE = -100


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int = 5
    lr: float = 2e-5
    batch_size: int = 32
    eval_batch_size: int = 128
    max_length: int = 128
    warmup: float = 0.0          # < 1: a fraction of the optimizer steps; >= 1: a number of steps
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    adam_eps: float = 1e-8
    eval_every: int | None = None  # steps between dev evaluations; None: after every epoch
    select: Literal["train-dev", "avg-dev"] = "train-dev"
    frozen: bool = False
    dropout: float | None = None  # None: the model config's
    max_steps: int | None = None  # a step budget: training stops there (the schedule decays to it)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- metrics
def _chunk_parts(label: str) -> tuple[str, str]:
    if label == "O":
        return "O", ""
    prefix, _, kind = label.partition("-")
    return (prefix, kind) if kind else (label[0], label[1:] or "_")


def entity_spans(sequences: Sequence[Sequence[str]]) -> set[tuple[str, int, int]]:
    """Entities (type, first, last) of IOB/IOBES sequences, chunked as conlleval and seqeval's
    default mode do: an ``I-`` after ``O`` or after another type opens an entity, an entity
    closes when the type changes or a ``B``/``S``/``O`` follows. Positions run over the corpus."""
    spans: set[tuple[str, int, int]] = set()
    pos = 0
    for seq in sequences:
        open_kind, open_start, prev = "", -1, "O"
        for i, label in enumerate([*seq, "O"]):
            tag, kind = _chunk_parts(label)
            closes = open_start >= 0 and (
                prev in ("E", "S") or tag in ("B", "S", "O") or kind != open_kind)
            if closes:
                spans.add((open_kind, pos + open_start, pos + i - 1))
                open_start = -1
            opens = tag in ("B", "S") or (tag in ("I", "E") and (open_start < 0 or prev in ("E", "S")))
            if tag != "O" and (opens or kind != open_kind):
                open_kind, open_start = kind, i
            prev = tag
        pos += len(seq) + 1
    return spans


def entity_f1(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> float:
    """Micro entity-level F1 in percent (seqeval's ``f1_score`` in its default mode)."""
    g, p = entity_spans(gold), entity_spans(pred)
    hit = len(g & p)
    if hit == 0:
        return 0.0
    precision, recall = hit / len(p), hit / len(g)
    return 100.0 * 2 * precision * recall / (precision + recall)


def score(metric: str, gold: list[Any], pred: list[Any]) -> float:
    """Accuracy (percent) over examples or words, or entity F1 (percent) over sentences of tags."""
    if metric == "f1":
        return entity_f1(gold, pred)
    if gold and isinstance(gold[0], list):
        gold = [t for seq in gold for t in seq]
        pred = [t for seq in pred for t in seq]
    return 100.0 * sum(a == b for a, b in zip(gold, pred)) / max(1, len(gold))


# ----------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    """One split as token ids: ``input_ids`` and ``token_type_ids`` per example; ``targets`` is
    the label id (sentence tasks) or a per-token list with -100 off first subwords (token tasks);
    ``n_words``: words per sentence (token tasks; words cut by truncation get no prediction)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    targets: list[Any]
    n_words: list[int] | None = None


def encode_split(split: Split, tokenizer: Any, label_ids: dict[str, int], max_length: int) -> Encoded:
    if split.labels:
        pairs = split.texts
        if len(pairs[0]) == 2:
            enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length)
        else:
            enc = tokenizer([a for (a,) in pairs], truncation=True, max_length=max_length)
        return Encoded(enc["input_ids"], enc.get("token_type_ids"), [label_ids[x] for x in split.labels])
    # token level: each word tokenized on its own (XTREME), label on its first subword
    vocab = sorted({w for words in split.words for w in words})
    pieces = dict(zip(vocab, tokenizer(vocab, add_special_tokens=False)["input_ids"]))
    unk = tokenizer.unk_token_id
    prefix, suffix = special_frame(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    ids_all, targets_all, n_words = [], [], []
    for words, tags in zip(split.words, split.tags):
        ids: list[int] = []
        targets: list[int] = []
        kept = 0
        for word, tag in zip(words, tags):
            sub = pieces[word] or [unk]
            if len(ids) + len(sub) > budget:
                break
            ids += sub
            targets += [label_ids[tag]] + [IGNORE] * (len(sub) - 1)
            kept += 1
        ids_all.append(prefix + ids + suffix)
        targets_all.append([IGNORE] * len(prefix) + targets + [IGNORE] * len(suffix))
        n_words.append(kept)
    return Encoded(ids_all, None, targets_all, n_words)


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one sequence (``<s>`` / ``</s>``
    for XLM-R, ``[CLS]`` / ``[SEP]`` for BERT), read off an encoded word."""
    enc = tokenizer("a", add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["special_tokens_mask"]
    content = [i for i, m in enumerate(mask) if not m]
    if not content:
        raise UserError("the tokenizer encodes the word 'a' as special tokens only")
    return ids[: content[0]], ids[content[-1] + 1 :]


def _batches(enc: Encoded, order: Sequence[int], size: int, pad_id: int, device: torch.device,
             targets: bool) -> Any:
    for start in range(0, len(order), size):
        idx = list(order[start : start + size])
        width = max(len(enc.input_ids[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        types = torch.zeros((len(idx), width), dtype=torch.long) if enc.token_type_ids is not None else None
        labels = torch.full((len(idx), width), IGNORE, dtype=torch.long) if enc.n_words is not None else None
        for row, i in enumerate(idx):
            n = len(enc.input_ids[i])
            ids[row, :n] = torch.tensor(enc.input_ids[i])
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = torch.tensor(enc.token_type_ids[i])  # type: ignore[index]
            if labels is not None:
                labels[row, :n] = torch.tensor(enc.targets[i])
        batch = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if types is not None:
            batch["token_type_ids"] = types.to(device)
        if targets:
            batch["labels"] = (labels if labels is not None else
                               torch.tensor([enc.targets[i] for i in idx])).to(device)
        yield idx, batch


# ----------------------------------------------------------------------------- train / predict
def predict(model: nn.Module, enc: Encoded, settings: FinetuneSettings, pad_id: int,
            names: list[str]) -> list[Any]:
    """Predicted labels, in the split's order: one per example, or one per word that survived
    truncation (see :func:`_pad`). Batches are sorted by length; only predictions are kept
    (memory is bounded by the batch)."""
    device = next(model.parameters()).device
    order = sorted(range(len(enc.input_ids)), key=lambda i: len(enc.input_ids[i]), reverse=True)
    out: list[Any] = [None] * len(order)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), _autocast(device):
            for idx, batch in _batches(enc, order, settings.eval_batch_size, pad_id, device, targets=False):
                best = model(**batch).logits.argmax(-1).cpu()
                for row, i in enumerate(idx):
                    if enc.n_words is None:
                        out[i] = names[int(best[row])]
                        continue
                    first = [p for p, t in enumerate(enc.targets[i]) if t != IGNORE]
                    out[i] = [names[int(best[row, p])] for p in first]
    finally:
        model.train(was_training)
    return out


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _optimizer(model: nn.Module, settings: FinetuneSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, eps=settings.adam_eps)


@dataclass
class SeedResult:
    seed: int
    test: dict[str, float]
    dev: dict[str, float]
    best_step: int
    steps: int
    curve: list[dict[str, float]]   # dev selection score at every evaluation
    seconds: float


def finetune(
    build_model: Callable[[], nn.Module],
    data: TaskData,
    encoded: dict[tuple[str, str], Encoded],
    settings: FinetuneSettings,
    seed: int,
    pad_id: int,
    progress: Any = None,
) -> SeedResult:
    """Train one seed and score it. ``build_model`` is called after seeding, so the fresh head is
    the seed's (as in XTREME, where ``set_seed`` precedes ``from_pretrained``)."""
    from transformers import get_linear_schedule_with_warmup, set_seed

    started = time.perf_counter()
    set_seed(seed)
    model = build_model()
    device = next(model.parameters()).device
    names = data.label_names
    fallback = "O" if "O" in names and data.spec.metric == "f1" else None
    metric = data.spec.metric
    train = [encoded[("train", x)] for x in data.train_langs]
    merged = Encoded([i for e in train for i in e.input_ids],
                     None if train[0].token_type_ids is None else [t for e in train for t in e.token_type_ids or []],
                     [t for e in train for t in e.targets],
                     None if train[0].n_words is None else [n for e in train for n in e.n_words or []])
    per_epoch = math.ceil(len(merged.input_ids) / settings.batch_size)
    total = per_epoch * settings.epochs
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    warmup = int(settings.warmup * total) if settings.warmup < 1 else int(settings.warmup)
    optimizer = _optimizer(model, settings)
    schedule = get_linear_schedule_with_warmup(optimizer, warmup, total)
    generator = torch.Generator().manual_seed(seed)
    selection = data.train_langs if settings.select == "train-dev" else data.languages

    def dev_scores(langs: list[str]) -> dict[str, float]:
        out = {}
        for lang in langs:
            gold = data.splits[("dev", lang)]
            pred = predict(model, encoded[("dev", lang)], settings, pad_id, names)
            out[lang] = score(metric, gold.labels or _pad(gold.tags, pred, fallback), pred)
        return out

    best, best_step, best_state, curve, step = -math.inf, 0, None, [], 0
    model.train()
    bar = progress(total) if progress else None
    for _epoch in range(settings.epochs):
        order = torch.randperm(len(merged.input_ids), generator=generator).tolist()
        for _idx, batch in _batches(merged, order, settings.batch_size, pad_id, device, targets=True):
            with _autocast(device):
                loss = model(**batch).loss
            loss.backward()
            if settings.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if bar is not None:
                bar.update(1)
            due = step % settings.eval_every == 0 if settings.eval_every else step % per_epoch == 0
            if due or step == total:
                dev = dev_scores(selection)
                value = sum(dev.values()) / len(dev)
                curve.append({"step": step, "score": value})
                if value > best:
                    best, best_step = value, step
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            if step == total:
                break
        if step == total:
            break
    if bar is not None:
        bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    test, dev = {}, dev_scores(data.languages)
    for lang in data.languages:
        gold = data.splits[("test", lang)]
        pred = predict(model, encoded[("test", lang)], settings, pad_id, names)
        test[lang] = score(metric, gold.labels or _pad(gold.tags, pred, fallback), pred)
    return SeedResult(seed, test, dev, best_step, total, curve, time.perf_counter() - started)


def _pad(gold: list[list[str]], pred: list[Any], fallback: str | None) -> list[list[str]]:
    """Extend each predicted sentence to its gold length in place and return the gold sentences:
    words cut by truncation get ``fallback`` (``O`` for NER; None otherwise, which is never right),
    so every gold word is scored."""
    for g, p in zip(gold, pred):
        p.extend([fallback] * (len(g) - len(p)))  # type: ignore[list-item]
    return gold


def majority_scores(data: TaskData) -> dict[str, float]:
    """Every test unit labelled with the most frequent training label (ties: first by name)."""
    top = min(data.train_counts, key=lambda x: (-data.train_counts[x], x))
    out = {}
    for lang in data.languages:
        gold = data.splits[("test", lang)]
        pred: list[Any] = [top] * len(gold.labels) if gold.labels else [[top] * len(t) for t in gold.tags]
        out[lang] = score(data.spec.metric, gold.labels or gold.tags, pred)
    return out


def tqdm_factory(desc: str) -> Callable[[int], Any] | None:
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return lambda total: tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)
