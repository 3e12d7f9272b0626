"""What the training loop consults at every step (when to log, validate and save), what it
carries from step to step (the running loss, times, the last validation) and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from robo_s2.errors import UserError


@dataclass(frozen=True)
class LoopSettings:
    """The ``train.*`` settings the loop consults at every step."""

    eval_every: int  # 0: validate only at train.steps
    save_every: int  # 0: write checkpoints/last only where the run stops
    log_every: int
    grad_clip: float  # 0: no clipping
    has_val: bool
    params: list[nn.Parameter]  # the trainable ones, whose gradient norm is clipped

    def logs_at(self, step: int, stop_step: int) -> bool:
        return step % self.log_every == 0 or step == stop_step

    def validates_at(self, step: int, total_steps: int) -> bool:
        return self.has_val and bool(
            (self.eval_every and step % self.eval_every == 0) or step == total_steps
        )

    def saves_at(self, step: int, stop_step: int) -> bool:
        return bool((self.save_every and step % self.save_every == 0) or step == stop_step)


@dataclass
class LoopState:
    """What the training loop carries from step to step."""

    loss_sum: Tensor  # over the steps since the last log line
    loss_n: int = 0
    interval_time: float = 0.0  # seconds those steps took
    train_time: float = 0.0  # seconds all steps of this invocation took
    train_loss: float | None = None  # the mean loss at the last log line
    last_metrics: dict[str, float] = field(default_factory=dict)  # of the last validation
    last_saved: int = -1  # the step checkpoints/last was last written at

    def take_mean_loss(self, step: int) -> float:
        """The mean loss since the last log line (an error when not finite); starts a new
        interval."""
        mean_loss = float(self.loss_sum) / self.loss_n
        if not np.isfinite(mean_loss):
            raise UserError(
                f"training diverged: the loss is {mean_loss} by step {step}; "
                "lower train.lr, raise train.warmup_steps or check the data"
            )
        self.train_loss = mean_loss
        self.loss_sum.zero_()
        self.loss_n, self.interval_time = 0, 0.0
        return mean_loss


@dataclass
class TrainResult:
    """What a training run did (returned on every rank; only rank 0 wrote anything)."""

    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    seconds: float
    samples_per_s: float
    train_loss: float | None
    final: dict[str, float] = field(default_factory=dict)  # metrics of the last validation
    best: dict[str, Any] = field(default_factory=dict)  # {"step", "loss", ...metrics}
    checkpoint: Path | None = None  # best (last when there is no validation)
    last: Path | None = None
    is_main: bool = True
    n_params: int = 0
    feature_source: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def steps_run(self) -> int:
        return self.step - self.start_step
