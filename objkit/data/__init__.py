"""The data layer: read recipe data sources into tokenized rows, pack them, sample them.

* :func:`load_source` / :func:`load_source_groups`: a source plugin's parts (files, or rows
  the plugin makes) -> tokenized ``datasets`` rows with a ``group`` column.
* :func:`iter_source_texts`: raw sentences, for tokenizer training.
* :func:`pack_sentences`: fairseq "complete" blocks ``<s> a </s> b </s>``; :func:`sentence_rows`:
  one sentence a row, ``<s> a </s>`` (fairseq's ``eos`` break mode).
* :func:`sampling_probabilities`, :class:`ExampleStream`: α-sampling over groups, resumable.
"""

from typing import Any

from objkit.data.packing import pack_batch, pack_sentences, sentence_rows
from objkit.data.sampling import ExampleStream, sampling_probabilities
from objkit.data.sources import (
    expand,
    iter_source_texts,
    load_source,
    load_source_groups,
    source_group_sizes,
    source_groups,
)



def __getattr__(name: str) -> Any:
    """``cldr_dataset`` and ``language_pairs``: the ``cldr`` source plugin's (``objkit_plugins.source_cldr``)."""
    if name in ("cldr_dataset", "language_pairs"):
        import importlib

        return getattr(importlib.import_module("objkit_plugins.source_cldr"), name)
    raise AttributeError(f"module 'objkit.data' has no attribute {name!r}")


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
    "sampling_probabilities",
    "source_group_sizes",
    "source_groups",
]
