"""Pictures of which tiles an ``s2_select`` encoder runs: store frames with the tiles outlined.

``robo-s2 analyze selection store=... source=vit_t_s2sel`` takes the middle frame of a few
evenly spaced episodes (of ``episodes`` when given), runs the encoder and draws, on each frame as stored, the outline of every
tile the rule picked at each larger scale (one colour per scale). It writes ``selection.png`` and
``selection.json`` (frame rows and tile indices) in the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robo_s2.core.config import require_complete
from robo_s2.errors import UserError

SCALE_COLOURS = ("#ff7f0e", "#17becf", "#e377c2", "#bcbd22")


def pick_frames(
    episode_ends: np.ndarray, count: int, episodes: list[int] | None = None
) -> list[int]:
    """The middle frame of ``count`` evenly spaced episodes (of ``episodes``, default all)."""
    ends = np.asarray(episode_ends, np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    pool = np.arange(len(ends)) if episodes is None else np.sort(np.asarray(episodes, np.int64))
    at = np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))
    return [int((starts[e] + ends[e] - 1) // 2) for e in pool[at]]


@torch.no_grad()
def selected_tiles(encoder: Any, frames: np.ndarray) -> list[list[list[int]]]:
    """Per frame, per larger scale: the tile indices (row-major) the encoder runs."""
    if not hasattr(encoder, "select_tokens"):
        raise UserError(
            f"encoder '{encoder.label or encoder.name}' selects no tiles; give an s2_select "
            "encoder (e.g. source=vit_t_s2sel)"
        )
    _, chosen = encoder.eval().select_tokens(torch.as_tensor(frames))
    return [[c[i].tolist() for c in chosen] for i in range(len(frames))]


def draw_selection(
    frames: np.ndarray, tiles: list[list[list[int]]], splits: list[int], title: str, out: Path
) -> Path:
    """``frames`` (N,H,W,3 uint8) in a row, each with its selected tiles outlined."""
    from matplotlib.patches import Rectangle

    from robo_s2.evaluation.plots import _pyplot

    plt = _pyplot()
    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.7), squeeze=False)
    for ax, frame, chosen in zip(axes[0], frames, tiles, strict=True):
        h, w = frame.shape[:2]
        ax.imshow(frame, interpolation="nearest")
        for s, (split, idx) in enumerate(zip(splits, chosen, strict=True)):
            th, tw = h / split, w / split
            colour = SCALE_COLOURS[s % len(SCALE_COLOURS)]
            for t in idx:
                r, c = divmod(int(t), split)
                inset = 0.5 + s
                ax.add_patch(Rectangle((c * tw - 0.5 + inset, r * th - 0.5 + inset),
                                       tw - 2 * inset, th - 2 * inset, fill=False,
                                       edgecolor=colour, linewidth=1.5))  # fmt: skip
        ax.set_axis_off()
    labels = ", ".join(
        f"{sp}x{sp} tiles: {SCALE_COLOURS[i % len(SCALE_COLOURS)]}" for i, sp in enumerate(splits)
    )
    fig.suptitle(f"{title}\n{labels}", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def run_selection(cfg: dict[str, Any], out_dir: Path, episodes: list[int] | None = None) -> Path:
    """The ``analyze selection`` analysis (see the module docstring) on ``episodes`` (None: all
    of the store's); returns the PNG's path."""
    from robo_s2.data.store import DemoStore
    from robo_s2.encoders import create_encoder

    require_complete(cfg, "analyze", overrides=["analysis=selection"])
    store = DemoStore.open(cfg["store"])
    key = str(cfg["image_key"])
    if key not in store.keys():
        raise UserError(f"{store.path} has no data/{key}; its arrays: {store.keys()}")
    encoder: Any = create_encoder(cfg["source"], **(cfg["overrides"] or {}))
    rows = pick_frames(store.episode_ends, int(cfg["frames"]), episodes)
    frames = np.stack([np.asarray(store.array(key)[r]) for r in rows])
    tiles = selected_tiles(encoder, frames)
    splits = [p.num_split for p in encoder.plans[1:]]
    title = f"{encoder.label or encoder.name}: rule {encoder.rule_name}, tiles run {encoder.keep}"
    png = draw_selection(frames, tiles, splits, title, out_dir / "selection.png")
    record = {"store": str(store.path), "encoder": encoder.config, "rows": rows, "tiles": tiles}
    (out_dir / "selection.json").write_text(json.dumps(record, indent=2) + "\n")
    return png
