"""Fit ``s2_select``'s learned tile rule on store frames, and score every rule against the truth.

The data pass runs the full S² (every tile of every scale) over the chosen frames once, keeping the
first scale's token map (the head's input), the per-tile change targets
(:func:`robo_s2.encoders.tile_scorer.change_targets`) and every registered rule's scores. The head
is fitted on the training episodes' frames (Adam, MSE to the targets z-scored per frame and
scale: only the order of tiles within a frame matters) and judged on held-out episodes by
**change captured**: the sum of the targets of the ``k`` tiles a rule picks over that of the ``k``
tiles with the largest targets (1 = it picks what S² would have changed most; averaged over
frames), at the encoder's own ``k`` per scale.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.encoders.tile_rules import (
    get_tile_rule,
    list_tile_rules,
    needs_cls_attention,
    select_tiles,
)
from robo_s2.encoders.tile_scorer import TileScorer, change_targets
from robo_s2.errors import UserError


@dataclass
class ScorerData:
    """What the head is fitted and judged on, for ``N`` frames."""

    grids: Tensor  # (N, h, w, C) float32: the first scale's patch tokens
    targets: list[Tensor]  # per larger scale (N, n*n): the change S² makes at each tile
    rule_scores: dict[str, list[Tensor]] = field(default_factory=dict)  # rule -> per scale

    def rows(self, idx: Tensor) -> ScorerData:
        return ScorerData(
            self.grids[idx],
            [t[idx] for t in self.targets],
            {r: [s[idx] for s in v] for r, v in self.rule_scores.items()},
        )


@torch.no_grad()
def scorer_data(
    encoder: Any, frames: Any, rows: np.ndarray, batch_size: int, precision: str
) -> ScorerData:
    """Run S² over ``frames[rows]`` (a store array) in batches; see :class:`ScorerData`."""
    from robo_s2.device import autocast

    dev = next(encoder.parameters()).device
    grids: list[Tensor] = []
    targets: list[list[Tensor]] = []
    attention = encoder_has_cls_attention(encoder)
    names = [r for r in list_tile_rules() if attention or not needs_cls_attention(r)]
    scores: dict[str, list[list[Tensor]]] = {r: [] for r in names}
    for lo in range(0, len(rows), batch_size):
        images = torch.as_tensor(np.asarray(frames[rows[lo : lo + batch_size]])).to(dev)
        with autocast(dev, precision):
            low, maps = encoder.scale_pass(images, cls_attention=attention)
        maps = [m.to(torch.float32) for m in maps]
        grids.append(maps[0].cpu())
        targets.append([t.cpu() for t in change_targets(maps, encoder.splits)])
        for name in scores:
            rule = get_tile_rule(name)
            scores[name].append(
                [rule(low, n, i).cpu() for i, n in enumerate(encoder.splits, start=1)]
            )
    n_scales = len(encoder.splits)
    return ScorerData(
        torch.cat(grids),
        [torch.cat([t[i] for t in targets]) for i in range(n_scales)],
        {r: [torch.cat([b[i] for b in v]) for i in range(n_scales)] for r, v in scores.items()},
    )


def encoder_has_cls_attention(encoder: Any) -> bool:
    from robo_s2.encoders.cls_attention import last_attention

    try:
        last_attention(encoder.backbone)
    except UserError:
        return False
    return True


def _zscore(t: Tensor) -> Tensor:
    return (t - t.mean(dim=1, keepdim=True)) / (t.std(dim=1, keepdim=True) + 1e-6)


def fit_tile_scorer(
    data: ScorerData,
    splits: list[int],
    hidden: int = 64,
    steps: int = 600,
    lr: float = 3e-3,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[TileScorer, list[float]]:
    """The fitted head and its training loss every 50 steps (the first entry: before any step)."""
    if len(data.grids) < 2:
        raise UserError(f"{len(data.grids)} training frame(s): the tile scorer needs at least 2")
    torch.manual_seed(seed)
    scorer = TileScorer(int(data.grids.shape[-1]), splits, hidden)
    opt = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    goals = [_zscore(t) for t in data.targets]
    losses: list[float] = []
    for step in range(steps + 1):
        idx = torch.randint(len(data.grids), (min(batch_size, len(data.grids)),), generator=gen)
        preds = scorer(data.grids[idx])
        loss = sum(
            torch.nn.functional.mse_loss(_zscore(p), g[idx])
            for p, g in zip(preds, goals, strict=True)
        ) / len(goals)
        assert isinstance(loss, Tensor)
        if step % 50 == 0:
            losses.append(round(float(loss.detach()), 4))
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return scorer.eval().requires_grad_(False), losses


def change_captured(scores: Tensor, targets: Tensor, k: int) -> float:
    """Mean over frames of (targets of the ``k`` tiles ``scores`` picks) / (the best ``k``)."""
    picked = targets.gather(1, select_tiles(scores, k)).sum(dim=1)
    best = targets.topk(k, dim=1).values.sum(dim=1)
    return float((picked / best.clamp_min(1e-12)).mean())


@torch.no_grad()
def compare_rules(scorer: TileScorer, data: ScorerData, keep: list[int]) -> dict[str, list[float]]:
    """Per rule (``learned`` first), change captured at each larger scale with ``keep`` tiles."""
    rules = rule_scores(scorer, data)
    return {
        name: [
            round(change_captured(s, t, k), 4)
            for s, t, k in zip(scores, data.targets, keep, strict=True)
        ]
        for name, scores in rules.items()
    }


def tile_hit_rate(scores: Tensor, tiles: Tensor, k: int) -> float:
    """Share of frames whose ``tiles`` entry (one tile index per frame, e.g. the cube's) is among
    the ``k`` tiles ``scores`` picks."""
    picked = select_tiles(scores, k)
    return float((picked == tiles.view(-1, 1)).any(dim=1).to(torch.float32).mean())


@torch.no_grad()
def rule_scores(scorer: TileScorer, data: ScorerData) -> dict[str, list[Tensor]]:
    """Every rule's per-scale tile scores on ``data`` (``learned`` first)."""
    return {"learned": scorer(data.grids), **data.rule_scores}
