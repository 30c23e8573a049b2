"""How each data set's files are made in the temporary output folder: release files downloaded and
laid out (checked as they arrive), hub datasets converted from ``datasets`` rows. Each builder
returns lines for SOURCE.md (what was done beyond copying, e.g. pairs skipped)."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from objkit.contract.errors import UserError, first_line
from objkit.data.fetch.catalog import NTREX_FILES, Spec
from objkit.data.fetch.download import Downloader
from objkit.data.fetch.tatoeba_sha256 import TATOEBA_SHA256

SIB200_HEADER = "index_id\tcategory\ttext"


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(line + "\n")


def _lines(text: str) -> list[str]:
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


# ----------------------------------------------------------------------------- release files
def build_sib200(dl: Downloader, langs: tuple[str, ...], out: Path) -> list[str]:
    for lang in langs:
        for split in ("train", "dev", "test"):
            rel = f"{lang}/{split}.tsv"
            text = dl.text(rel)
            if _lines(text)[:1] != [SIB200_HEADER]:
                raise UserError(f"{dl.spec.url()}/{rel}: line 1 is not the SIB-200 header {SIB200_HEADER!r}")
            _write_lines(out / lang / f"{split}.tsv", _lines(text))
    return []


def build_tatoeba(dl: Downloader, langs: tuple[str, ...], out: Path) -> list[str]:
    for lang in langs:
        sums = TATOEBA_SHA256.get(lang, (None, None))
        for side, sha in zip((lang, "eng"), sums):
            name = f"tatoeba.{lang}-eng.{side}"
            dl.fetch(name, out / name, sha)
        a, b = (len((out / f"tatoeba.{lang}-eng.{s}").read_bytes().splitlines()) for s in (lang, "eng"))
        if a != b:
            raise UserError(f"{dl.spec.url()}/tatoeba.{lang}-eng.*: {a} and {b} lines (expected line-aligned files)")
    return ["sha256 of every file checked against the values recorded in objkit (LASER commit fec5c7d6)."
            if all(x in TATOEBA_SHA256 for x in langs) else "Files without a recorded sha256 were not checked."]


def build_alignments(dl: Downloader, langs: tuple[str, ...], out: Path) -> list[str]:
    archive = dl.fetch("alignment-test-sets.tar.gz", out / ".downloads" / "alignment-test-sets.tar.gz")
    url = f"{dl.spec.url()}/alignment-test-sets.tar.gz"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for pair in langs:
                l1, l2 = pair.split("-")
                for name in (f"test.{l1}", f"test.{l2}", "alignv2.txt", "align.txt"):
                    hits = [m for n, m in members.items() if n.endswith(f"{pair}/{name}")]
                    if not hits:
                        if name == "align.txt":
                            continue
                        raise UserError(f"{url}: no {pair}/{name} in the archive (expected PAIR/test.L1, "
                                        f"PAIR/test.L2, PAIR/alignv2.txt)")
                    data = tar.extractfile(hits[0]).read()  # type: ignore[union-attr]  # read, never extracted
                    data.decode("utf-8")  # checked, written as published (the gold files have CRLF line ends)
                    (out / pair).mkdir(parents=True, exist_ok=True)
                    (out / pair / name).write_bytes(data)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{url}: not a readable .tar.gz ({first_line(err)})") from None
    except UnicodeDecodeError:
        raise UserError(f"{url}: a file of the archive is not UTF-8 text") from None
    return []


def build_ntrex(dl: Downloader, langs: tuple[str, ...], out: Path) -> list[str]:
    counts = {}
    for lang in langs:
        lines = _lines(dl.text(NTREX_FILES[lang]))
        counts[lang] = len(lines)
        _write_lines(out / f"ntrex.{lang}", lines)
    if len(set(counts.values())) > 1:
        raise UserError(f"{dl.spec.url()}: NTREX files differ in line count ({counts}); expected line-aligned files")
    return ["Line ends normalised to LF (the release uses CRLF); file names ntrex.LANG instead of "
            "newstest2019-{src,ref}.XXX.txt."]


NEWSTEST_INDEXES = ("datasets/statmt/wmt_newstest.tsv", "datasets/statmt/wmt_newstest_multiling.tsv")


def build_newstest(dl: Downloader, langs: tuple[str, ...], out: Path) -> list[str]:
    """Every test set of en->XX and XX->en the OPUS-MT-testsets indexes list, de-duplicated pairs."""
    sets: dict[str, list[tuple[str, str]]] = {lang: [] for lang in langs}  # lang -> [(en file, xx file)]
    for index in NEWSTEST_INDEXES:
        for row in _lines(dl.text(index)):
            cols = row.split("\t")
            if len(cols) < 8 or "eng" not in (cols[0], cols[1]) or cols[0] == cols[1]:
                continue
            a, b = cols[6], cols[7]
            en, xx = (a, b) if cols[0] == "eng" else (b, a)
            lang = xx.rsplit(".", 1)[-1]
            if lang in sets and (en, xx) not in sets[lang]:
                sets[lang].append((en, xx))
    missing = [x for x in langs if not sets[x]]
    if missing:
        raise UserError(f"--langs {missing[0]}: no WMT news test set with English in {dl.spec.url()}/"
                        f"{NEWSTEST_INDEXES[0]} (use two-letter codes as the files do, e.g. de,fr,cs,es,ru)")
    notes = []
    for lang, files in sets.items():
        pairs: dict[tuple[str, str], None] = {}
        for en_file, xx_file in files:
            en, xx = _lines(dl.text(en_file)), _lines(dl.text(xx_file))
            if len(en) != len(xx):
                notes.append(f"Skipped {xx_file} ({len(en)} English lines, {len(xx)} {lang}).")
                continue
            pairs.update(((e.strip(), x.strip()), None) for e, x in zip(en, xx) if e.strip() and x.strip())
        _write_lines(out / f"train.en-{lang}.en", (e for e, _ in pairs))
        _write_lines(out / f"train.en-{lang}.{lang}", (x for _, x in pairs))
        notes.append(f"en-{lang}: {len(pairs)} pairs from {len(files)} test sets.")
    return notes


RELEASE_BUILDERS: dict[str, Callable[[Downloader, tuple[str, ...], Path], list[str]]] = {
    "sib200": build_sib200, "tatoeba": build_tatoeba, "alignments": build_alignments,
    "ntrex": build_ntrex, "newstest": build_newstest,
}


# ----------------------------------------------------------------------------- hub datasets
def _cell(value: object) -> str:
    return " ".join(str(value).split()) if any(c in str(value) for c in "\t\n\r") else str(value)


def _namer(dataset: Any, column: str) -> Callable[[object], str]:
    feature = dataset.features[column]
    names = getattr(getattr(feature, "feature", feature), "names", None)
    return lambda v: names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else str(v)


def write_hub_split(spec: Spec, dataset: Any, path: Path, where: str) -> int:
    """One split of a hub dataset in objkit's layout; returns the number of examples written."""
    sentence = spec.name in ("xnli", "pawsx")
    columns = {"xnli": ("premise", "hypothesis", "label"), "pawsx": ("sentence1", "sentence2", "label"),
               "panx": ("tokens", "ner_tags"), "udpos": ("tokens", "pos_tags")}[spec.name]
    missing = [c for c in columns if c not in dataset.features]
    if missing:
        raise UserError(f"{where}: no column {missing[0]!r} (columns: {', '.join(dataset.features)})")
    name = _namer(dataset, columns[-1])
    count = 0

    def rows() -> Iterable[str]:
        nonlocal count
        for example in dataset:
            if sentence:
                label = example[columns[2]]
                if isinstance(label, int) and label < 0:  # unlabelled rows (-1) carry nothing to learn or score
                    continue
                yield f"{_cell(example[columns[0]])}\t{_cell(example[columns[1]])}\t{name(label)}"
            else:
                kept = [(_cell(w), name(t)) for w, t in zip(example[columns[0]], example[columns[1]]) if str(w).strip()]
                if not kept:
                    continue
                yield from (f"{w}\t{t}" for w, t in kept)
                yield ""
            count += 1

    _write_lines(path, rows())
    return count


