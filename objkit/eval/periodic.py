"""Evaluation during training: the recipe's ``[eval.NAME]`` evaluator plugins (and the deprecated
``[eval.sets.NAME]`` / ``[eval.transfer.NAME]`` tables, as the ``retrieval`` / ``transfer``
evaluators), run as a trainer callback (:mod:`objkit.contract.events`) through the fit state only: the full
weights come from :meth:`objkit.FitState.full_weights`, as they would for a third party's callback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from objkit.contract.errors import UserError
from objkit.contract.evaluator import EvalContext, Evaluator
from objkit.contract.events import Callback, FitState
from objkit.recipe.schema import EvalConfig


@dataclass
class ScheduledEvaluator:
    """One ``[eval]`` entry: its NAME (the metrics' ``eval/NAME/`` prefix), the evaluator and its steps."""

    name: str
    evaluator: Evaluator
    every: int | None
    """Every N steps (and at the end); None: at the end only."""

    def due(self, step: int, total: int) -> bool:
        return step == total or (self.every is not None and step % self.every == 0)


def build_evaluators(config: EvalConfig, configs: dict[str, Any], registry: Any) -> list[ScheduledEvaluator]:
    """The recipe's evaluators, built (their data read and checked) before training starts;
    ``configs`` are the validated plugin configs (:attr:`objkit.recipe.loader.ResolvedRecipe.eval_configs`)."""
    out = []
    for name, (key, entry) in config.entries().items():
        cls = registry.get(entry.plugin, kind="evaluator").cls
        try:
            evaluator = cls(configs[name])
        except UserError as exc:
            raise UserError(f"{key}: {exc}") from None
        every = entry.every if entry.every is not None else (config.every if cls.periodic else None)
        out.append(ScheduledEvaluator(name, evaluator, every))
    return out


class EvalCallback(Callback):
    """Periodic evaluation as a trainer callback: after a step for which an evaluator is due,
    every rank enters :meth:`~objkit.FitState.full_weights` (FSDP gathers the weights) as the
    evaluator declares; its results, as ``eval/NAME/METRIC``, go to ``on_eval`` (``metrics.jsonl``,
    the progress bar, the recipe's callbacks)."""

    name = "periodic_eval"

    def __init__(self, evaluators: list[ScheduledEvaluator], max_length: int | None = None) -> None:
        super().__init__()
        self.evaluators = evaluators
        self.max_length = max_length

    def on_step_end(self, state: FitState, stats: dict[str, Any]) -> None:
        results: dict[str, float] = {}
        for item in self.evaluators:
            if not item.due(state.step, state.total_steps):
                continue
            with state.full_weights(item.evaluator.weights) as model:
                if model is None:  # weights = "main", a rank other than 0: it waits
                    continue
                ctx = EvalContext(model=model, tokenizer=state.tokenizer, device=state.device, name=item.name,
                                  max_length=self.max_length, step=state.step, total_steps=state.total_steps,
                                  run_dir=state.run_dir, world=state.world)
                scores = item.evaluator.evaluate(ctx)
            results.update({f"eval/{item.name}/{key}": float(value) for key, value in scores.items()})
        state.report_eval(results)


__all__ = ["EvalCallback", "ScheduledEvaluator", "build_evaluators"]
