"""Validation of a behaviour-cloning policy: the action error over every window of the validation
episodes, in normalized and raw units, beside predicting the training-mean action (sharded over
``torchrun`` ranks and summed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from policies.base import loss_elements
from robo_s2.training import distributed as D
from robo_s2.training.data import SequenceData

# what every batch adds to (float64, over the valid chunk entries of all windows)
SUMS = ("loss", "l1", "baseline_l1", "l1_raw", "baseline_l1_raw", "count")


@torch.no_grad()
def validate(
    policy: Any,  # a policies.BasePolicy (its normalizer, loss type and sizes are read)
    data: SequenceData,
    windows: Tensor,
    batch_size: int,
    dist: D.DistInfo,
    feature_table: Tensor | None = None,
    action_names: Sequence[str] = (),
) -> dict[str, float]:
    """Mean losses and L1s, their ratios to the mean-action baseline (< 1: the policy beats it)
    and the raw L1 of each action dimension (``l1_raw/<name>``).

    ``windows``: every validation window (this rank takes every ``world_size``-th);
    ``feature_table``: per-frame features when the encoder trains from images (else the data's)."""
    from robo_s2.device import autocast

    device = data.device
    norm = policy.normalizer
    da = policy.action_dim
    sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in SUMS}
    per_dim = torch.zeros(da, dtype=torch.float64, device=device)
    mean_raw = norm.action_mean.float()
    windows = windows[dist.rank :: dist.world_size]
    for lo in range(0, windows.numel(), batch_size):
        batch = data.batch(windows[lo : lo + batch_size], feature=feature_table)
        with autocast(device):
            pred = policy(batch).float()
        target = batch["action_chunk"]
        mask = batch["chunk_valid"][..., None].float()
        pred_raw = norm.unnormalize(pred, "action")
        target_n = norm.normalize(target, "action")
        base_n = norm.normalize(mean_raw.expand_as(target), "action")
        err_raw = (pred_raw - target).abs() * mask
        sums["loss"] += (loss_elements(pred, target_n, policy.loss_type) * mask).sum().double()
        sums["l1"] += ((pred - target_n).abs() * mask).sum().double()
        sums["baseline_l1"] += ((base_n - target_n).abs() * mask).sum().double()
        sums["l1_raw"] += err_raw.sum().double()
        sums["baseline_l1_raw"] += ((mean_raw - target).abs() * mask).sum().double()
        sums["count"] += (mask.sum() * da).double()
        per_dim += err_raw.sum(dim=(0, 1)).double()
    total = D.all_reduce_sum(torch.cat([torch.stack([sums[k] for k in SUMS]), per_dim]), dist)
    totals = dict(zip(SUMS, total[: len(SUMS)].tolist(), strict=True))
    n = max(totals.pop("count"), 1.0)
    m = {k: v / n for k, v in totals.items()}
    m["ratio"] = m["l1"] / max(m["baseline_l1"], 1e-12)
    m["ratio_raw"] = m["l1_raw"] / max(m["baseline_l1_raw"], 1e-12)
    for i, err in enumerate(total[len(SUMS) :].tolist()):
        label = action_names[i] if i < len(action_names) else str(i)
        m[f"l1_raw/{label}"] = err / (n / da)
    return m
