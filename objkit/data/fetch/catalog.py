"""The datasets ``objkit data get`` fetches: where each comes from, its licence and citation,
the layout written, and which objkit command reads it.

Release files are downloaded from ``base_url`` (pinned to a commit where the source is a git
repository); the environment variable ``OBJKIT_DATA_URL_<NAME>`` (``NAME`` upper-cased) replaces
it, e.g. a mirror, a local copy served over HTTP, or a test server. Hub datasets are loaded
through ``datasets.load_dataset`` (its cache and ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``
apply) or, with ``--from PATH``, from ``save_to_disk`` copies.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Literal

from objkit.contract.errors import UserError
from objkit.data.fetch.tatoeba_sha256 import TATOEBA_SHA256

#: The 15 XNLI languages, as SIB-200 (FLORES-200) names them.
SIB200_XNLI15 = (
    "eng_Latn", "arb_Arab", "bul_Cyrl", "deu_Latn", "ell_Grek", "spa_Latn", "fra_Latn", "hin_Deva",
    "rus_Cyrl", "swh_Latn", "tha_Thai", "tur_Latn", "urd_Arab", "vie_Latn", "zho_Hans",
)  # fmt: skip
XNLI15 = ("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
PAWSX7 = ("en", "de", "es", "fr", "ja", "ko", "zh")
#: XTREME's 40 PAN-X (WikiANN) languages.
PANX40 = (
    "af", "ar", "bg", "bn", "de", "el", "en", "es", "et", "eu", "fa", "fi", "fr", "he", "hi", "hu", "id", "it",
    "ja", "jv", "ka", "kk", "ko", "ml", "mr", "ms", "my", "nl", "pt", "ru", "sw", "ta", "te", "th", "tl", "tr",
    "ur", "vi", "yo", "zh",
)  # fmt: skip
#: XTREME's UD-POS languages: code -> the name in the hub configuration ``udpos.NAME``.
UDPOS_NAMES = {
    "af": "Afrikaans", "ar": "Arabic", "eu": "Basque", "bg": "Bulgarian", "nl": "Dutch", "en": "English",
    "et": "Estonian", "fi": "Finnish", "fr": "French", "de": "German", "el": "Greek", "he": "Hebrew",
    "hi": "Hindi", "hu": "Hungarian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "kk": "Kazakh",
    "ko": "Korean", "zh": "Chinese", "mr": "Marathi", "fa": "Persian", "pt": "Portuguese", "ru": "Russian",
    "es": "Spanish", "tl": "Tagalog", "ta": "Tamil", "te": "Telugu", "th": "Thai", "tr": "Turkish",
    "ur": "Urdu", "vi": "Vietnamese", "yo": "Yoruba",
}  # fmt: skip
ALIGN_PAIRS = ("de-en", "en-fr", "ro-en", "en-hi")
#: NTREX-128 file of each XNLI language (English is the source side).
NTREX_FILES = {
    "en": "newstest2019-src.eng.txt", "ar": "newstest2019-ref.arb.txt", "bg": "newstest2019-ref.bul.txt",
    "de": "newstest2019-ref.deu.txt", "el": "newstest2019-ref.ell.txt", "es": "newstest2019-ref.spa.txt",
    "fr": "newstest2019-ref.fra.txt", "hi": "newstest2019-ref.hin.txt", "ru": "newstest2019-ref.rus.txt",
    "sw": "newstest2019-ref.swa.txt", "th": "newstest2019-ref.tha.txt", "tr": "newstest2019-ref.tur.txt",
    "ur": "newstest2019-ref.urd.txt", "vi": "newstest2019-ref.vie.txt", "zh": "newstest2019-ref.zho-CN.txt",
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    name: str
    title: str
    kind: Literal["release", "hub"]
    about: str                      # one line for ``objkit data list``
    source: str                     # where a person finds it (repository or hub page)
    licence: str
    citation: str
    layout: str                     # what is written into DIR
    reads: str                      # the objkit command that reads it
    languages: tuple[str, ...]      # fetched when --langs is not given
    known: tuple[str, ...] | None = None  # every valid language (None: any the source has)
    base_url: str = ""              # release files: where they are downloaded from
    by_hand: str = ""               # release files: what to download and where to put it, by hand
    hub_id: str = ""                # hub datasets: ``datasets`` id
    config: str = "{lang}"          # hub configuration of a language
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"})
    english_train_only: bool = False  # hub: only English has a human-made train split (others: --translate-train)

    @property
    def url_variable(self) -> str:
        return f"OBJKIT_DATA_URL_{self.name.upper().replace('-', '_')}"

    def url(self) -> str:
        """The base URL in use: ``OBJKIT_DATA_URL_<NAME>`` when set, else the source's."""
        return (os.environ.get(self.url_variable) or self.base_url).rstrip("/")

    def hub_config(self, lang: str) -> str:
        return self.config.format(lang=UDPOS_NAMES.get(lang, lang) if self.name == "udpos" else lang)