def load_hub_splits(spec: Spec, lang: str, source: Path | None) -> dict[str, Any]:
    """``{objkit split: datasets.Dataset}`` of one language: from the hub through ``datasets``
    (its cache and offline settings apply), or from a ``save_to_disk`` copy at ``source/CONFIG``."""
    import datasets

    config = spec.hub_config(lang)
    if source is not None:
        where = source / config
        try:
            loaded = datasets.load_from_disk(str(where))
        except (FileNotFoundError, ValueError, OSError) as err:
            raise UserError(f"--from {where}: cannot load a saved dataset ({first_line(err)[:200]}); expected "
                            f"DatasetDict.save_to_disk output of {spec.hub_id} configuration {config!r}") from None
    else:
        from objkit.blocks.hub import hub_offline, hub_unreachable_reason

        offline = hub_unreachable_reason()
        try:
            with hub_offline(offline is not None):
                loaded = datasets.load_dataset(spec.hub_id, config)
        except Exception as err:  # noqa: BLE001 - datasets raises many kinds; each is one line here
            why = f"the hub is unreachable ({offline}) and it is not cached" if offline else first_line(err)[:200]
            raise UserError(
                f"cannot load {spec.hub_id} configuration {config!r} from https://huggingface.co/datasets/"
                f"{spec.hub_id} ({why}); to place it by hand, on a machine with access run "
                f"`python -c \"import datasets; datasets.load_dataset('{spec.hub_id}', '{config}')"
                f".save_to_disk('COPY/{config}')\"` and then `objkit data get {spec.name} --from COPY -o DIR`"
            ) from None
    where = f"{source / config if source else spec.hub_id}[{config}]"
    if not isinstance(loaded, datasets.DatasetDict):
        raise UserError(f"{where}: expected a DatasetDict with splits {', '.join(spec.splits.values())}")
    return {ours: loaded[theirs] for ours, theirs in spec.splits.items() if theirs in loaded}


