"""Scripted-expert demonstration collection into a demo store, with parallel env workers.

Episodes are produced by worker processes (spawned, one env and one renderer each) and appended by
this process alone, in attempt order, so the store is the same whatever the number of workers and an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import math
import signal
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from robo_s2.core.process import start_orphan_watch
from robo_s2.errors import UserError

# Patch sizes of the encoders robo_s2 supports (ViT/16 and ViT/14): renders must tile into patches.
PATCH_SIZES = (16, 14)
# random: the env's own uniform draw per attempt; stratified: one attempt per cell of a jittered
# grid over the cube region, so that n demos leave no large gap (iid draws of 120 over a 30 x 30 cm
# region leave failures of the policy where the nearest demo is far, docs/results/table8_cpu_small)
PLACEMENTS = ("random", "stratified")
_STRATIFIED_STREAM = 0x5354


@dataclass
class CollectResult:
    n_new: int = 0
    n_total: int = 0
    n_frames: int = 0
    attempts: int = 0
    successes: int = 0
    discarded: int = 0
    seconds: float = 0.0
    episode_lengths: list[int] = field(default_factory=list)

    @property
    def expert_success_rate(self) -> float:
        return self.successes / max(self.attempts, 1)


def attempt_seed(seed: int, attempt: int) -> int:
    """Seed of one collection attempt: a function of (run seed, attempt index) only."""
    return int(np.random.SeedSequence([seed, attempt]).generate_state(1)[0])


def check_image_size(size: int) -> None:
    if not isinstance(size, int) or size <= 0:
        raise UserError(f"env.image_size={size!r} must be a positive integer (e.g. 224 or 448)")
    if not any(size % p == 0 for p in PATCH_SIZES):
        raise UserError(
            f"env.image_size={size} is not a multiple of an encoder patch size {PATCH_SIZES}; "
            "use e.g. 64, 112, 224 or 448"
        )


def stratified_placements(
    n: int, region: Any, seed: int, n_attempts: int
) -> list[tuple[float, float]]:
    """Cube (x, y) of attempts 0..n_attempts-1: passes over a jittered grid of >= n cells.

    The grid has rows x cols >= n cells shaped like the region; each pass visits its cells in a
    seeded random order, at a seeded uniform point inside each cell. Attempt k of a store takes
    placement k, so a failed attempt leaves its cell to a later pass and a resume continues the list.
    """
    (x0, x1), (y0, y1) = ((float(a), float(b)) for a, b in region)
    w, h = max(x1 - x0, 1e-9), max(y1 - y0, 1e-9)
    rows = max(1, round(math.sqrt(n * h / w)))
    cols = max(1, math.ceil(n / rows))
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_STRATIFIED_STREAM,)))
    out: list[tuple[float, float]] = []
    while len(out) < n_attempts:
        cells = rng.permutation(rows * cols)
        u = rng.random((len(cells), 2))
        for c, (ux, uy) in zip(cells, u, strict=True):
            r, q = divmod(int(c), cols)
            out.append((x0 + (q + ux) * w / cols, y0 + (r + uy) * h / rows))
    return out[:n_attempts]


# --- worker side ---------------------------------------------------------------------------------

_worker_env = None
_worker_expert = None


def _init_worker(env_kwargs: dict[str, Any], expert_kwargs: dict[str, Any]) -> None:
    global _worker_env, _worker_expert
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the collector's to handle
    start_orphan_watch()
    _worker_env, _worker_expert = make_env_and_expert(env_kwargs, expert_kwargs)


def make_env_and_expert(env_kwargs: dict[str, Any], expert_kwargs: dict[str, Any]):
    """The env an env spec describes (``envs.make_env``: ``id`` picks the task) and its expert."""
    from envs import make_env
    from envs.expert import ScriptedExpert

    env = make_env(env_kwargs)
    return env, ScriptedExpert.for_env(env, **expert_kwargs)


def run_expert_episode(
    env, expert, seed: int, cube_pos: tuple[float, float] | None = None
) -> tuple[dict[str, np.ndarray], bool]:
    """One expert episode; returns per-step arrays (obs at t, action at t, the env's reward after
    action t) and its success.

    ``cube_pos`` forces the cube's (x, y); its yaw (when randomized) still comes from ``seed``.
    """
    obs, _ = env.reset(seed=seed, options={"cube_pos": cube_pos} if cube_pos is not None else None)
    expert.reset(seed=seed)
    steps: dict[str, list[np.ndarray]] = {}
    success = False
    while True:
        action = np.asarray(expert.act(obs), dtype=np.float32)
        for key, value in obs.items():
            steps.setdefault(key, []).append(np.asarray(value))
        steps.setdefault("action", []).append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        steps.setdefault("reward", []).append(np.asarray(reward, np.float32))  # r_t: after action t
        success = success or bool(info.get("is_success", False))
        if terminated or truncated:
            break
    return {key: np.stack(values) for key, values in steps.items()}, success


def _worker_episode(
    seed: int, cube_pos: tuple[float, float] | None
) -> tuple[dict[str, np.ndarray], bool]:
    return run_expert_episode(_worker_env, _worker_expert, seed, cube_pos)


# --- main side -----------------------------------------------------------------------------------


def _episode_stream(
    env_kwargs: dict[str, Any],
    expert_kwargs: dict[str, Any],
    attempts: Iterator[tuple[int, tuple[float, float] | None]],
    workers: int,
) -> Generator[tuple[dict[str, np.ndarray], bool]]:
    """Yield episodes of (seed, cube_pos) attempts in order; with workers keep 2 each in flight."""
    if workers <= 0:
        env, expert = make_env_and_expert(env_kwargs, expert_kwargs)
        try:
            for seed, cube_pos in attempts:
                yield run_expert_episode(env, expert, seed, cube_pos)
        finally:
            env.close()
        return
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init_worker,
        initargs=(env_kwargs, expert_kwargs),
    ) as pool:
        pending: deque[Future] = deque()
        try:
            for seed, cube_pos in attempts:
                pending.append(pool.submit(_worker_episode, seed, cube_pos))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


def collect(
    out: str | Path,
    n_episodes: int,
    env_kwargs: dict[str, Any],
    expert_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    workers: int = 0,
    keep_failed: bool = False,
    max_attempts: int | None = None,
    store_format: int = 3,
    on_episode: Callable[[CollectResult], None] | None = None,
    placement: str = "random",
) -> CollectResult:
    """Fill the store at ``out`` with ``n_episodes`` expert episodes, resuming an existing store.

    ``placement`` (``PLACEMENTS``) is how cube positions are drawn: ``random`` by the env per
    attempt, ``stratified`` over a jittered grid of ``n_episodes`` cells (``stratified_placements``).
    """
    _check_collect_args(n_episodes, env_kwargs, workers, placement)
    expert_kwargs = dict(expert_kwargs or {})

    from envs import make_env
    from robo_s2.data.store import DemoStore

    probe = make_env({**env_kwargs, "render_images": False})
    env_desc = probe.describe()
    region = probe.cube_region
    probe.close()
    attrs = _new_store_attrs(env_desc, seed, expert_kwargs, keep_failed, placement)
    store = DemoStore.open_or_create(out, attrs, store_format, check_attrs=("env",), mode="r")
    if store.mode == "r" and store.n_episodes < n_episodes:
        # only a store that needs episodes takes the append lock: a full one is just checked, so
        # another process caching features in it (a training run) does not block this call
        store = DemoStore.open_or_create(out, attrs, store_format, check_attrs=("env",))
    progress = dict(store.attrs.get("collect_progress", {}))
    layout = _check_resume(store, out, progress, seed, placement, n_episodes)

    result = CollectResult(n_total=store.n_episodes, n_frames=store.n_frames)
    first_attempt = int(progress.get("next_attempt", store.n_episodes))
    needed = n_episodes - store.n_episodes
    if needed <= 0:
        store.close()
        return result
    limit = max_attempts if max_attempts is not None else 2 * needed + 20

    cube_xy: list[tuple[float, float]] | None = None
    if placement == "stratified":
        cube_xy = stratified_placements(n_episodes, region, seed, first_attempt + limit)

    start = time.perf_counter()
    attempts = _attempts(seed, first_attempt, limit, cube_xy)
    stream = _episode_stream(env_kwargs, expert_kwargs, attempts, workers)
    try:
        _store_episodes(
            store, stream, result, n_episodes, keep_failed, seed, layout, first_attempt, progress,
            on_episode,
        )  # fmt: skip
    finally:
        stream.close()
        store.close()
        result.seconds = time.perf_counter() - start
    if result.n_total < n_episodes:
        raise UserError(
            f"the expert succeeded only {result.successes}/{result.attempts} times; the store "
            f"holds {result.n_total}/{n_episodes} episodes. Lower expert.noise_std or raise "
            "max_attempts"
        )
    return result


def _check_collect_args(
    n_episodes: int, env_kwargs: dict[str, Any], workers: int, placement: str
) -> None:
    if n_episodes <= 0:
        raise UserError(f"n_episodes={n_episodes} must be > 0")
    if placement not in PLACEMENTS:
        raise UserError(
            f"placement={placement!r} is unknown; choose one of: {', '.join(PLACEMENTS)}"
        )
    check_image_size(env_kwargs.get("image_size", 224))
    if workers < 0:
        raise UserError(f"workers={workers} must be >= 0 (0 runs the env in this process)")


def _new_store_attrs(
    env_desc: dict[str, Any],
    seed: int,
    expert_kwargs: dict[str, Any],
    keep_failed: bool,
    placement: str,
) -> dict[str, Any]:
    return {
        "env": env_desc,
        "control_hz": env_desc.get("control_hz"),
        "action_semantics": env_desc.get("action_semantics"),
        "proprio_semantics": env_desc.get("proprio_semantics"),
        "state_semantics": env_desc.get("state_semantics"),
        "cameras": env_desc.get("cameras"),
        "source": "robo_s2 collect (scripted expert)",
        "collect": {
            "seed": seed,
            "expert": expert_kwargs,
            "keep_failed": keep_failed,
            "placement": placement,
        },
    }


def _check_resume(
    store: Any,
    out: str | Path,
    progress: dict[str, Any],
    seed: int,
    placement: str,
    n_episodes: int,
) -> dict[str, Any]:
    """Refuse to resume a store collected otherwise (closing it); the placement layout to record."""
    if store.n_episodes and progress.get("seed", seed) != seed:
        store.close()
        raise UserError(
            f"{out} was collected with seed={progress['seed']}, not seed={seed}; "
            f"resume with seed={progress['seed']} or choose another out="
        )
    # a stratified grid is laid out for its number of cells: resuming must keep both
    layout = {"placement": placement, "cells": n_episodes if placement == "stratified" else None}
    recorded = {k: progress.get(k, "random" if k == "placement" else None) for k in layout}
    if store.n_episodes and recorded != layout:
        store.close()
        raise UserError(
            f"{out} was collected with placement={recorded['placement']}"
            + (f" over {recorded['cells']} cells" if recorded["cells"] else "")
            + f", not placement={placement}"
            + (f" over {n_episodes} cells" if layout["cells"] else "")
            + "; resume with the same placement and n_episodes or choose another out="
        )
    return layout


def _attempts(
    seed: int, first_attempt: int, limit: int, cube_xy: list[tuple[float, float]] | None
) -> Iterator[tuple[int, tuple[float, float] | None]]:
    """(seed, cube position) of attempts ``first_attempt`` .. ``first_attempt + limit - 1``."""
    for k in range(first_attempt, first_attempt + limit):
        yield attempt_seed(seed, k), (cube_xy[k] if cube_xy is not None else None)


def _store_episodes(
    store: Any,
    stream: Iterator[tuple[dict[str, np.ndarray], bool]],
    result: CollectResult,
    n_episodes: int,
    keep_failed: bool,
    seed: int,
    layout: dict[str, Any],
    first_attempt: int,
    progress: dict[str, Any],
    on_episode: Callable[[CollectResult], None] | None,
) -> None:
    """Append the kept episodes of ``stream`` until the store holds ``n_episodes``."""
    for episode, success in stream:
        result.attempts += 1
        result.successes += int(success)
        kept = success or keep_failed
        result.discarded += int(not kept)
        progress_attrs = {
            "collect_progress": {
                "seed": seed,
                **layout,
                "next_attempt": first_attempt + result.attempts,
                "attempts": int(progress.get("attempts", 0)) + result.attempts,
                "discarded": int(progress.get("discarded", 0)) + result.discarded,
            }
        }
        if kept:  # the progress commits with the episode: a resume never repeats a placement
            store.append_episode(episode, attrs=progress_attrs)
            result.n_new += 1
            result.n_total += 1
            result.n_frames = store.n_frames
            result.episode_lengths.append(len(episode["action"]))
        else:
            store.update_attrs(progress_attrs)
        if on_episode is not None:
            on_episode(result)
        if result.n_total >= n_episodes:
            break
