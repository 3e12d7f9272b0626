"""Plots of evaluation results (matplotlib, Agg backend: no display needed).

* :func:`plot_positions` — cube placements of an evaluation over the placement region, coloured by
  success (where does the policy fail?).
* :func:`plot_success_bars` — success rates of several runs (e.g. encoders of the Table-8
  experiment) as bars with Wilson 95 % intervals, optionally beside reference values (the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUCCESS_COLOR = "#2ca02c"
FAILURE_COLOR = "#d62728"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, ax, title: str, path: str | Path) -> Path:
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_positions(
    records: Sequence[Mapping[str, Any]],
    region: Sequence[Sequence[float]],
    path: str | Path,
    title: str = "",
    cube_size: float = 0.04,
) -> Path:
    """Write a PNG of the episodes' cube placements over ``region`` ((x0, x1), (y0, y1)).

    Each record needs ``cube_pos`` (x, y), ``cube_yaw`` and ``success``; a placement is drawn as a
    square turned by the cube's yaw (the cube's footprint, shrunk in dense sets so squares do not
    overlap) in green (success) or red (failure), labelled with its episode index when there are
    few. Axes: x forward from the robot base, y to the left
    (m), drawn as seen from above with the robot at the bottom.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch, Polygon, Rectangle

    (x0, x1), (y0, y1) = region
    fig, ax = plt.subplots(figsize=(5.2, 5.2), dpi=120)
    try:
        # seen from above with the robot at the bottom: screen up = +x, screen left = +y
        ax.add_patch(
            Rectangle((y0, x0), y1 - y0, x1 - x0, fill=False, ls="--", lw=1.0, ec="0.4", zorder=1)
        )
        # footprints to scale would overlap in dense sets: shrink to half the typical spacing
        spacing = min(x1 - x0, y1 - y0) / max(math.sqrt(len(records)), 1.0)
        half = min(cube_size, 0.5 * spacing if spacing > 0 else cube_size) / 2
        label = len(records) <= 36
        for r in records:
            x, y = (float(v) for v in r["cube_pos"])
            yaw = float(r.get("cube_yaw", 0.0))
            c, s = math.cos(yaw), math.sin(yaw)
            corners = [
                (y + s * dx + c * dy, x + c * dx - s * dy)
                for dx, dy in ((-half, -half), (half, -half), (half, half), (-half, half))
            ]
            color = SUCCESS_COLOR if r["success"] else FAILURE_COLOR
            ax.add_patch(Polygon(corners, fc=color, ec="k", lw=0.5, alpha=0.8))
            if label and "index" in r:
                ax.annotate(str(r["index"]), (y, x), ha="center", va="center", fontsize=6)
        pad = cube_size
        ax.set_xlim(y1 + pad, y0 - pad)  # inverted: +y (the robot's left) on the left
        ax.set_ylim(x0 - pad, x1 + pad)
        ax.set_aspect("equal")
        ax.set_xlabel("y (m), robot's left to the left")
        ax.set_ylabel("x (m), away from the robot")
        n_ok = sum(bool(r["success"]) for r in records)
        ax.legend(
            handles=[
                Patch(fc=SUCCESS_COLOR, ec="k", label=f"success ({n_ok})"),
                Patch(fc=FAILURE_COLOR, ec="k", label=f"failure ({len(records) - n_ok})"),
            ],
            loc="upper right",
            fontsize=7,
        )
        return _save(fig, ax, title, path)
    finally:
        plt.close(fig)


def plot_success_bars(
    labels: Sequence[str],
    successes: Sequence[int],
    episodes: Sequence[int],
    path: str | Path,
    title: str = "",
    reference: Mapping[str, float] | None = None,
    reference_label: str = "paper",
) -> Path:
    """Bars of success rates (percent) with Wilson 95 % intervals; ``reference`` maps labels to
    reference percentages drawn as black markers beside the bars."""
    from robo_s2.evaluation.stats import wilson_interval

    plt = _pyplot()
    rates = [100.0 * k / n if n else 0.0 for k, n in zip(successes, episodes, strict=True)]
    cis = [wilson_interval(k, n) for k, n in zip(successes, episodes, strict=True)]
    lower = [r - 100.0 * lo for r, (lo, _) in zip(rates, cis, strict=True)]
    upper = [100.0 * hi - r for r, (_, hi) in zip(rates, cis, strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 4.0), dpi=120)
    try:
        xs = list(range(len(labels)))
        ax.bar(xs, rates, yerr=[lower, upper], capsize=4, color="#4c72b0", alpha=0.85)
        for x, r, k, n in zip(xs, rates, successes, episodes, strict=True):
            # at the foot of the bar, clear of the error bar
            ax.text(x, 1.5, f"{r:.1f}%\n{k}/{n}", ha="center", va="bottom", fontsize=7)
        if reference:
            ref = [
                (x, reference[lab]) for x, lab in zip(xs, labels, strict=True) if lab in reference
            ]
            if ref:
                ax.scatter([x + 0.3 for x, _ in ref], [v for _, v in ref], marker="D", c="k", s=18,
                           label=reference_label, zorder=3)  # fmt: skip
                ax.legend(fontsize=7)
        ax.set_xticks(xs)
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("success rate (%), Wilson 95% CI")
        return _save(fig, ax, title, path)
    finally:
        plt.close(fig)
