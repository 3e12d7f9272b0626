"""Env steps/s of ``robo-s2 eval`` (render + physics + encoder + policy): old vs new frame cost.

    python benchmarks/eval_speed.py [--encoders vit_t,vit_t_s2] [--sizes 112,224] [--episodes 4]
        [--steps 30] [--workers 2] [--repeats 2]
    python benchmarks/eval_speed.py --worker-sweep 0,1,2     # the worker-count comparison instead

Default mode: for every encoder and render size, random-init checkpoints (a default-size chunk
transformer) whose demos were rendered with the **old** profile (shadows, 1024² shadow map, MSAA 4;
encoder in fp32), the **new** default (the env's default render profile; encoder precision
``auto``) and **noshadow** (no shadows, no MSAA, ``auto``: the cheapest frame, which the render A/B
in docs/results/render_profile found to cost success), evaluated on the same positions in the same
run, rounds interleaved so that background load hits every setting alike; the median of
``--repeats`` rounds is reported with the ratio to old. Every episode runs to
the horizon (the untrained policy never lifts the cube), so both do the same work. Times exclude
starting the worker processes (``rollout_s`` in eval_info.json).

``--worker-sweep``: one checkpoint, evaluated with each worker count (2 both in lockstep and
pipelined), ratios against 1 worker, per-episode records checked identical across worker counts.

``--frame-cost``: also print, for each setting, what one frame costs in isolation (render of the
front camera; encoder forward at batch 1 and at the eval batch), the numbers that say where the
time goes: render, physics, encoder forward at batch 1 and at the number of envs, policy step.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robo_s2.evaluation.runner import evaluate  # noqa: E402

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"encoders": "vit_t", "sizes": "32", "episodes": 1, "steps": 2, "workers": 0,
         "repeats": 1, "frame_cost": True}  # fmt: skip


def _arms() -> dict[str, tuple[dict, str]]:
    """Arm -> (render profile, encoder precision)."""
    import inspect

    from envs.cube_pick import LEGACY_RENDER_PROFILE, RENDER_PROFILE_KEYS, CubePickEnv

    params = inspect.signature(CubePickEnv).parameters
    default = {k: params[k].default for k in RENDER_PROFILE_KEYS}
    return {
        "old": (dict(LEGACY_RENDER_PROFILE), "fp32"),
        "new": (default, "auto"),
        "noshadow": ({"shadows": False, "shadow_size": 1024, "msaa_samples": 0}, "auto"),
    }


def encoder_overrides(name: str, size: int) -> dict:
    """The encoder config ``name`` at render size ``size`` (S²: the first scale at ``size``)."""
    if "s2" in name:
        return {"backbone": {"image_size": size}}
    return {"image_size": size}


def build_checkpoint(
    directory: Path, encoder_name: str, image_size: int, env_kwargs: dict, precision: str
) -> Path:
    from envs.cube_pick import CubePickEnv
    from policies import create_policy
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.feature_cache import feature_precision
    from robo_s2.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    encoder = create_encoder(encoder_name, **encoder_overrides(encoder_name, image_size))
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
    env = CubePickEnv(image_size=image_size, render_images=False, **env_kwargs)
    meta = {
        "env": env.describe(),
        "image_key": "image",
        # what `robo-s2 encode` (batch 64) would have cached the training features in
        "feature_precision": feature_precision(encoder, torch.device("cpu"), 64, precision),
    }
    env.close()
    return save_checkpoint(directory / "checkpoints" / "best", policy, encoder, meta, {})


def frame_cost(ckpt: Path, precision: str, batch: int) -> dict[str, float]:
    """ms per render, physics step, encoder forward at batch 1 and ``batch`` and policy step at
    ``batch`` (median of 7)."""
    from envs import make_env
    from robo_s2.encoders.feature_cache import encode_frames
    from robo_s2.evaluation.runner import checkpoint_env_kwargs, eval_precision
    from robo_s2.training.checkpoint import load_checkpoint, read_meta

    meta = read_meta(ckpt)
    env = make_env({**checkpoint_env_kwargs(meta), "render_images": True})  # the spec has an id
    obs, _ = env.reset(seed=0)

    def median_ms(fn, n=7) -> float:
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1e3 * float(np.median(times))

    out = {"render": median_ms(lambda: env.render_camera("front"))}
    out["physics"] = median_ms(lambda: env.step(np.zeros(4, np.float32)))  # step includes a render
    out["physics"] -= out["render"]
    env.close()
    loaded = load_checkpoint(ckpt)
    enc, policy = loaded.encoder, loaded.policy.eval()
    run = eval_precision(precision, meta.get("feature_precision"), torch.device("cpu"))
    for b in (1, batch):
        frames = np.repeat(obs["image"][None], b, axis=0)
        out[f"encoder@{b}"] = median_ms(
            lambda f=frames: encode_frames(enc, f, torch.device("cpu"), run)
        )
    policy.reset(batch)
    inputs = {
        "feature": np.zeros((batch, enc.feature_dim), np.float32),
        "proprio": np.zeros((batch, policy.proprio_dim), np.float32),
    }
    with torch.no_grad():
        out[f"policy@{batch}"] = median_ms(lambda: policy.act(inputs))
    out["precision"] = run
    return out


def profile_comparison(args: argparse.Namespace) -> None:
    arms = _arms()
    settings = [
        (enc, int(size), arm)
        for enc in args.encoders.split(",")
        for size in args.sizes.split(",")
        for arm in args.arms.split(",")
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for enc, size, arm in settings:
            profile, precision = arms[arm]
            path = Path(tmp) / f"{enc}-{size}-{arm}"
            ckpts[(enc, size, arm)] = (
                build_checkpoint(path, enc, size, profile, precision),
                precision,
            )
        seconds: dict[tuple, list[float]] = {s: [] for s in settings}
        info: dict[tuple, dict] = {}
        for _ in range(args.repeats):
            for setting in settings:
                ckpt, precision = ckpts[setting]
                res = evaluate(
                    ckpt, n_episodes=args.episodes, positions="random", seed=0,
                    workers=args.workers, n_videos=0, precision=precision,
                    env_overrides={"max_episode_steps": args.steps},
                )  # fmt: skip
                seconds[setting].append(res.info["rollout_s"])
                info[setting] = {
                    "steps": res.env_steps,
                    "precision": res.info["encoder"]["precision"],
                }
        costs = {}
        if args.frame_cost:
            n_envs = max(args.workers, 1)
            costs = {s: frame_cost(*ckpts[s], n_envs) for s in settings}
    described = "; ".join(
        f"{arm}: {', '.join(f'{k}={v}' for k, v in arms[arm][0].items())}, {arms[arm][1]}"
        for arm in args.arms.split(",")
    )
    print(
        f"eval speed by frame cost ({described}): chunk_transformer, {args.episodes} episodes x "
        f"{args.steps} steps, "
        f"workers {args.workers}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
        f"median of {args.repeats}, load average after {os.getloadavg()[0]:.2f}"
    )
    print(f"{'encoder':>10} {'size':>5} {'arm':>8} {'precision':>9} {'steps':>6} {'seconds':>8} "
          f"{'steps/s':>8} {'vs old':>8}")  # fmt: skip
    for enc, size, arm in settings:
        secs = float(np.median(seconds[(enc, size, arm)]))
        rate = info[(enc, size, arm)]["steps"] / secs
        old = info[(enc, size, "old")]["steps"] / float(np.median(seconds[(enc, size, "old")]))
        ratio = f"{rate / old:.2f}x" if arm != "old" else ""
        print(
            f"{enc:>10} {size:>5} {arm:>8} {info[(enc, size, arm)]['precision']:>9} "
            f"{info[(enc, size, arm)]['steps']:>6} {secs:>8.1f} {rate:>8.1f} {ratio:>8}"
        )
    if costs:
        print("\nwhere one step's time goes (ms, median of 7, in this process):")
        keys = [k for k in next(iter(costs.values())) if k != "precision"]
        print(f"{'encoder':>10} {'size':>5} {'arm':>8} " + " ".join(f"{k:>11}" for k in keys))
        for (enc, size, arm), c in costs.items():
            print(f"{enc:>10} {size:>5} {arm:>8} " + " ".join(f"{c[k]:>11.1f}" for k in keys))


def worker_sweep(args: argparse.Namespace) -> None:
    encoder = args.encoders.split(",")[0]
    size = int(args.sizes.split(",")[0])
    with tempfile.TemporaryDirectory() as tmp:
        profile, precision = _arms()["new"]
        ckpt = build_checkpoint(Path(tmp), encoder, size, profile, precision)
        runs = []
        for workers in (int(w) for w in args.worker_sweep.split(",")):
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
        f"eval speed by workers: {encoder} + chunk_transformer, {size}px, {args.episodes} "
        f"episodes x {args.steps} steps, torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} CPUs, median of {args.repeats}"
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="vit_t,vit_t_s2")
    parser.add_argument("--sizes", default="112,224", help="render sizes (S²: its first scale)")
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="max_episode_steps of each episode")
    parser.add_argument("--workers", type=int, default=2, help="env processes (eval's default)")
    parser.add_argument("--arms", default="old,new,noshadow", help="frame-cost arms, old first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the median is reported")
    parser.add_argument("--frame-cost", action="store_true", help="also time render and encoder")
    parser.add_argument("--worker-sweep", default=None, help="e.g. 0,1,2: compare worker counts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker_sweep:
        worker_sweep(args)
    else:
        profile_comparison(args)


if __name__ == "__main__":
    main()
