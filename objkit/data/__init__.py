"""The data layer: read recipe data sources into tokenized rows, pack them, sample them.

* :func:`load_source` / :func:`load_source_groups`: files (or the embedded CLDR corpus) ->
  tokenized ``datasets`` rows with a ``group`` column.
* :func:`iter_source_texts`: raw sentences, for tokenizer training.
* :func:`pack_sentences`: fairseq "complete" blocks ``<s> a </s> b </s>``.
* :func:`sampling_probabilities`, :class:`ExampleStream`: α-sampling over groups, resumable.
"""

from objkit.data.cldr import cldr_dataset, language_pairs
from objkit.data.packing import pack_batch, pack_sentences
from objkit.data.sampling import ExampleStream, sampling_probabilities
from objkit.data.sources import (
    expand,
    iter_source_texts,
    load_source,
    load_source_groups,
    source_group_sizes,
    source_groups,
)

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
