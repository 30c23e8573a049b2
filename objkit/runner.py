"""``objkit run``: resolve, record, train, evaluate, export."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from objkit.checkpoint import atomic_write_text
from objkit.distributed import shutdown_distributed
from objkit.errors import UserError
from objkit.recipe import EvalConfig, ResolvedRecipe
from objkit.registry import Registry


class PeriodicEval:
    """Retrieval accuracy on the recipe's ``[eval.sets]`` every ``eval.every`` steps and at the end."""

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

    def due(self, step: int, total: int) -> bool:
        return bool(self.sets) and (step % self.config.every == 0 or step == total)

    def __call__(self, trainer: Any) -> dict[str, float]:
        from objkit.eval.retrieval import default_layer, evaluate_pair

        body = trainer.encoder.body()
        layer = self.config.layer if self.config.layer is not None else default_layer(trainer.encoder.num_layers)
        results: dict[str, float] = {}
        for name, (src, tgt) in self.sets.items():
            scores = evaluate_pair(
                body, trainer.tokenizer, src, tgt,
                layer=layer, pooling=self.config.pooling, batch_size=self.config.batch_size,
                max_length=self.max_length, device=trainer.device,
            )
            results[f"eval/{name}/acc"] = scores["mean"]
            results[f"eval/{name}/src2tgt"] = scores["src2tgt"]
            results[f"eval/{name}/tgt2src"] = scores["tgt2src"]
        return results


def run_recipe(resolved: ResolvedRecipe, run_dir: Path, registry: Registry, progress: bool = True) -> Path | None:
    from objkit.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    evaluate = PeriodicEval(resolved.recipe.eval, resolved.recipe.model.max_length) if resolved.recipe.eval else None
    started = time.perf_counter()
    try:
        trainer = Trainer(resolved, run_dir, registry, progress=progress)
        if trainer.world.is_main:
            atomic_write_text(run_dir / "recipe.toml", resolved.to_toml())
            versions = {"objkit": _version(), "plugins": registry.versions()}
            atomic_write_text(run_dir / "versions.json", json.dumps(versions, indent=1) + "\n")
            click.echo(f"resolved recipe and plugin versions written to {run_dir}", err=True)
        trainer.fit(evaluate)
        export = trainer.export()
        if trainer.world.is_main:
            ranks = f" on {trainer.world.world_size} ranks" if trainer.world.world_size > 1 else ""
            click.echo(f"done: {trainer.step} steps{ranks} in {time.perf_counter() - started:.0f}s; "
                       f"export at {export}", err=True)
        return export
    finally:
        shutdown_distributed()  # leave the torchrun process group (no-op with one process)


def _version() -> str:
    from objkit import __version__

    return __version__
