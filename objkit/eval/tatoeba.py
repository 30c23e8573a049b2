"""Tatoeba cross-lingual sentence retrieval (LASER test set, as used by XTREME and InfoXLM).

Layout (LASER ``data/tatoeba/v1``): ``DIR/tatoeba.XXX-eng.XXX`` and ``DIR/tatoeba.XXX-eng.eng``,
line-aligned, ``XXX`` an ISO 639-3 code. Every language is scored both ways (xx->en and
en->xx, top-1 accuracy in percent) and averaged over the selected languages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from objkit.contract.errors import UserError
from objkit.eval.retrieval import Pooling, encode_sentences, read_aligned, retrieval_scores
from objkit.contract.registry import did_you_mean

#: XTREME's 36 Tatoeba languages: ISO 639-1 (as XTREME names them) -> LASER ISO 639-3 code.
XTREME36_ISO: dict[str, str] = {
    "af": "afr", "ar": "ara", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra",
    "he": "heb", "hi": "hin", "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn",
    "jv": "jav", "ka": "kat", "kk": "kaz", "ko": "kor", "ml": "mal", "mr": "mar",
    "nl": "nld", "pt": "por", "ru": "rus", "sw": "swh", "ta": "tam", "te": "tel",
    "th": "tha", "tl": "tgl", "tr": "tur", "ur": "urd", "vi": "vie", "zh": "cmn",
}  # fmt: skip
XTREME36: tuple[str, ...] = tuple(XTREME36_ISO.values())
#: The 14 non-English XNLI languages, InfoXLM's Tatoeba subset.
INFOXLM14: tuple[str, ...] = (
    "ara", "bul", "deu", "ell", "spa", "fra", "hin", "rus", "swh", "tha", "tur", "urd", "vie", "cmn",
)  # fmt: skip
LANGUAGE_SETS: dict[str, tuple[str, ...]] = {"xtreme36": XTREME36, "infoxlm14": INFOXLM14}


def pair_files(data_dir: str | Path, lang: str) -> tuple[Path, Path]:
    """``(tatoeba.LANG-eng.LANG, tatoeba.LANG-eng.eng)`` inside ``data_dir``."""
    d = Path(data_dir)
    return d / f"tatoeba.{lang}-eng.{lang}", d / f"tatoeba.{lang}-eng.eng"


def discover_languages(data_dir: str | Path) -> list[str]:
    """Sorted codes of the languages with both files present in ``data_dir``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise UserError(f"{data_dir}: not a directory (expected the Tatoeba tatoeba.XXX-eng.* files)")
    langs = set()
    for f in d.glob("tatoeba.*-eng.*"):
        stem, _, side = f.name[len("tatoeba.") :].partition("-eng.")
        lang = stem if side in (stem, "eng") else ""
        if lang and all(p.is_file() for p in pair_files(d, lang)):
            langs.add(lang)
    return sorted(langs)


def select_languages(spec: str, available: list[str]) -> list[str]:
    """Resolve ``xtreme36`` | ``infoxlm14`` | ``all`` | ``deu,fra`` against ``available``.

    Codes are LASER ISO 639-3; XTREME's two-letter codes (``de``) are accepted too. Unknown
    codes and named-set members missing from the directory raise :class:`UserError`.
    """
    key = spec.strip().lower()
    if not available:
        raise UserError("no Tatoeba language found (expected tatoeba.XXX-eng.XXX + tatoeba.XXX-eng.eng)")
    if key == "all":
        return sorted(available)
    if key in LANGUAGE_SETS:
        members = LANGUAGE_SETS[key]
        missing = [c for c in members if c not in available]
        if missing:
            raise UserError(
                f"--langs {key}: {len(missing)} of its {len(members)} languages are missing "
                f"from the data directory: {', '.join(missing)}"
            )
        return list(members)
    chosen: list[str] = []
    for raw in key.split(","):
        code = raw.strip()
        if not code:
            continue
        code = XTREME36_ISO.get(code, code)
        if code not in available:
            names = ", ".join(["all", *LANGUAGE_SETS])
            raise UserError(
                f'--langs: unknown Tatoeba language "{raw.strip()}" (sets: {names}); '
                + did_you_mean(code, list(available))
            )
        if code not in chosen:
            chosen.append(code)
    if not chosen:
        raise UserError(f'--langs "{spec}": no language given')
    return chosen


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def evaluate_tatoeba(
    model: nn.Module,
    tokenizer: Any,
    data_dir: str | Path,
    langs: list[str],
    *,
    layer: int,
    pooling: Pooling = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score each language of ``langs`` both ways.

    Returns ``{"languages": {lang: {"n", "xx2en", "en2xx", "mean"}}, "average": {"xx2en",
    "en2xx", "mean"}, "layer", "pooling"}``; accuracies in percent, averages unweighted
    over languages (as in XTREME/InfoXLM).
    """
    if not langs:
        raise UserError("no Tatoeba language selected")
    from tqdm.auto import tqdm

    kw: dict[str, Any] = dict(
        layer=layer, pooling=pooling, batch_size=batch_size, max_length=max_length, device=device
    )
    per: dict[str, dict[str, float | int]] = {}
    for lang in tqdm(langs, desc="tatoeba", unit="lang", file=sys.stderr, disable=not progress):
        xx_file, en_file = pair_files(data_dir, lang)
        xx, en = read_aligned(xx_file, en_file)
        if not xx:
            raise UserError(f"{xx_file}: empty")
        s = retrieval_scores(
            encode_sentences(model, tokenizer, xx, **kw), encode_sentences(model, tokenizer, en, **kw)
        )
        per[lang] = {"n": len(xx), "xx2en": s["src2tgt"], "en2xx": s["tgt2src"], "mean": s["mean"]}
    avg = {k: _mean([float(v[k]) for v in per.values()]) for k in ("xx2en", "en2xx", "mean")}
    return {"languages": per, "average": avg, "layer": layer, "pooling": pooling}


def format_table(result: dict[str, Any]) -> str:
    """Plain-text table: language, n, xx→en, en→xx, mean; then the ``average`` row."""
    head = ("language", "n", "xx→en", "en→xx", "mean")
    rows = [
        (lang, str(r["n"]), f"{r['xx2en']:.2f}", f"{r['en2xx']:.2f}", f"{r['mean']:.2f}")
        for lang, r in result["languages"].items()
    ]
    a = result["average"]
    total = sum(int(r["n"]) for r in result["languages"].values())
    rows.append(("average", str(total), f"{a['xx2en']:.2f}", f"{a['en2xx']:.2f}", f"{a['mean']:.2f}"))
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]

    def fmt(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))

    rule = "-" * len(fmt(head))
    return "\n".join([fmt(head), rule, *(fmt(r) for r in rows[:-1]), rule, fmt(rows[-1])])
