"""The tiny from-scratch model and embedded CLDR data that the end-to-end tests train.

Each test module appends its own objectives and ``[train]`` table to :func:`tiny_recipe`.
"""

from __future__ import annotations


def tiny_recipe(name: str | None = None, *, dropout: float | None = None, parallel: bool = True) -> str:
    """``[model]`` (2 layers, hidden 32, a 600-piece tokenizer trained on the data) and the
    ``mono`` (and ``parallel``) CLDR sources in en/de/fr, as recipe text."""
    lines = [f'name = "{name}"'] if name else []
    lines += [
        "[model]", "hidden_size = 32", "num_layers = 2", "num_heads = 4", "intermediate_size = 64",
        "max_length = 32", "tokenizer = { vocab_size = 600 }",
    ]
    lines += [f"dropout = {dropout}"] if dropout is not None else []
    lines += ["[data.mono]", 'type = "cldr"', 'kind = "text"', 'locales = ["en", "de", "fr"]']
    if parallel:
        lines += ["[data.parallel]", 'type = "cldr"', 'kind = "parallel"', 'locales = ["en", "de", "fr"]']
    return "\n".join(lines) + "\n"
