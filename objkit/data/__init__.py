"""The data layer: read recipe data sources into tokenized rows, pack them, sample them.

* :func:`load_source` / :func:`load_source_groups`: a source plugin's parts (files, or rows
  the plugin makes) -> tokenized ``datasets`` rows with a ``group`` column.
* :func:`iter_source_texts`: raw sentences, for tokenizer training.
* :func:`pack_sentences`: fairseq "complete" blocks ``<s> a </s> b </s>``; :func:`sentence_rows`:
  one sentence a row, ``<s> a </s>`` (fairseq's ``eos`` break mode).
* :func:`sampling_probabilities`, :class:`ExampleStream`: α-sampling over groups, resumable.
"""

import importlib
from typing import Any

# Imported on first use (PEP 562), as objkit and objkit.eval do: a module of this layer that
# needs no torch (objkit data, objkit tokenizer --help, ownership, runlock) does not load it.
_LAZY = {
    **dict.fromkeys(["pack_batch", "pack_sentences", "sentence_rows"], "objkit.data.packing"),
    **dict.fromkeys(["ExampleStream", "sampling_probabilities"], "objkit.data.sampling"),
    **dict.fromkeys(["expand", "iter_source_texts", "load_source", "load_source_groups", "source_group_sizes",
                     "source_groups"], "objkit.data.sources"),
    # the ``cldr`` source plugin's (objkit_plugins.source_cldr) since plugin API 1.6
    **dict.fromkeys(["cldr_dataset", "language_pairs"], "objkit_plugins.source_cldr"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        if not _LAZY[name].startswith("objkit_plugins"):
            globals()[name] = value
        return value
    raise AttributeError(f"module 'objkit.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ExampleStream",
    "cldr_dataset",
    "expand",
    "iter_source_texts",
    "language_pairs",
    "load_source",
    "load_source_groups",
    "pack_batch",
    "pack_sentences",
    "sentence_rows",
    "sampling_probabilities",
    "source_group_sizes",
    "source_groups",
]
