"""A behaviour-cloning run's training state (``checkpoints/last/training_state.safetensors``):
what it holds, and restoring a run from it exactly (weights, EMA, optimizer, schedule, sampler,
step, validation history and every rank's RNGs). Finding and reading it: :mod:`.resume`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from robo_s2.errors import UserError
from robo_s2.training import distributed as D
from robo_s2.training.optim import (
    EMA,
    BatchSampler,
    load_optimizer_state,
    load_partial_state,
    trainable_state,
)
from robo_s2.training.resume import set_rng_state

STATE_VERSION = 1
# what a training state must hold for this version to resume from it
STATE_KEYS: tuple[str, ...] = ("version", "step", "model", "optimizer", "scheduler", "sampler")
STATE_KEYS += ("rng", "split", "feature_dim", "encoder_fingerprint", "policy_config")


def check_same_policy(saved: Mapping[str, Any], now: Mapping[str, Any], src: Path | None) -> None:
    """A resumed run's policy must have the saved settings (its execution may differ)."""
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k != "execution" and saved.get(k) != now.get(k)
    ]
    if diffs:
        raise UserError(
            f"the policy differs from the run being resumed ({src}): {'; '.join(diffs[:4])}; "
            "resume with the same policy settings or start a new run"
        )


def restore_training_state(
    state: Mapping[str, Any],
    model: nn.Module,
    ema: EMA | None,
    optimizer: Any,
    scheduler: Any,
    sampler: BatchSampler,
    dist: D.DistInfo,
) -> tuple[int, dict[str, Any], list[dict[str, float]]]:
    """Load ``state`` into the run's parts and this rank's RNGs; returns the step, the best
    validation record and the validation history."""
    missing = sorted(set(trainable_state(model)) - set(state["model"]))
    if missing:  # a saved state holds every trainable tensor; one without is not this run's
        raise KeyError(f"the saved weights lack {len(missing)} of the model's, e.g. {missing[:3]}")
    load_partial_state(model, state["model"])
    if ema is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    elif ema is not None:  # EMA switched on at resume: start it from the current weights
        load_partial_state(ema.shadow, trainable_state(model))
    load_optimizer_state(optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    rngs = state["rng"]
    if len(rngs) != dist.world_size and dist.is_main:
        print(
            f"train: note: resuming a {len(rngs)}-rank run on {dist.world_size} ranks; "
            "batches stay the same, dropout noise differs from an uninterrupted run"
        )
    set_rng_state(rngs[dist.rank % len(rngs)])
    return int(state["step"]), dict(state.get("best") or {}), list(state.get("history") or [])
