"""Evaluation during training: retrieval on ``[eval.sets]`` every ``eval.every`` steps and
zero-shot transfer on ``[eval.transfer]``, run as a trainer callback (:mod:`objkit.events`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from objkit.errors import UserError
from objkit.events import Callback, FitState
from objkit.schema import EvalConfig

if TYPE_CHECKING:
    from objkit.trainer import Trainer


class PeriodicEval:
    """Retrieval accuracy on the recipe's ``[eval.sets]`` every ``eval.every`` steps and at the end;
    zero-shot transfer on ``[eval.transfer]`` at the end (or every ``every`` steps). The trainer
    runs it through :class:`EvalCallback`."""

    def __init__(self, config: EvalConfig, max_length: int) -> None:
        from objkit.eval.retrieval import read_aligned

        self.config = config
        self.max_length = max_length
        self.sets: dict[str, tuple[list[str], list[str]]] = {}
        for name, files in config.sets.items():
            try:
                src, tgt = read_aligned(files.src, files.tgt)
            except (UserError, OSError) as exc:
                raise UserError(f"eval.sets.{name}: {exc}") from None
            self.sets[name] = (src[: files.max_lines], tgt[: files.max_lines])

        from objkit.eval.transfer import TransferDuringTraining

        self.transfer = {name: TransferDuringTraining(f"eval.transfer.{name}", cfg)
                         for name, cfg in config.transfer.items()}

    def _transfer_due(self, step: int, total: int) -> list[str]:
        return [name for name, t in self.transfer.items()
                if step == total or (t.config.every is not None and step % t.config.every == 0)]

    def _retrieval_due(self, step: int, total: int) -> bool:
        return bool(self.sets) and (step % self.config.every == 0 or step == total)

    def due(self, step: int, total: int) -> bool:
        return self._retrieval_due(step, total) or bool(self._transfer_due(step, total))

    def __call__(self, trainer: Any) -> dict[str, float]:
        from objkit.eval.retrieval import default_layer, evaluate_pair

        layer = self.config.layer if self.config.layer is not None else default_layer(trainer.encoder.num_layers)
        results: dict[str, float] = {}
        step, total = trainer.step, trainer.train_cfg.steps
        for name in self._transfer_due(step, total):
            results.update(self.transfer[name](trainer, name))
        if not self._retrieval_due(step, total):
            return results
        for name, (src, tgt) in self.sets.items():
            scores = evaluate_pair(
                trainer.encoder, trainer.tokenizer, src, tgt,
                layer=layer, pooling=self.config.pooling, batch_size=self.config.batch_size,
                max_length=self.max_length, device=trainer.device,
            )
            results[f"eval/{name}/acc"] = scores["mean"]
            results[f"eval/{name}/src2tgt"] = scores["src2tgt"]
            results[f"eval/{name}/tgt2src"] = scores["tgt2src"]
        return results


class EvalCallback(Callback):
    """Periodic evaluation as a trainer callback: after a step for which :class:`PeriodicEval` is
    due, every rank evaluates with the full parameters (FSDP gathers them) and the results go to
    ``on_eval`` (``metrics.jsonl``, the progress bar, the recipe's callbacks)."""

    name = "periodic_eval"

    def __init__(self, evaluate: PeriodicEval, trainer: Trainer) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.trainer = trainer

    def on_step_end(self, state: FitState, stats: dict[str, float]) -> None:
        if self.evaluate.due(state.step, state.total_steps):
            with self.trainer.strategy.full_parameters():  # every rank evaluates; rank 0 writes
                results = self.evaluate(self.trainer)
            state.report_eval(results)


__all__ = ["EvalCallback", "PeriodicEval"]
