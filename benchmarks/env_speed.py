"""Env steps/s with and without rendering, and collection frames/s with 1 and 2 workers.

    python benchmarks/env_speed.py [--steps 200] [--episodes 6]

Prints one table; the collection rows are measured in the same run, so their ratio is meaningful.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from envs.cube_pick import CubePickEnv  # noqa: E402
from robo_s2.data.collection import collect  # noqa: E402

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"steps": 3, "episodes": 1, "collect_size": 32}


def env_steps_per_second(steps: int, **env_kwargs) -> float:
    env = CubePickEnv(**env_kwargs)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(
            rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        )
        if terminated or truncated:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def collection_frames_per_second(
    episodes: int, workers: int, image_size: int
) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        res = collect(
            out=f"{tmp}/bench.zarr",
            n_episodes=episodes,
            env_kwargs={"image_size": image_size},
            seed=0,
            workers=workers,
        )
        seconds = time.perf_counter() - start
    return res.n_frames / seconds, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--collect-size", type=int, default=224)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()

    rows = [("env steps/s, no rendering", env_steps_per_second(args.steps, render_images=False))]
    for size in (224, 448):
        rows.append(
            (f"env steps/s, render {size}²", env_steps_per_second(args.steps, image_size=size))
        )
    base = None
    for workers in (1, 2):
        fps, seconds = collection_frames_per_second(args.episodes, workers, args.collect_size)
        base = base or fps
        rows.append(
            (
                f"collect frames/s, {workers} worker(s), {args.collect_size}² "
                f"({args.episodes} eps, {seconds:.1f} s, x{fps / base:.2f})",
                fps,
            )
        )
    width = max(len(name) for name, _ in rows)
    print(f"{'measurement':<{width}}  value")
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.1f}")


if __name__ == "__main__":
    main()
