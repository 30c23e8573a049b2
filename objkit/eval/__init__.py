"""Evaluation: cross-lingual sentence retrieval (XTREME/InfoXLM protocol, exported here), zero-shot
cross-lingual transfer (:mod:`objkit.eval.transfer`, XTREME's fine-tuning protocol) and word
alignment (:mod:`objkit.eval.align`, SimAlign's protocol).

The ``objkit eval`` click group lives in :mod:`objkit.eval.cli` (imported on demand).
"""

from objkit.eval.retrieval import (
    default_layer,
    encode_sentences,
    evaluate_pair,
    load_encoder,
    read_aligned,
    retrieval_scores,
    top1_accuracy,
)
from objkit.eval.tatoeba import (
    INFOXLM14,
    XTREME36,
    discover_languages,
    evaluate_tatoeba,
    format_table,
    select_languages,
)

__all__ = [
    "INFOXLM14",
    "XTREME36",
    "default_layer",
    "discover_languages",
    "encode_sentences",
    "evaluate_pair",
    "evaluate_tatoeba",
    "format_table",
    "load_encoder",
    "read_aligned",
    "retrieval_scores",
    "select_languages",
    "top1_accuracy",
]
