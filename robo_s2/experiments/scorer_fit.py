"""``robo-s2 analyze scorer``: fit s2_select's learned tile rule on a store and compare the rules.

The head's target (``target``): ``change`` (self-supervised: where the larger scales change S²'s
features most) or ``objects`` (the simulator's supervision: 1 at the tiles holding the cube's or
the gripper's centre, the store's privileged state projected through its camera).

Frames: up to ``max_frames`` evenly spaced frames of the training episodes and of the held-out
episodes (a seeded episode-level split, as the probes use). The data pass, the fit and the metric
are :mod:`robo_s2.pretraining.tile_scorer`'s. Writes, in the run directory,
``tile_scorer.safetensors`` (the head, metadata naming the backbone fingerprint it fits),
``scorer.json`` (split, losses, the rule table) and ``selection.png`` (the learned rule's tiles on
frames of held-out episodes, :mod:`robo_s2.experiments.tile_selection`); prints the table and how to use it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.core.config import require_complete
from robo_s2.errors import UserError
from robo_s2.pretraining.tile_scorer import ScorerData


def spread(rows: np.ndarray, count: int) -> np.ndarray:
    """``count`` evenly spaced entries of ``rows`` (all of them when there are fewer)."""
    if count >= len(rows):
        return rows
    return rows[np.linspace(0, len(rows) - 1, count).round().astype(np.int64)]


def object_tiles(store: Any, image_key: str, rows: np.ndarray, n: int) -> dict[str, Tensor] | None:
    """Per frame, the index of the ``n x n`` tile holding the cube's centre and the gripper's (the
    store's privileged state projected through its env's front camera); None when the store has
    no state or the frames are not the front camera's."""
    from envs import make_env
    from envs.cube_pick import STATE_CUBE_POS, STATE_EE_POS

    spec = dict(store.attrs).get("env") or {}
    if image_key != "image" or "state" not in store.keys() or not spec.get("kwargs"):
        return None
    env = make_env({"id": spec["id"], **spec["kwargs"], "render_images": False})
    state = np.asarray(store.array("state")[rows], np.float64)
    size = int(np.asarray(store.array(image_key)[rows[:1]]).shape[1])
    out = {}
    for name, cols in (("cube", STATE_CUBE_POS), ("gripper", STATE_EE_POS)):
        pix = env.project(state[:, cols]) * size / env.image_size
        cell = np.clip((pix * n / size).astype(np.int64), 0, n - 1)
        out[name] = torch.as_tensor(cell[:, 1] * n + cell[:, 0])
    env.close()
    return out


def rule_table(
    table: dict[str, list[float]],
    splits: list[int],
    keep: list[int],
    hits: dict[str, dict[str, float]] | None = None,
) -> str:
    head = " | ".join(f"{n}x{n} scale, k={k}" for n, k in zip(splits, keep, strict=True))
    extra = " | cube's tile run | gripper's tile run" if hits else ""
    lines = [f"| rule | {head}{extra} |", "|---" * (len(splits) + 1 + (2 if hits else 0)) + "|"]
    for r, vals in table.items():
        row = " | ".join(f"{v:.3f}" for v in vals)
        if hits:
            row += f" | {100 * hits[r]['cube']:.0f} % | {100 * hits[r]['gripper']:.0f} %"
        lines.append(f"| {r} | {row} |")
    return "\n".join(lines)


def with_object_targets(
    data: ScorerData, store: Any, key: str, rows: np.ndarray, splits: list[int]
) -> ScorerData:
    """``data`` with targets 1 at the tiles holding the cube's or the gripper's centre, else 0
    (the simulator's supervision instead of S²'s feature change)."""
    targets = []
    for n in splits:
        tiles = object_tiles(store, key, rows, n)
        if tiles is None:
            raise UserError(
                f"target=objects needs the store's privileged state and front-camera frames; "
                f"{store.path} ({key}) has none: use target=change"
            )
        t = torch.zeros(len(rows), n * n)
        for cell in tiles.values():
            t[torch.arange(len(rows)), cell] = 1.0
        targets.append(t)
    return ScorerData(data.grids, targets, data.rule_scores)


def object_hits(
    store: Any, key: str, rows: np.ndarray, encoder: Any, scores: dict[str, list[Tensor]]
) -> dict[str, dict[str, float]] | None:
    """Per rule, the share of ``rows`` whose cube's / gripper's top-scale tile the rule runs."""
    from robo_s2.pretraining.tile_scorer import tile_hit_rate

    n, k = encoder.splits[-1], encoder.keep[-1]
    tiles = object_tiles(store, key, rows, n)
    if tiles is None:
        return None
    return {
        rule: {obj: round(tile_hit_rate(s[-1], t, k), 4) for obj, t in tiles.items()}
        for rule, s in scores.items()
    }


