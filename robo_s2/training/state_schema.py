"""What a training state file must hold, as pydantic models (issue: schemas at every door).

A training state's JSON header is read back from a file a user may have been handed; before any
part of it reaches ``load_state_dict``, the scheduler or the RNGs it is checked here, strictly (no
coercion: the code that uses it reads the original values): types, ranges, and the tensors where
tensors belong. :func:`robo_s2.training.resume.read_training_state` applies the model of the
command that resumes (:class:`BCTrainingState` for ``train``, :class:`MAETrainingState` for
``pretrain``). Other keys pass, so a newer writer's additions do not break an older reader.
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

Count = Annotated[int, Field(ge=0, le=2**62)]
Positive = Annotated[int, Field(ge=1, le=2**62)]
Rate = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Number = Annotated[float, Field(allow_inf_nan=True)]
Beta = Annotated[float, Field(ge=0, lt=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", arbitrary_types_allowed=True)


class ParamGroup(_Strict):
    params: list[Count]
    lr: Rate
    weight_decay: Rate
    betas: tuple[Beta, Beta]
    eps: Annotated[float, Field(gt=0, allow_inf_nan=False)]


class AdamMoments(_Strict):
    """AdamW's per-parameter state (shapes are checked against the parameters on load)."""

    step: Tensor
    exp_avg: Tensor
    exp_avg_sq: Tensor
    max_exp_avg_sq: Tensor | None = None


class OptimizerState(_Strict):
    state: dict[Count, AdamMoments]
    param_groups: list[ParamGroup] = Field(min_length=1)


class SchedulerState(_Strict):
    """``torch.optim.lr_scheduler.LambdaLR.state_dict()`` (its lambdas are not saved)."""

    base_lrs: list[Rate] = Field(min_length=1)
    last_epoch: Annotated[int, Field(ge=-1, le=2**62)]
    step_count: Count = Field(alias="_step_count")
    last_lr: list[Rate] | None = Field(default=None, alias="_last_lr")
    lr_lambdas: list[dict[str, Any] | None]


class SamplerState(_Strict):
    """:meth:`robo_s2.training.optim.BatchSampler.state_dict`."""

    generator: Tensor
    perm: Tensor | None
    cursor: Count
    epochs: Count
    n: Positive
    batch_size: Positive


class RngState(_Strict):
    """:func:`robo_s2.training.resume.rng_state`."""

    python: tuple[int, tuple[Annotated[int, Field(ge=0, lt=2**32)], ...], float | None]
    numpy: tuple[str, np.ndarray, int, int, float]
    torch: Tensor
    cuda: list[Tensor] | None = None


class EMAState(_Strict):
    decay: Annotated[float, Field(ge=0, le=1)]
    n_updates: Count
    shadow: dict[str, Tensor]


class Split(_Strict):
    train: list[Count] = Field(min_length=1)
    val: list[Count]


class _Common(_Strict):
    version: int
    step: Count
    model: dict[str, Tensor]
    optimizer: OptimizerState
    scheduler: SchedulerState
    sampler: SamplerState


class BCTrainingState(_Common):
    """``robo-s2 train``'s ``checkpoints/last/training_state.safetensors``."""

    ema: EMAState | None = None
    rng: list[RngState] = Field(min_length=1)
    split: Split
    feature_dim: Positive
    encoder_fingerprint: str | None
    policy_config: dict[str, Any]
    best: dict[str, Number] | None = None
    history: list[dict[str, Number]] = []


class EpochSoFar(_Strict):
    """A pre-training epoch's running loss, saved when a run stops inside it."""

    loss_sum: Tensor
    n: Count
    epoch_s: Rate


class MAETrainingState(_Common):
    """``robo-s2 pretrain``'s ``checkpoints/last/training_state.safetensors``."""

    kind: str
    mae_config: dict[str, Any]
    history: list[dict[str, Any]]
    n_images: Positive
    n_train: Positive
    val_loss_init: Number | None = None
    partial: EpochSoFar | None = None
