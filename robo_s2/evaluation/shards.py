"""Sharded evaluation: shard ``i/n`` evaluates a deterministic slice of a position set, and the
``eval_info.json`` of all ``n`` shards merge into the one the unsharded run writes.

Shard ``i`` of ``n`` takes the contiguous block of episode indices ``[i*N//n, (i+1)*N//n)`` of the
set's ``N`` episodes. An episode's placement and seed depend only on the set, the seed and its
index (:func:`robo_s2.evaluation.runner.episode_specs`), so the merged per-episode records equal
the unsharded run's wherever inference is batch-invariant (fp32 on CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from robo_s2.errors import UserError
from robo_s2.evaluation.stats import wilson_interval

# keys whose values must agree between the shards of one evaluation
SAME_KEYS = (
    "checkpoint", "policy", "policy_config", "execution", "encoder", "render_profile",
    "image_key", "train_step", "expert", "positions", "env", "env_overrides",
)  # fmt: skip


def parse_shard(text: Any) -> tuple[int, int] | None:
    """``"i/n"`` (0 <= i < n) as ``(i, n)``; None or ``""`` as None."""
    if text is None or str(text).strip() in ("", "None", "null"):
        return None
    index, slash, count = str(text).strip().partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not slash or n < 1 or not 0 <= i < n:
        raise UserError(
            f"shard={text!r} must be i/n with 0 <= i < n (e.g. shard=0/4 ... shard=3/4), "
            "the i-th of n slices of the position set"
        )
    return i, n


class _Episode(BaseModel):
    index: int = Field(ge=0)
    success: bool
    steps: int = Field(ge=0)


class _Shard(BaseModel):
    index: int = Field(ge=0)
    count: int = Field(ge=1)


class _Positions(BaseModel):
    n: int = Field(ge=1)


class _ShardInfo(BaseModel):
    """What :func:`merge_eval_infos` reads of a shard's ``eval_info.json`` (other keys pass)."""

    shard: _Shard | None
    positions: _Positions
    per_episode: list[_Episode]
    eval_s: float | None = None
    rollout_s: float | None = None
    startup_s: float | None = None
    env_steps: int | None = None
    video_paths: list[str] = []


def shard_range(n_total: int, shard: tuple[int, int]) -> range:
    """The episode indices of ``shard`` = ``(i, n)`` of a set of ``n_total`` episodes."""
    i, n = shard
    if n > n_total:
        raise UserError(
            f"shard={i}/{n} asks for {n} slices of {n_total} episodes; use at most {n_total}"
        )
    return range(i * n_total // n, (i + 1) * n_total // n)


def _read_info(path: str | Path) -> dict[str, Any]:
    """A shard's ``eval_info.json``, the fields the merge reads checked by :class:`_ShardInfo`."""
    from robo_s2.core.io import read_json
    from robo_s2.core.schema import validated

    p = Path(path)
    file = p / "eval_info.json" if p.is_dir() else p
    if not file.is_file():
        raise UserError(f"{file} does not exist: merge= takes the output directories of shard runs")
    info = read_json(file, "a shard's eval_info.json", "rerun that shard")
    if not isinstance(info, dict) or "per_episode" not in info:
        raise UserError(f"{file} is not an eval_info.json (no per_episode records)")
    validated(_ShardInfo, info, f"{file} is not a shard's eval_info.json", "rerun that shard")
    return info


def merge_eval_infos(paths: Sequence[str | Path]) -> dict[str, Any]:
    """One ``eval_info.json`` (as a dict) from the shard runs' (directories or files): every shard
    ``0..n-1`` exactly once, all of one evaluation; records in episode order."""
    if not paths:
        raise UserError("merge= needs the output directories of the shard runs: merge=[dir,...]")
    infos = [_read_info(p) for p in paths]
    bad = [str(p) for p, info in zip(paths, infos, strict=True) if info.get("shard") is None]
    if bad:
        raise UserError(f"not a shard run (evaluated without shard=i/n): {', '.join(bad)}")
    shards: list[dict[str, Any]] = [info["shard"] for info in infos]
    counts = {int(s["count"]) for s in shards}
    if len(counts) != 1:
        raise UserError(f"the shards were cut into different counts {sorted(counts)}; rerun them")
    n = counts.pop()
    seen = sorted(int(s["index"]) for s in shards)
    if seen != list(range(n)):
        missing = sorted(set(range(n)) - set(seen))
        dupes = sorted({i for i in seen if seen.count(i) > 1})
        raise UserError(
            f"merge needs shards 0..{n - 1} of {n} once each; missing {missing or 'none'}, "
            f"repeated {dupes or 'none'}"
        )
    first = infos[0]
    for p, info in zip(paths[1:], infos[1:], strict=True):
        for key in SAME_KEYS:
            if info.get(key) != first.get(key):
                raise UserError(
                    f"{p} is not a shard of the same evaluation as {paths[0]}: its {key} differs"
                )
    records = sorted((r for info in infos for r in info["per_episode"]), key=lambda r: r["index"])
    n_total = int(first["positions"]["n"])
    if [r["index"] for r in records] != list(range(n_total)):
        raise UserError(f"the shards' episodes do not cover 0..{n_total - 1} once each")
    return _merged(first, infos, records, [str(p) for p in paths])


def _merged(
    first: dict[str, Any], infos: list[dict[str, Any]], records: list[dict], sources: list[str]
) -> dict[str, Any]:
    n_success = sum(bool(r["success"]) for r in records)
    lo, hi = wilson_interval(n_success, len(records))
    lengths = [r["steps"] for r in records]
    ok = [r["steps"] for r in records if r["success"]]
    total = {k: sum(float(i.get(k) or 0.0) for i in infos) for k in ("eval_s", "rollout_s")}
    steps = sum(int(i.get("env_steps") or 0) for i in infos)
    merged = {k: v for k, v in first.items() if k not in ("shard", "plot_path")}
    merged.update(
        pc_success=100.0 * n_success / len(records),
        n_success=n_success,
        n_episodes=len(records),
        ci95=[100.0 * lo, 100.0 * hi],
        avg_episode_length=float(np.mean(lengths)),
        avg_success_length=float(np.mean(ok)) if ok else None,
        eval_s=total["eval_s"],
        eval_ep_s=total["eval_s"] / len(records),
        rollout_s=total["rollout_s"],
        startup_s=sum(float(i.get("startup_s") or 0.0) for i in infos),
        env_steps=steps,
        env_steps_per_s=steps / total["rollout_s"] if total["rollout_s"] > 0 else 0.0,
        workers=[i.get("workers") for i in infos],
        per_episode=records,
        video_paths=[v for i in infos for v in i.get("video_paths", [])],
        merged_from=sources,
    )
    return merged
