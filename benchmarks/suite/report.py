"""The suite's outputs: the printed table, the Markdown table (``--markdown``) and publishing a
table between markers in the README and the docs site's pages (``--update-docs``; the other
benchmark scripts publish their tables with :func:`publish` too)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from suite.common import ROOT
from suite import runner


def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 0.995 or value == 0 else f"{value:.3f}"


def markdown(doc: dict[str, Any], command: str) -> str:
    info = doc["machine"]
    lines = [
        "| benchmark | ratio | goal | pass | details |",
        "|---|---:|---:|:---:|---|",
    ]
    details = doc["details"]
    for key, goal in doc["goals"].items():
        lines.append(f"| `{key}` | {fmt(goal['value'])} | {goal['goal']} | {'yes' if goal['pass'] else '**no**'} "
                     f"| {describe(key, details[key])} |")
    notes = []
    xl = details.get("xlco_step_ratio")
    if xl:
        t = xl["truncation"]
        notes.append(f"XLCO truncation at layer {xl['model']['xlco_layer']}: InfoXLM step {fmt(t['truncated_over_full_depth'])}× "
                     f"the full-depth step (saves {100 * t['saving']:.0f}%); full depth would be "
                     f"{fmt(t['full_depth_step_ratio'])}× MLM+TLM")
    mem = details.get("memory")
    if mem and "peak_rss_bytes" in mem:
        notes.append(f"peak RSS of one `{mem['recipe']}` step (B=1, L={doc['settings']['memory_length']}, random "
                     f"weights, CPU): {mem['peak_rss_bytes'] / 2**30:.1f} GiB vs analytic "
                     f"{mem['estimate_total_bytes'] / 2**30:.1f} GiB + {mem['rss_after_imports_bytes'] / 2**30:.1f} GiB "
                     f"process baseline = {mem['estimate_plus_baseline_bytes'] / 2**30:.1f} GiB")
    mfu_ = details.get("mfu")
    if mfu_:
        parts = [f"{name.replace('_', ' ')} {100 * v['mfu']:.0f}%" for name, v in mfu_.items() if isinstance(v, dict)]
        notes.append(f"MFU vs measured fp32 matmul peak {mfu_['peak_gflops']:.0f} GFLOP/s: " + ", ".join(parts))
    text = "\n".join(lines) + "\n\n"
    text += "".join(f"- {n}\n" for n in notes)
    text += (f"\nMachine: {info['cpu']}, {info['cpus']} CPU cores ({info['torch_threads']} torch threads), "
             f"{'GPU ' + info['cuda'] if info['cuda'] else 'no GPU'}; torch {info['torch']}, transformers "
             f"{info['transformers']}; {info['date']}; `{command}` took {doc['wall_seconds'] / 60:.1f} min "
             f"(load average at start {info['load_average_at_start'][0]:.1f}).\n")
    if info.get("warning"):
        text += f"\nWarning: {info['warning']}.\n"
    return text


def describe(key: str, d: dict[str, Any]) -> str:
    """The details column of row ``key``'s line in the table (the row's own ``describe``)."""
    return runner.ROWS[key].describe(d)


# Where measured tables are published: the README and the docs site's pages. A table goes into
# every one of these files that holds its markers (the transfer table is in the README and in
# docs/results/transfer.md; the others in docs/results/).
PUBLISHED = ("README.md", "docs/**/*.md")
# A data folder given by path (absolute, or ../ beside the checkout) is shown as data/NAME/...:
# the layout `objkit data get NAME -o data/NAME` writes. Published pages never name a path of
# the machine a table was measured on.
_DATA_PATH = re.compile(r"""(?<![\w.:/-])(?:\.\./|/)(?:[^\s`'"()]*/)?data/""")


def public_paths(text: str) -> str:
    """``text`` with every path into a ``.../data/`` folder shown from ``data/`` on."""
    return _DATA_PATH.sub("data/", text)


def update_readme(path: Path, table: str, begin: str, end: str) -> None:
    """Put ``table`` (its data paths as :func:`public_paths` shows them) between the markers
    ``begin`` and ``end`` of ``path``."""
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin!r} ... {end!r} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{begin}\n{public_paths(table).strip()}\n{end}{tail}", encoding="utf-8")
    tmp.replace(path)


def publish(table: str, begin: str, end: str, root: Path | None = None) -> list[Path]:
    """Put ``table`` between ``begin`` and ``end`` in every published page holding both markers
    (:data:`PUBLISHED`, under ``root``: the checkout); returns those pages."""
    root = ROOT if root is None else root
    pages = sorted({p for pattern in PUBLISHED for p in root.glob(pattern)})
    hits = [p for p in pages if begin in (text := p.read_text(encoding="utf-8")) and end in text]
    if not hits:
        raise SystemExit(f"no page of {root} ({', '.join(PUBLISHED)}) holds the markers {begin!r} ... {end!r}")
    for page in hits:
        update_readme(page, table, begin, end)
        print(f"wrote the table into {page.relative_to(root)}", file=sys.stderr)
    return hits


def print_table(doc: dict[str, Any]) -> None:
    print()
    print(f"{'benchmark':24s} {'ratio':>8s} {'goal':>8s}  pass")
    for key, goal in doc["goals"].items():
        print(f"{key:24s} {goal['value']:8.3f} {goal['goal']:>8s}  {'yes' if goal['pass'] else 'NO'}")
    print(f"wall time {doc['wall_seconds'] / 60:.1f} min")
