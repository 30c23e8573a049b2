"""Evaluation: cross-lingual sentence retrieval (XTREME/InfoXLM protocol), Tatoeba, zero-shot
cross-lingual transfer (:mod:`objkit.eval.transfer`, XTREME's fine-tuning protocol) and word
alignment (:mod:`objkit.eval.align`, SimAlign's protocol).

The names in ``__all__`` are public building blocks for evaluator plugins (plugin API 1.6,
docs/plugin-api.md): a plugin may import them ``from objkit.eval import ...``, as the built-in
evaluator plugins do. The ``objkit eval`` click group lives in :mod:`objkit.eval.cli` (imported on
demand).
"""

import importlib
from typing import Any

# Imported on first use (PEP 562): `objkit eval ... --help` imports objkit.eval.cli, and so this
# package, without loading torch.
_LAZY = {
    **dict.fromkeys(["default_layer", "encode_sentences", "evaluate_pair", "load_encoder", "read_aligned",
                     "retrieval_scores", "top1_accuracy"], "objkit.eval.retrieval"),
    **dict.fromkeys(["INFOXLM14", "XTREME36", "discover_languages", "evaluate_tatoeba", "format_table",
                     "select_languages"], "objkit.eval.tatoeba"),
    # plugin API 1.6: what the built-in evaluator plugins are made of
    **dict.fromkeys(["POOLINGS", "check_layer", "read_lines"], "objkit.eval.retrieval"),
    **dict.fromkeys(["align_corpus", "parse_layers", "read_corpus"], "objkit.eval.align"),
    "TransferDuringTraining": "objkit.eval.transfer",
    # plugin API 1.7: the options sentence-embedding evaluators share
    "SentenceEmbeddingConfig": "objkit.eval.embedding",
    **dict.fromkeys(["align_command", "retrieval_command", "tatoeba_command", "transfer_command"], "objkit.eval.cli"),
    **dict.fromkeys(["markdown_table", "model_specs", "run_evaluator"], "objkit.eval.generic"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'objkit.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "INFOXLM14",
    "POOLINGS",
    "SentenceEmbeddingConfig",
    "TransferDuringTraining",
    "XTREME36",
    "align_command",
    "align_corpus",
    "check_layer",
    "markdown_table",
    "model_specs",
    "parse_layers",
    "read_corpus",
    "read_lines",
    "retrieval_command",
    "run_evaluator",
    "tatoeba_command",
    "transfer_command",
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
