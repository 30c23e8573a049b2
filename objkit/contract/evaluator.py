"""The ``evaluator`` plugin kind (plugin API 1.6): one evaluation behind ``objkit eval NAME`` and
``[eval.NAME]`` tables of a recipe (evaluation during training).

An evaluator is built with its validated ``Config`` (the ``[eval.NAME]`` table's keys but
``plugin`` and ``every``, or the options of ``objkit eval NAME``) when a run starts or the
command runs: read and check its data there, so a bad file stops a run before training. Then
:meth:`Evaluator.evaluate` scores one model, given as an :class:`EvalContext`:

* under ``objkit eval NAME MODEL...``: a transformers model and tokenizer loaded from each MODEL;
* during training: the encoder being trained with its full weights, gathered under any parallel
  strategy (:meth:`objkit.FitState.full_weights`), on every rank or on rank 0 only as
  :attr:`Evaluator.weights` declares.

It returns ``{metric: float}``; during training each is logged as ``eval/NAME/metric``
(``metrics.jsonl``, the progress bar, every callback's ``on_eval``).

``objkit eval NAME`` builds a command from ``Config``: one ``--option`` per field (``max_lines``
is ``--max-lines``; booleans are ``--x/--no-x`` flags; lists and tables take a TOML value), the
MODEL arguments, ``--device``, ``--json`` and ``--markdown``. An evaluator may write its own command
instead (:meth:`Evaluator.command`), as the built-in ``retrieval``, ``tatoeba``, ``transfer`` and
``align`` do to keep their command lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from objkit.contract.interfaces import Plugin, PluginConfig, WorldInfo

if TYPE_CHECKING:
    import click
    import torch
    from torch import nn

Weights = Literal["every_rank", "main"]


@dataclass
class EvalContext:
    """One model to evaluate, and where it comes from. (API 1.6)"""

    model: nn.Module
    """Full weights, in eval mode for the call: a transformers ``AutoModel`` (``objkit eval``) or
    the :class:`objkit.Encoder` being trained (``forward(input_ids, attention_mask,
    up_to_layer=L)`` gives the hidden states 0..L). Treat it as read-only: during training it is
    (under DDP, FSDP on every rank) the model being trained. :func:`objkit.eval.encode_sentences`
    takes either."""
    tokenizer: Any
    device: torch.device
    name: str
    """The model's NAME (``objkit eval``: NAME=PATH, or the path) or the ``[eval.NAME]`` table."""
    max_length: int | None = None
    """Tokens per sequence the run trains with (``[model] max_length``); None under ``objkit eval``."""
    step: int | None = None
    """Completed optimizer steps (training), None under ``objkit eval``."""
    total_steps: int | None = None
    run_dir: Path | None = None
    """The run directory (training): a scratch folder of the evaluator's own may go in it, removed
    afterwards (``objkit run`` claims only the names it knows)."""
    world: WorldInfo = field(default_factory=WorldInfo)
    model_dir: str | None = None
    """``objkit eval``: the MODEL directory or hub id the model was loaded from."""

    @property
    def num_layers(self) -> int:
        """Transformer blocks of the model (an objkit Encoder's ``num_layers`` or the config's)."""
        layers = getattr(self.model, "num_layers", None)
        if layers is None:
            layers = getattr(getattr(self.model, "config", None), "num_hidden_layers", None)
        if layers is None:
            raise TypeError(f"{type(self.model).__name__}: neither num_layers nor config.num_hidden_layers")
        return int(layers)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model and its tokenizer as a transformers model directory (what ``objkit
        export`` writes during training; ``AutoModel.from_pretrained`` reads it back)."""
        from objkit.contract.defaults import save_tokenizer_for

        self.model.save_pretrained(str(directory))  # type: ignore[operator]
        save_tokenizer_for(self.model, self.tokenizer, Path(directory))


class Evaluator(Plugin):
    """An evaluation (plugin kind ``evaluator``): built with its validated ``Config``; scores a
    model with :meth:`evaluate`. (API 1.6)"""

    Config: ClassVar[type[PluginConfig]] = PluginConfig
    weights: ClassVar[Weights] = "every_rank"
    """During training, who gets the full weights: ``"every_rank"`` (every rank evaluates, in step;
    under FSDP the shards are gathered into the training encoder while :meth:`evaluate` runs) or
    ``"main"`` (a full copy on rank 0, which alone evaluates while the other ranks wait; for
    evaluators that fine-tune or save the model)."""
    periodic: ClassVar[bool] = True
    """True: during training run every ``[eval] every`` steps and at the end unless the table sets
    ``every``; False: at the end only unless it does (a costly evaluation)."""
    during_training: ClassVar[bool] = True
    """False: ``objkit eval NAME`` only; a recipe naming it in ``[eval]`` is an error."""

    def __init__(self, config: PluginConfig | None = None) -> None:
        self.config = config

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        """Score ``ctx.model``: ``{metric: value}`` (floats; keep names short, e.g. ``acc``, ``f1``).
        During training with ``weights = "main"`` it runs on rank 0 only."""
        raise NotImplementedError(f"evaluator {self.name!r} implements no evaluate()")

    @classmethod
    def command(cls) -> click.Command | None:
        """A hand-written ``objkit eval NAME`` command, or None (the default): ``objkit eval``
        builds one from ``Config`` (module docstring)."""
        return None


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """``model.eval()`` for the block, its training flag restored afterwards."""
    was = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


__all__ = ["EvalContext", "Evaluator", "Weights", "eval_mode"]