TARGETS = ("change", "objects")


def _source(cfg: dict[str, Any]) -> tuple[Any, str, Any, dict[str, Any]]:
    """The store, its image key, the s2_select encoder (rule salient) and its overrides."""
    from robo_s2.data.store import DemoStore
    from robo_s2.encoders import create_encoder

    if str(cfg["target"]) not in TARGETS:
        raise UserError(f"unknown scorer target {cfg['target']!r}; choose change or objects")
    store = DemoStore.open(cfg["store"])
    key = str(cfg["image_key"])
    if key not in store.keys():
        raise UserError(f"{store.path} has no data/{key}; its arrays: {store.keys()}")
    overrides = {**(cfg["overrides"] or {}), "rule": "salient", "scorer": None}
    encoder: Any = create_encoder(cfg["source"], **overrides)
    if not hasattr(encoder, "scale_pass"):
        raise UserError(f"source {cfg['source']} is not an s2_select encoder (e.g. vit_t_s2sel)")
    return store, key, encoder, overrides


def _split(store: Any, cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frame rows of the training and held-out episodes, ``max_frames`` of them in all."""
    from robo_s2.pretraining.probe import episode_split_rows

    fraction = float(cfg["test_fraction"])
    train, test, _ = episode_split_rows(store.episode_ends, fraction, int(cfg["seed"]))
    n_max = int(cfg["max_frames"])
    n_test = max(1, round(n_max * fraction))
    return spread(train, n_max - n_test), spread(test, n_test)


def run_scorer_fit(cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from robo_s2.data.windows import frame_episode
    from robo_s2.device import resolve_device
    from robo_s2.encoders.feature_cache import feature_precision
    from robo_s2.encoders.tile_scorer import save_tile_scorer
    from robo_s2.experiments.tile_selection import run_selection
    from robo_s2.pretraining.tile_scorer import (
        compare_rules,
        fit_tile_scorer,
        rule_scores,
        scorer_data,
    )

    require_complete(cfg, "analyze", overrides=["analysis=scorer"])
    t0 = time.perf_counter()
    store, key, encoder, overrides = _source(cfg)
    dev = resolve_device(str(cfg["device"]))
    encoder = encoder.to(dev).eval()
    batch = int(cfg["batch_size"])
    precision = feature_precision(encoder, dev, batch, cfg["precision"])
    train, test = _split(store, cfg)
    data_train = scorer_data(encoder, store.array(key), train, batch, precision)
    data_test = scorer_data(encoder, store.array(key), test, batch, precision)
    data_s = time.perf_counter() - t0
    target = str(cfg["target"])
    if target == "objects":
        data_train = with_object_targets(data_train, store, key, train, encoder.splits)
    scorer, losses = fit_tile_scorer(
        data_train, encoder.splits, hidden=int(cfg["hidden"]), steps=int(cfg["steps"]),
        lr=float(cfg["lr"]), batch_size=int(cfg["fit_batch_size"]), seed=int(cfg["seed"]),
    )  # fmt: skip
    table = compare_rules(scorer, data_test, list(encoder.keep))
    hits = object_hits(store, key, test, encoder, rule_scores(scorer, data_test))
    held_out = sorted({int(e) for e in frame_episode(store.episode_ends)[test]})
    record = {
        "store": str(store.path),
        "encoder": encoder.config,
        "backbone_fingerprint": encoder.backbone.fingerprint(),
        "precision": precision,
        "n_train_frames": len(train),
        "n_test_frames": len(test),
        "n_episodes": int(store.n_episodes),
        "held_out_episodes": held_out,
        "seed": int(cfg["seed"]),
        "target": target,
        "steps": int(cfg["steps"]),
        "loss_every_50_steps": losses,
        "change_captured_held_out": table,
        "top_scale_tile_hits_held_out": hits,
        "keep": list(encoder.keep),
        "data_s": round(data_s, 1),
    }
    meta = ("backbone_fingerprint", "store", "n_train_frames", "seed", "target")
    path = save_tile_scorer(
        scorer, out_dir / "tile_scorer.safetensors", {k: record[k] for k in meta}
    )
    record["seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "scorer.json").write_text(json.dumps(record, indent=2) + "\n")
    with torch.no_grad():  # the pictures: held-out episodes only
        learned = {**overrides, "rule": "learned", "scorer": str(path.resolve())}
        run_selection({**cfg, "overrides": learned}, out_dir, episodes=held_out)
    record["markdown"] = rule_table(table, encoder.splits, list(encoder.keep), hits)
    record["path"] = str(path.resolve())
    return record