CATALOG: dict[str, Spec] = {s.name: s for s in (
    Spec(
        "sib200", "SIB-200", "release", "topic classification, 7 labels, 205 languages (default: the 15 XNLI ones)",
        source="https://github.com/dadelani/sib-200 (data/annotated)",
        licence="CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/ (the FLORES-200 sentences and the "
                "annotations); repository code Apache-2.0",
        citation="Adelani et al. (2024). SIB-200: A Simple, Inclusive, and Big Evaluation Dataset for Topic "
                 "Classification in 200+ Languages and Dialects. EACL 2024.",
        layout="LANG/{train,dev,test}.tsv, header index_id<TAB>category<TAB>text (701/99/204 rows)",
        reads="objkit eval transfer MODEL --task sib200 --data-dir DIR",
        languages=SIB200_XNLI15,
        base_url="https://raw.githubusercontent.com/dadelani/sib-200/e7a172159963fd28c65f1ea53a0cea931bd08719/"
                 "data/annotated",
        by_hand="copy data/annotated/LANG/{train,dev,test}.tsv of github.com/dadelani/sib-200 to DIR/LANG/",
    ),
    Spec(
        "tatoeba", "Tatoeba (LASER test set)", "release", "sentence retrieval, 112 languages paired with English",
        source="https://github.com/facebookresearch/LASER (data/tatoeba/v1)",
        licence="CC BY 2.0 FR, https://creativecommons.org/licenses/by/2.0/fr/ (Tatoeba sentences, tatoeba.org); "
                "the LASER repository is BSD",
        citation="Artetxe and Schwenk (2019). Massively Multilingual Sentence Embeddings for Zero-Shot "
                 "Cross-Lingual Transfer and Beyond. TACL 7.",
        layout="tatoeba.XXX-eng.XXX and tatoeba.XXX-eng.eng, line-aligned (ISO 639-3 codes, up to 1,000 pairs)",
        reads="objkit eval tatoeba MODEL --data-dir DIR --langs xtreme36",
        languages=tuple(TATOEBA_SHA256), known=tuple(TATOEBA_SHA256),
        base_url="https://raw.githubusercontent.com/facebookresearch/LASER/fec5c7d63daa2bea9d127e8252b10e87278586c0/"
                 "data/tatoeba/v1",
        by_hand="copy data/tatoeba/v1/tatoeba.XXX-eng.{XXX,eng} of github.com/facebookresearch/LASER to DIR/",
    ),
    Spec(
        "alignments", "Gold word alignments", "release", "word alignment (AER): de-en, en-fr, ro-en, en-hi",
        source="https://github.com/CZWin32768/XLM-Align (word_aligner/alignment-test-sets.tar.gz)",
        licence="research use under each gold set's original terms (de-en: Vilar et al. 2006, Europarl; "
                "en-fr: WPT 2003 Hansards; ro-en, en-hi: WPT 2005); the XLM-Align repository is MIT",
        citation="Vilar, Popovic and Ney (2006), IWSLT; Mihalcea and Pedersen (2003), WPT 2003; Martin, Mihalcea "
                 "and Pedersen (2005), WPT 2005; as packaged by Chi et al. (2021), XLM-Align, ACL 2021.",
        layout="PAIR/test.L1, PAIR/test.L2 (whitespace-tokenised, line-aligned), PAIR/alignv2.txt "
               "('SENT I J S|P', 1-based), PAIR/align.txt",
        reads="objkit eval align MODEL --src DIR/de-en/test.de --tgt DIR/de-en/test.en --gold DIR/de-en/alignv2.txt",
        languages=ALIGN_PAIRS, known=ALIGN_PAIRS,
        base_url="https://raw.githubusercontent.com/CZWin32768/XLM-Align/905c56b7ec6d4ac4562644d19db12d67001b2684/"
                 "word_aligner",
        by_hand="extract word_aligner/alignment-test-sets.tar.gz of github.com/CZWin32768/XLM-Align and copy its "
                "PAIR/ folders to DIR/",
    ),
    Spec(
        "ntrex", "NTREX-128", "release", "parallel news text, 1,997 sentences, 15 XNLI languages (pretraining)",
        source="https://github.com/MicrosoftTranslator/NTREX (NTREX-128)",
        licence="CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/",
        citation="Federmann, Kocmi and Xin (2022). NTREX-128 - News Test References for MT Evaluation of 128 "
                 "Languages. SUMEval 2022.",
        layout="ntrex.LANG, line-aligned (line k of every file translates line k of ntrex.en)",
        reads="a recipe's [data.parallel] pairs, e.g. { src = \"DIR/ntrex.en\", tgt = \"DIR/ntrex.de\", "
              "src_lang = \"en\", tgt_lang = \"de\" }",
        languages=tuple(NTREX_FILES), known=tuple(NTREX_FILES),
        base_url="https://raw.githubusercontent.com/MicrosoftTranslator/NTREX/main/NTREX-128",
        by_hand="copy NTREX-128/newstest2019-{src.eng,ref.XXX}.txt of github.com/MicrosoftTranslator/NTREX to "
                "DIR/ntrex.LANG",
    ),
    Spec(
        "newstest", "WMT newstest 2008-2020", "release", "parallel news text en-XX (pretraining), default de,fr,cs,es,ru",
        source="https://github.com/Helsinki-NLP/OPUS-MT-testsets (datasets/statmt/wmt_newstest)",
        licence="WMT test sets, distributed by the WMT organisers for research use",
        citation="Barrault et al. (2020). Findings of the 2020 Conference on Machine Translation (WMT20), and the "
                 "findings of WMT 2008-2019; collected by Tiedemann and Thottingal (2020), OPUS-MT, EAMT 2020.",
        layout="train.en-XX.en and train.en-XX.XX, line-aligned, de-duplicated pairs of every newstest, "
               "newssyscomb and newsdiscusstest set of both directions",
        reads="a recipe's [data.parallel] pairs, e.g. { src = \"DIR/train.en-de.en\", tgt = \"DIR/train.en-de.de\", "
              "src_lang = \"en\", tgt_lang = \"de\" }",
        languages=("de", "fr", "cs", "es", "ru"),
        base_url="https://raw.githubusercontent.com/Helsinki-NLP/OPUS-MT-testsets/master",
        by_hand="write each pair's sentences line-aligned to DIR/train.en-XX.en and DIR/train.en-XX.XX (files listed "
                "in datasets/statmt/wmt_newstest*.tsv of github.com/Helsinki-NLP/OPUS-MT-testsets)",
    ),
    Spec(
        "xnli", "XNLI", "hub", "natural language inference, 3 labels, 15 languages",
        source="https://huggingface.co/datasets/facebook/xnli",
        licence="CC BY-NC 4.0, https://creativecommons.org/licenses/by-nc/4.0/",
        citation="Conneau et al. (2018). XNLI: Evaluating Cross-lingual Sentence Representations. EMNLP 2018.",
        layout="{train,dev,test}-LANG.tsv, rows premise<TAB>hypothesis<TAB>label (train: English only unless "
               "--translate-train)",
        reads="objkit eval transfer MODEL --task xnli --data-dir DIR",
        languages=XNLI15, known=XNLI15, hub_id="facebook/xnli", english_train_only=True,
    ),
    Spec(
        "pawsx", "PAWS-X", "hub", "paraphrase identification, 2 labels, 7 languages",
        source="https://huggingface.co/datasets/google-research-datasets/paws-x",
        licence="free to use for any purpose; acknowledgement of Google LLC as the source appreciated "
                "(see the dataset card)",
        citation="Yang et al. (2019). PAWS-X: A Cross-lingual Adversarial Dataset for Paraphrase Identification. "
                 "EMNLP 2019.",
        layout="{train,dev,test}-LANG.tsv, rows sentence1<TAB>sentence2<TAB>label (0/1; train: English only unless "
               "--translate-train)",
        reads="objkit eval transfer MODEL --task pawsx --data-dir DIR",
        languages=PAWSX7, known=PAWSX7, hub_id="google-research-datasets/paws-x", english_train_only=True,
    ),
    Spec(
        "panx", "PAN-X (WikiANN, XTREME split)", "hub", "named entities (PER/ORG/LOC, IOB2), XTREME's 40 languages",
        source="https://huggingface.co/datasets/google/xtreme (configurations PAN-X.LANG)",
        licence="as on the google/xtreme dataset card (WikiANN is derived from Wikipedia, CC BY-SA)",
        citation="Pan et al. (2017). Cross-lingual Name Tagging and Linking for 282 Languages. ACL 2017; "
                 "Hu et al. (2020). XTREME. ICML 2020.",
        layout="{train,dev,test}-LANG.tsv, one token<TAB>tag a line, a blank line between sentences",
        reads="objkit eval transfer MODEL --task panx --data-dir DIR",
        languages=PANX40, known=PANX40, hub_id="google/xtreme", config="PAN-X.{lang}",
    ),
    Spec(
        "udpos", "UD-POS (Universal Dependencies v2.5, XTREME split)", "hub",
        "part of speech (17 UPOS tags), XTREME's 33 languages",
        source="https://huggingface.co/datasets/google/xtreme (configurations udpos.LANGUAGE)",
        licence="each Universal Dependencies treebank's own licence (mostly CC BY-SA / CC BY-NC-SA; see "
                "universaldependencies.org)",
        citation="Zeman et al. (2019). Universal Dependencies 2.5. LINDAT/CLARIAH-CZ; Hu et al. (2020). XTREME. "
                 "ICML 2020.",
        layout="{train,dev,test}-LANG.tsv (the splits the language has), one token<TAB>tag a line, a blank line "
               "between sentences",
        reads="objkit eval transfer MODEL --task udpos --data-dir DIR",
        languages=tuple(UDPOS_NAMES), known=tuple(UDPOS_NAMES), hub_id="google/xtreme", config="udpos.{lang}",
    ),
)}


def spec(name: str) -> Spec:
    if name not in CATALOG:
        close = difflib.get_close_matches(name, list(CATALOG), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"data set {name!r}: unknown; {hint}known: {', '.join(CATALOG)} (see `objkit data list`)")
    return CATALOG[name]


def select_languages(s: Spec, langs: str | None) -> tuple[str, ...]:
    """``--langs`` (comma-separated; ``all`` for every known one) checked against the spec."""
    if langs is None:
        return s.languages
    if langs.strip().lower() == "all":
        if s.known is None:
            raise UserError(f"--langs all: {s.name} has no fixed list of languages here; name them "
                            f"(e.g. {','.join(s.languages[:3])}; see {s.source})")
        return s.known
    chosen = tuple(dict.fromkeys(x.strip() for x in langs.split(",") if x.strip()))
    if not chosen:
        raise UserError(f"--langs {langs!r}: expected comma-separated codes such as {','.join(s.languages[:3])}")
    unknown = [x for x in chosen if s.known is not None and x not in s.known]
    if unknown:
        raise UserError(f"--langs {unknown[0]}: {s.name} has no such language (it has: {', '.join(s.known or ())})")
    return chosen
