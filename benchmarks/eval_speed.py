"""Env steps/s of ``robo-s2 eval`` with 1 and 2 env worker processes (and in-process), same run.

    python benchmarks/eval_speed.py [--episodes 4] [--steps 40] [--image-size 224] [--encoder vit_t]

Builds a random-init checkpoint (the encoder config given, a default-size chunk transformer) for a
224-px env in a temporary directory, evaluates it on the same positions with workers=0, 1, 2 (2 both
in lockstep and pipelined) and prints one table: the median over interleaved rounds (so background
load on a shared machine hits every setting alike); the ratio column is relative to 1 worker.
Every episode runs to the horizon (the untrained policy never lifts the cube), so all rows do the
same work; times exclude starting the worker processes (``rollout_s`` in eval_info.json). Per-episode records are checked to be identical across worker counts.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robo_s2.evaluate import evaluate  # noqa: E402


def build_checkpoint(directory: Path, encoder_name: str, image_size: int) -> Path:
    from envs.cube_pick import CubePickEnv
    from policies import create_policy
    from robo_s2.checkpoint import save_checkpoint
    from robo_s2.encoders import create_encoder

    torch.manual_seed(0)
    encoder = create_encoder(encoder_name)
    policy = create_policy("chunk_transformer", feature_dim=encoder.feature_dim, proprio_dim=11,
                           action_dim=4)  # fmt: skip
    rng = np.random.default_rng(0)
    policy.fit_normalizer(
        {
            "feature": rng.normal(size=(64, encoder.feature_dim)).astype(np.float32),
            "proprio": rng.normal(size=(64, 11)).astype(np.float32),
            "action": rng.normal(0, 0.3, size=(64, 4)).astype(np.float32),
        }
    )
    env = CubePickEnv(image_size=image_size, render_images=False)
    meta = {"env": env.describe(), "image_key": "image"}
    env.close()
    return save_checkpoint(directory / "checkpoints" / "best", policy, encoder, meta, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="max_episode_steps of each episode")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--encoder", default="vit_t")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (shared CPUs)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = build_checkpoint(Path(tmp), args.encoder, args.image_size)
        runs = []
        for workers in (int(w) for w in args.workers.split(",")):
            runs.append((workers, False))
            if workers >= 2:
                runs.append((workers, True))
        seconds: dict[tuple[int, bool], list[float]] = {run: [] for run in runs}
        reference, steps = None, 0
        for _ in range(args.repeats):  # rounds interleave the settings: shared-CPU noise hits all
            for workers, pipeline in runs:
                res = evaluate(
                    ckpt, n_episodes=args.episodes, positions="random", seed=0, workers=workers,
                    pipeline=pipeline, n_videos=0,
                    env_overrides={"max_episode_steps": args.steps},
                )  # fmt: skip
                records = [r.to_dict() for r in res.records]
                reference = reference or records
                assert records == reference, "per-episode records differ between worker counts"
                seconds[(workers, pipeline)].append(res.info["rollout_s"])
                steps = res.env_steps
    rows = []
    for (workers, pipeline), times in seconds.items():
        mode = "pipelined" if pipeline else ("in-process" if workers == 0 else "lockstep")
        best = float(np.median(times))
        rows.append((workers, mode, steps, best, steps / best))
    base = next((r[4] for r in rows if r[0] == 1), rows[0][4])
    print(
        f"eval speed: {args.encoder} + chunk_transformer, {args.image_size}px, {args.episodes} "
        f"episodes x {args.steps} steps, torch threads {args.threads}, {os.cpu_count()} CPUs, "
        f"device {res.info['device']}, median of {args.repeats}, load average before "
        f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'workers':>8} {'mode':>11} {'env steps':>10} {'seconds':>8} {'steps/s':>8} "
        f"{'vs 1 worker':>12}"
    )
    for workers, mode, steps, secs, rate in rows:
        print(
            f"{workers:>8} {mode:>11} {steps:>10} {secs:>8.1f} {rate:>8.1f} {rate / base:>11.2f}x"
        )
    print("per-episode records identical across worker counts: yes")


if __name__ == "__main__":
    main()
