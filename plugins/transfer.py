"""``transfer``: zero-shot cross-lingual transfer (XTREME's fine-tuning protocol): fine-tune a copy
of the model on the training language(s) of a task, test on every language. ``objkit eval transfer
MODEL --task T --data-dir DIR``; ``[eval.NAME]`` with ``plugin = "transfer"`` during training (at the
end unless ``every`` is set; rank 0 fine-tunes a saved copy while the other ranks wait; the run's RNG
states are restored, so training is unaffected), logged as ``eval/NAME/LANG`` and ``eval/NAME/avg``."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from objkit import PLUGIN_API_VERSION, EvalContext, Evaluator, PluginConfig, hookimpl


class TransferConfig(PluginConfig):
    task: Literal["xnli", "pawsx", "sib200", "panx", "udpos", "custom"] = Field(
        description="the task's format (objkit eval transfer --task)")
    data_dir: str = Field(description="the task's data directory (objkit data get NAME -o DIR writes one)")
    langs: list[str] | None = Field(None, description="test languages (default: all in data_dir)")
    train_langs: list[str] = Field(default_factory=lambda: ["en"], description="languages fine-tuned on")
    setting: Literal["cross-lingual", "translate-train-all"] = Field(
        "cross-lingual", description="cross-lingual: fine-tune on train_langs; translate-train-all: on every language")
    columns: str | None = Field(None, description="custom task: text=COL[,text_pair=COL],label=COL")
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1,
                             description="fine-tuning seeds; scores are their mean")
    epochs: int = Field(3, gt=0, description="fine-tuning epochs")
    lr: float = Field(2e-5, gt=0, description="fine-tuning learning rate")
    batch_size: int = Field(32, gt=0, description="fine-tuning batch size")
    max_length: int = Field(128, ge=8, description="tokens per example")
    warmup: float = Field(0.0, ge=0, description="warmup: a fraction of the steps if < 1, else steps")
    select: Literal["train-dev", "avg-dev"] = Field(
        "train-dev", description="train-dev: keep the checkpoint with the best dev score of train_langs; avg-dev: "
        "of every language")
    max_steps: int | None = Field(None, gt=0, description="fine-tuning step budget per seed")
    max_train: int | None = Field(None, gt=0, description="use the first N training examples")


class Transfer(Evaluator):
    """Zero-shot cross-lingual transfer: fine-tune on the training language(s), test on every language."""

    name: ClassVar[str] = "transfer"
    plugin_api: ClassVar[str] = PLUGIN_API_VERSION  # built-in: always the current API
    Config = TransferConfig
    weights: ClassVar[Any] = "main"  # saves and fine-tunes a copy: rank 0 alone
    periodic: ClassVar[bool] = False  # costly: at the end unless the table sets every

    def __init__(self, config: TransferConfig) -> None:
        from objkit.eval import TransferDuringTraining

        super().__init__(config)
        self.run = TransferDuringTraining(config)

    def evaluate(self, ctx: EvalContext) -> dict[str, float]:
        return self.run(ctx)

    @classmethod
    def command(cls) -> Any:
        from objkit.eval import transfer_command

        return transfer_command


@hookimpl
def objkit_plugins() -> list[type]:
    return [Transfer]