def build_hub(spec: Spec, langs: tuple[str, ...], out: Path, source: Path | None, translate_train: bool) -> list[str]:
    notes = []
    for lang in langs:
        splits = load_hub_splits(spec, lang, source)
        if not splits.get("test"):
            raise UserError(f"{spec.hub_id}[{spec.hub_config(lang)}]: no {spec.splits['test']} split")
        written = []
        for split, data in splits.items():
            if split == "train" and spec.english_train_only and lang != "en" and not translate_train:
                continue
            n = write_hub_split(spec, data, out / f"{split}-{lang}.tsv", f"{spec.hub_id}[{spec.hub_config(lang)}/{split}]")
            written.append(f"{split} {n}")
        notes.append(f"{lang}: {', '.join(written)} examples (from configuration {spec.hub_config(lang)}).")
    return notes


def source_md(spec: Spec, langs: tuple[str, ...], source: str, notes: list[str]) -> str:
    """SOURCE.md written beside the files: where they come from, the licence, how to cite them."""
    lines = [f"# {spec.title}", "", f"- Fetched by `objkit data get {spec.name}` from: {source}",
             f"- Original source: {spec.source}", f"- Licence: {spec.licence}", f"- Cite: {spec.citation}",
             f"- Languages: {', '.join(langs)}", f"- Layout: {spec.layout}", f"- Read by: `{spec.reads}`", ""]
    if notes:
        lines += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    lines += ["The licence is the data owners'; objkit only downloads and lays out the files.", ""]
    return "\n".join(lines)


def get(spec: Spec, dest: Path, langs: tuple[str, ...], source: Path | None = None,
        translate_train: bool = False) -> list[str]:
    """Fetch ``spec`` into ``dest`` (all or nothing) and return the notes written to SOURCE.md."""
    from objkit.data.fetch.download import staged, write_marker

    with staged(dest, spec.name) as work:
        if spec.kind == "hub":
            where = str(source) if source is not None else f"https://huggingface.co/datasets/{spec.hub_id}"
            notes = build_hub(spec, langs, work, source, translate_train)
        else:
            if source is not None:
                raise UserError(f"--from: {spec.name} is fetched from release files, not a saved hub dataset "
                                f"(set {spec.url_variable} to download from a mirror)")
            where = spec.url()
            dl = Downloader(spec, dest, work)
            try:
                notes = RELEASE_BUILDERS[spec.name](dl, langs, work)
            finally:
                dl.close()
        shutil.rmtree(work / ".downloads", ignore_errors=True)
        (work / "SOURCE.md").write_text(source_md(spec, langs, where, notes), encoding="utf-8")
        write_marker(work, spec, langs, where)
    return notes
