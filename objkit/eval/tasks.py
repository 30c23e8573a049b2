"""Fine-tuning tasks for zero-shot cross-lingual transfer: layouts, readers and input checks.

Each task is a set of splits (train, dev, test) per language, read from a directory:

* ``xnli``, ``pawsx``: XTREME's layout ``DIR/{split}-{lang}.tsv``, rows ``text_a<TAB>text_b<TAB>label``
  (a header row ``sentence1 sentence2 label`` or similar is skipped). XNLI's ``contradictory``
  is read as ``contradiction``, as XTREME's processor does.
* ``sib200``: SIB-200's layout ``DIR/{lang}/{split}.tsv``, header ``index_id<TAB>category<TAB>text``.
* ``panx`` (WikiANN NER) and ``udpos`` (Universal Dependencies POS): XTREME's token-level layout
  ``DIR/{split}-{lang}.tsv``, one ``token<TAB>label`` a line, a blank line between sentences.
* ``custom``: either layout, ``.tsv`` or ``.jsonl``, with a column mapping
  (``text=COL[,text_pair=COL],label=COL``; COL is a JSON key, a TSV header name, or a 0-based
  column index for a TSV without header).

Every problem with the files is a one-line :class:`UserError` naming the file (and line).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from objkit.contract.errors import UserError, first_line, one_line

SPLITS = ("train", "dev", "test")
Level = Literal["sentence", "token"]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    level: Level
    metric: Literal["accuracy", "f1"]
    layout: Literal["xtreme", "sib200", "any"]
    about: str


TASKS: dict[str, TaskSpec] = {
    "xnli": TaskSpec("xnli", "sentence", "accuracy", "xtreme", "natural language inference (3 labels)"),
    "pawsx": TaskSpec("pawsx", "sentence", "accuracy", "xtreme", "paraphrase identification (2 labels)"),
    "sib200": TaskSpec("sib200", "sentence", "accuracy", "sib200", "topic classification (7 labels)"),
    "panx": TaskSpec("panx", "token", "f1", "xtreme", "named entities (IOB2), entity-level F1 as seqeval"),
    "udpos": TaskSpec("udpos", "token", "accuracy", "xtreme", "part of speech (UPOS), accuracy over words"),
    "custom": TaskSpec("custom", "sentence", "accuracy", "any", "one or two texts and a label (--columns)"),
}


@dataclass
class Split:
    """One split of one language. Sentence tasks fill ``texts`` (one or two strings per example)
    and ``labels``; token tasks fill ``words`` and ``tags`` (one label per word)."""

    path: Path
    labels: list[str] = field(default_factory=list)
    texts: list[tuple[str, ...]] = field(default_factory=list)
    words: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # 1-based file line of each label

    def __len__(self) -> int:
        return len(self.labels) if self.labels else len(self.tags)

    def label_lines(self) -> list[tuple[str, int]]:
        """(label, file line) of every label, for counting and error messages."""
        flat = self.labels or [t for seq in self.tags for t in seq]
        return list(zip(flat, self.lines))


@dataclass(frozen=True)
class Columns:
    text: str
    label: str
    text_pair: str | None = None

    @classmethod
    def parse(cls, spec: str) -> Columns:
        parts = {}
        for item in (x.strip() for x in spec.split(",") if x.strip()):
            key, sep, value = item.partition("=")
            if not sep or key not in ("text", "text_pair", "label") or not value:
                raise UserError(f"--columns {spec!r}: expected text=COL[,text_pair=COL],label=COL "
                                f"(got {item!r})")
            parts[key] = value
        if "text" not in parts or "label" not in parts:
            raise UserError(f"--columns {spec!r}: text= and label= are required")
        return cls(parts["text"], parts["label"], parts.get("text_pair"))


DEFAULT_COLUMNS = {"xnli": Columns("0", "2", "1"), "pawsx": Columns("0", "2", "1"),
                   "sib200": Columns("text", "category")}


# ----------------------------------------------------------------------------- languages
def _base_language(code: str) -> str | None:
    """ISO language of a code such as ``de``, ``deu``, ``deu_Latn`` or ``zh-Hans`` (babel's CLDR data)."""
    from babel import Locale, UnknownLocaleError

    head = code.replace("-", "_").split("_")[0]
    try:
        return Locale.parse(head).language
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def match_languages(requested: list[str], available: list[str], what: str) -> list[str]:
    """Map each requested code onto an available one: equal, or the same ISO language
    (``en`` finds ``eng_Latn``). Unknown or ambiguous codes are a one-line error."""
    out = []
    for code in requested:
        if code in available:
            out.append(code)
            continue
        base = _base_language(code)
        hits = [a for a in available if base is not None and _base_language(a) == base]
        if len(hits) != 1:
            found = f"{', '.join(hits)} all match" if hits else "not found"
            raise UserError(f"{what} {code!r}: {found} (available: {', '.join(available) or 'none'})")
        out.append(hits[0])
    return out


def discover_languages(spec: TaskSpec, data_dir: Path) -> list[str]:
    """Languages with at least one split in ``data_dir`` (sorted); a missing split of one of them
    is reported when it is needed."""
    if not data_dir.is_dir():
        raise UserError(f"--data-dir {data_dir}: not a directory")
    found = set()
    for ext in ("tsv", "jsonl") if spec.layout == "any" else ("tsv",):
        for split in SPLITS:
            if spec.layout in ("xtreme", "any"):
                found |= {p.name[len(split) + 1 : -len(ext) - 1] for p in data_dir.glob(f"{split}-*.{ext}")}
            if spec.layout in ("sib200", "any"):
                found |= {p.parent.name for p in data_dir.glob(f"*/{split}.{ext}")}
    if not found:
        expect = {"xtreme": "{train,dev,test}-LANG.tsv", "sib200": "LANG/{train,dev,test}.tsv",
                  "any": "{train,dev,test}-LANG.tsv|jsonl or LANG/{train,dev,test}.tsv|jsonl"}[spec.layout]
        raise UserError(f"--data-dir {data_dir}: no {spec.name} data found (expected {expect})")
    return sorted(found)


def split_path(spec: TaskSpec, data_dir: Path, split: str, lang: str) -> Path:
    candidates = []
    for ext in ("tsv", "jsonl") if spec.layout == "any" else ("tsv",):
        if spec.layout in ("xtreme", "any"):
            candidates.append(data_dir / f"{split}-{lang}.{ext}")
        if spec.layout in ("sib200", "any"):
            candidates.append(data_dir / lang / f"{split}.{ext}")
    for path in candidates:
        if path.is_file():
            return path
    raise UserError(f"{candidates[0]}: no such file (task {spec.name} needs the {split} split of {lang!r}; "
                    f"expected {' or '.join(str(c) for c in candidates)})")


# ----------------------------------------------------------------------------- readers
def _lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        from objkit.data.sources import utf8_problem

        line, problem = utf8_problem(data, err, 0)
        raise UserError(f"{path}: line {line}: {problem} (expected UTF-8 text)") from None
    lines = [x[:-1] if x.endswith("\r") else x for x in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{path} is empty (expected one example a line)")
    return lines


def _column(row: list[str] | dict, col: str, header: list[str] | None, path: Path, lineno: int) -> str:
    if isinstance(row, dict):
        if col not in row:
            raise UserError(f"{path}: line {lineno}: no key {col!r} (keys: {', '.join(map(str, row))})")
        return str(row[col])
    index = header.index(col) if header is not None else int(col)
    return row[index]


def read_sentence_split(spec: TaskSpec, path: Path, columns: Columns) -> Split:
    lines = _lines(path)
    split = Split(path)
    names = [c for c in (columns.text, columns.text_pair, columns.label) if c is not None]
    jsonl = path.suffix == ".jsonl"
    header: list[str] | None = None
    start = 0
    if not jsonl:
        by_index = all(c.isdigit() for c in names)
        first = lines[0].split("\t")
        if not by_index:
            missing = [c for c in names if c not in first]
            if missing:
                raise UserError(f"{path}: line 1: header has no column {missing[0]!r} "
                                f"(header: {', '.join(first)}; expected {', '.join(names)})")
            header, start = first, 1
        elif spec.name in ("xnli", "pawsx") and first[-1].strip().lower() in ("label", "gold_label"):
            start = 1  # a header row
        width = len(header) if header is not None else max(int(c) for c in names) + 1
        if spec.name in ("xnli", "pawsx"):
            width = 3
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line.strip():
            raise UserError(f"{path}: line {lineno} is empty (expected one example a line)")
        if jsonl:
            try:
                row: list[str] | dict = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}: line {lineno}: expected a JSON object")
        else:
            row = line.split("\t")
            if len(row) != width and (header is not None or spec.name in ("xnli", "pawsx") or len(row) < width):
                raise UserError(f"{path}: line {lineno}: {len(row)} tab-separated columns, expected {width}"
                                + (f" ({', '.join(header)})" if header else
                                   " (text_a, text_b, label)" if spec.name in ("xnli", "pawsx") else ""))
        text = _column(row, columns.text, header, path, lineno)
        pair = _column(row, columns.text_pair, header, path, lineno) if columns.text_pair else None
        label = _column(row, columns.label, header, path, lineno).strip()
        if spec.name == "xnli" and label == "contradictory":
            label = "contradiction"
        if not label:
            raise UserError(f"{path}: line {lineno}: empty label")
        split.texts.append((text,) if pair is None else (text, pair))
        split.labels.append(label)
        split.lines.append(lineno)
    if not split.labels:
        raise UserError(f"{path} has a header but no examples")
    return split


def read_token_split(path: Path) -> Split:
    split = Split(path)
    words: list[str] = []
    tags: list[str] = []
    lines = _lines(path)
    for lineno, line in enumerate([*lines, ""], start=1):
        if not line.strip():
            if words:
                split.words.append(words)
                split.tags.append(tags)
                words, tags = [], []
            continue
        row = line.split("\t")
        if len(row) != 2 or not row[0] or not row[1].strip():
            raise UserError(f"{path}: line {lineno}: {one_line(line[:40])!r}: expected token<TAB>label "
                            f"(got {len(row)} tab-separated columns)")
        words.append(row[0])
        tags.append(row[1].strip())
        split.lines.append(lineno)
    return split


# ----------------------------------------------------------------------------- hub datasets
# task -> (hub id, config name for a language, {split: hub split}, text columns, label column)
HUB: dict[str, tuple[str, str, dict[str, str], tuple[str, ...], str]] = {
    "xnli": ("xnli", "{lang}", {"train": "train", "dev": "validation", "test": "test"},
             ("premise", "hypothesis"), "label"),
    "pawsx": ("paws-x", "{lang}", {"train": "train", "dev": "validation", "test": "test"},
              ("sentence1", "sentence2"), "label"),
    "sib200": ("Davlan/sib200", "{lang}", {"train": "train", "dev": "validation", "test": "test"},
               ("text",), "category"),
    "panx": ("xtreme", "PAN-X.{lang}", {"train": "train", "dev": "validation", "test": "test"},
             ("tokens",), "ner_tags"),
}


def split_from_dataset(dataset: object, where: str, texts: tuple[str, ...], label: str, level: Level) -> Split:
    """A :class:`Split` from a ``datasets.Dataset`` (class-label ids become their names)."""
    features = dataset.features  # type: ignore[attr-defined]
    missing = [c for c in (*texts, label) if c not in features]
    if missing:
        raise UserError(f"{where}: no column {missing[0]!r} (columns: {', '.join(features)})")
    feature = features[label]
    names = getattr(getattr(feature, "feature", feature), "names", None)

    def name(value: object) -> str:
        return names[value] if names is not None and isinstance(value, int) else str(value)

    split = Split(Path(where))
    for row, example in enumerate(dataset, start=1):  # type: ignore[attr-defined]
        if level == "token":
            split.words.append([str(w) for w in example[texts[0]]])
            split.tags.append([name(t) for t in example[label]])
            split.lines.extend([row] * len(example[label]))
        else:
            split.texts.append(tuple(str(example[c]) for c in texts))
            split.labels.append(name(example[label]))
            split.lines.append(row)
    if not len(split):
        raise UserError(f"{where} is empty")
    return split


def load_hub_task(spec: TaskSpec, hub_id: str, langs: list[str] | None, train_langs: list[str],
                  setting: str, train_limit: int | None = None) -> TaskData:
    """The task from the hub through ``datasets`` (or its local cache when the hub is unreachable):
    ``--data-dir xnli`` with ``--langs``. One line when it is neither reachable nor cached."""
    import datasets

    from objkit.blocks.hub import hub_offline, hub_unreachable_reason, meant_as_local_path

    if meant_as_local_path(hub_id):
        raise UserError(f"--data-dir {hub_id}: no such directory")
    if spec.name not in HUB:
        raise UserError(f"--data-dir {hub_id}: not a directory, and task {spec.name} has no hub loader "
                        f"(hub loaders: {', '.join(HUB)})")
    _, config, names, texts, label = HUB[spec.name]
    if not langs:
        raise UserError(f"--data-dir {hub_id}: a hub dataset needs --langs (its configurations are languages)")
    train = list(langs) if setting == "translate-train-all" else list(train_langs)
    languages = [*train, *[x for x in langs if x not in train]]
    offline = hub_unreachable_reason()
    splits: dict[tuple[str, str], Split] = {}
    for split, lang in [("train", x) for x in train] + [(s, x) for x in languages for s in ("dev", "test")]:
        where = f"{hub_id}[{config.format(lang=lang)}/{names[split]}]"
        try:
            with hub_offline(offline is not None):
                data = datasets.load_dataset(hub_id, config.format(lang=lang), split=names[split])
        except Exception as err:  # datasets raises many kinds; each is one line here
            why = f"the hub is unreachable ({offline}) and it is not cached" if offline else first_line(err)[:200]
            raise UserError(f"--data-dir {where}: cannot load ({why})") from None
        if split == "train" and train_limit is not None:
            data = data.select(range(min(train_limit, len(data))))
        splits[(split, lang)] = split_from_dataset(data, where, texts, label, spec.level)
    return _checked(spec, languages, train, splits)


@dataclass
class TaskData:
    spec: TaskSpec
    languages: list[str]                     # test languages, in order
    train_langs: list[str]
    splits: dict[tuple[str, str], Split]     # (split, lang) -> data
    label_names: list[str]                   # sorted: label id i is label_names[i]
    train_counts: dict[str, int]             # label -> count over the training splits

    def train(self) -> list[Split]:
        return [self.splits[("train", x)] for x in self.train_langs]


def load_task(spec: TaskSpec, data_dir: Path, langs: list[str] | None, train_langs: list[str],
              setting: str, columns: Columns | None = None, train_limit: int | None = None) -> TaskData:
    """Read every split the run needs and check it: present, non-empty, well-formed, and no dev/test
    label that the training data lacks."""
    available = discover_languages(spec, data_dir)
    languages = match_languages(langs, available, "--langs") if langs else available
    if setting == "translate-train-all":
        train = list(languages)
    else:
        train = match_languages(train_langs, available, "--train-langs")
        languages = [*train, *[x for x in languages if x not in train]]
    cols = columns or DEFAULT_COLUMNS.get(spec.name)
    if spec.level == "sentence" and cols is None:
        raise UserError(f"--task {spec.name}: --columns text=COL[,text_pair=COL],label=COL is required")
    splits: dict[tuple[str, str], Split] = {}
    needed = [("train", x) for x in train] + [(s, x) for x in languages for s in ("dev", "test")]
    for split, lang in needed:
        path = split_path(spec, data_dir, split, lang)
        data = read_token_split(path) if spec.level == "token" else read_sentence_split(spec, path, cols)
        if split == "train" and train_limit is not None:
            data.labels, data.texts = data.labels[:train_limit], data.texts[:train_limit]
            data.words, data.tags = data.words[:train_limit], data.tags[:train_limit]
            data.lines = data.lines[: len(data.labels) or sum(len(t) for t in data.tags)]
        splits[(split, lang)] = data
    return _checked(spec, languages, train, splits)


def _checked(spec: TaskSpec, languages: list[str], train: list[str], splits: dict[tuple[str, str], Split]) -> TaskData:
    counts: Counter[str] = Counter()
    for x in train:
        counts.update(label for label, _ in splits[("train", x)].label_lines())
    for (split, lang), data in splits.items():
        for label, lineno in data.label_lines():
            if label not in counts:
                raise UserError(f"{data.path}: line {lineno}: label {one_line(label)!r} does not occur in the "
                                f"training data (labels: {', '.join(sorted(counts))})")
    return TaskData(spec, languages, train, splits, sorted(counts), dict(counts))
