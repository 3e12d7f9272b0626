"""Env steps/s of ``robo-s2 eval`` against the bound its own costs imply: old and new side by side.

    python benchmarks/eval_speed.py [--encoders vit_t] [--sizes 64,112] [--episodes 32]
        [--steps 40] [--arms old,plan,new] [--busy] [--repeats 2]
    python benchmarks/eval_speed.py --plan-sweep 1,2,4,8,16   # envs per worker process instead

Arms (the render profile of the demos, hence of the evaluation, and how the CPU is used):

* ``old`` — what ``robo-s2 eval`` did before the CPU plan: 2 env processes of one env each, torch
  at its default thread count (one per core) in this process, llvmpipe threads split between the
  processes (``LP_NUM_THREADS`` = cores / 2); meshes 28 x 16 (MuJoCo's default tessellation).
* ``plan`` — the same frames under :func:`robo_s2.evaluation.cpu_plan.plan_cpu` for the cores
  present (envs per process, torch threads, llvmpipe in the calling thread).
* ``new`` — the plan with coarse meshes (``--mesh``, default 8 x 4), the tessellation A/B's arm
  (docs/results/render_tessellation).

Checkpoints: the table8_cpu recipe at random init (ViT-T with 2x2 grid pooling, chunk transformer
d_model 64, 2 layers, history 16, temporal ensembling), rendered and encoded at each ``--sizes``.
Every episode runs to the horizon (the untrained policy never lifts the cube), so every arm does the
same work; rounds interleave the arms so that background load hits them alike, and the median of
``--repeats`` is reported. Times exclude starting the env processes.

The bound: each arm's isolated per-step costs, measured here on one thread with nothing else
running (render, physics + IK, the encoder per frame at the arm's inference batch, the policy per
env at that batch), summed to CPU-ms per env step; ``cores x 1000 / that`` is the most env steps/s
the cores could give if nothing else cost anything. The table prints achieved steps/s as a
percentage of it. ``--busy`` repeats every arm with one core kept busy by an unrelated process.
Per-episode records of ``old`` and ``plan`` (same frames, other batches) are compared.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from robo_s2.evaluation.cpu_plan import available_cores, plan_cpu  # noqa: E402
from robo_s2.evaluation.runner import evaluate  # noqa: E402

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"sizes": "32", "episodes": 2, "steps": 2, "repeats": 1, "cost_repeats": 2}
FULL_MESH = (28, 16)


def arm_settings(arm: str, mesh: tuple[int, int], cores: int) -> tuple[dict, dict]:
    """Arm -> (render profile over the env's default, evaluate() keyword arguments)."""
    old_plan = {"workers": 2, "envs_per_worker": 1, "threads": cores}
    if arm == "old":
        return {"numslices": FULL_MESH[0], "numstacks": FULL_MESH[1]}, old_plan
    if arm == "plan":
        return {"numslices": FULL_MESH[0], "numstacks": FULL_MESH[1]}, {}
    if arm == "new":
        return {"numslices": mesh[0], "numstacks": mesh[1]}, {}
    raise SystemExit(f"unknown arm {arm!r}; choose from old, plan, new")


def build_checkpoint(directory: Path, encoder_name: str, size: int, env_kwargs: dict) -> Path:
    """A random-init table8_cpu-recipe policy whose demos were rendered with ``env_kwargs``."""
    from envs.cube_pick import CubePickEnv
    from policies import create_policy
    from robo_s2.encoders import create_encoder
    from robo_s2.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    encoder = create_encoder(encoder_name, image_size=size, pooling="grid:2")
    policy = create_policy(
        "chunk_transformer", feature_dim=encoder.feature_dim, proprio_dim=11, action_dim=4,
        d_model=64, n_layers=2, dropout=0.0, feature_tokens=4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    policy.fit_normalizer(
        {
            "feature": rng.normal(size=(64, encoder.feature_dim)).astype(np.float32),
            "proprio": rng.normal(size=(64, 11)).astype(np.float32),
            "action": rng.normal(0, 0.3, size=(64, 4)).astype(np.float32),
        }
    )
    env = CubePickEnv(image_size=size, render_images=False, **env_kwargs)
    meta = {"env": env.describe(), "image_key": "image", "feature_precision": "fp32"}
    env.close()
    return save_checkpoint(directory / "checkpoints" / "best", policy, encoder, meta, {})


def _median_ms(fn, n: int) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def step_costs(ckpt: Path, batch: int, repeats: int) -> dict[str, float]:
    """Isolated ms per env step on one thread: render, physics + IK, encoder and policy (each per
    env at inference batch ``batch``)."""
    from envs import make_env
    from robo_s2.encoders.feature_cache import encode_frames
    from robo_s2.evaluation.runner import checkpoint_env_kwargs
    from robo_s2.training.checkpoint import load_checkpoint, read_meta

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        env = make_env({**checkpoint_env_kwargs(read_meta(ckpt)), "render_images": True})
        obs, _ = env.reset(seed=0)
        out = {"render": _median_ms(lambda: env.render_camera("front"), 5 * repeats)}
        env.render_images = False
        out["physics"] = _median_ms(lambda: env.step(np.zeros(4, np.float32)), 5 * repeats)
        env.close()
        loaded = load_checkpoint(ckpt)
        enc, policy = loaded.encoder, loaded.policy.eval()
        frames = np.repeat(obs["image"][None], batch, axis=0)
        cpu = torch.device("cpu")
        out["encoder"] = _median_ms(lambda: encode_frames(enc, frames, cpu, "fp32"), repeats)
        out["encoder"] /= batch
        policy.reset(batch)
        inputs = {
            "feature": np.zeros((batch, enc.feature_dim), np.float32),
            "proprio": np.zeros((batch, policy.proprio_dim), np.float32),
        }
        with torch.no_grad():
            out["policy"] = _median_ms(lambda: policy.act(inputs), repeats) / batch
    finally:
        torch.set_num_threads(before)
    return out


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    x = 0
    while not stop.is_set():
        x = (x * 7 + 1) % 1000003


class BusyCore:
    """One unrelated process spinning on a core for the duration of a ``with`` block."""

    def __enter__(self) -> BusyCore:
        ctx = multiprocessing.get_context("spawn")
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=_spin, args=(self.stop,), daemon=True)
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.proc.join(timeout=5)


def run_arm(
    ckpt: Path, args: argparse.Namespace, plan: dict, busy: bool, raster: int | None = None
) -> tuple[float, dict]:
    """(rollout seconds, eval_info) of one evaluation; ``raster``: LP_NUM_THREADS of the env
    processes (the old code's split of the CPUs), else the plan's."""
    kw = dict(
        n_episodes=args.episodes, positions="random", seed=0, n_videos=0, precision="fp32",
        env_overrides={"max_episode_steps": args.steps}, **plan,
    )  # fmt: skip
    if raster is not None:
        os.environ["LP_NUM_THREADS"] = str(raster)  # the workers keep a setting they inherit
    try:
        if busy:
            with BusyCore():
                res = evaluate(ckpt, **kw)
        else:
            res = evaluate(ckpt, **kw)
    finally:
        if raster is not None:
            del os.environ["LP_NUM_THREADS"]
    return res.info["rollout_s"], res.info


def compare_arms(args: argparse.Namespace) -> None:
    cores = available_cores()
    mesh = tuple(int(v) for v in args.mesh.split("x"))
    arms = args.arms.split(",")
    loads = [False, True] if args.busy else [False]
    settings = [(e, int(s), a, b) for e in args.encoders.split(",")
                for s in args.sizes.split(",") for a in arms for b in loads]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for enc, size, arm, _ in settings:
            if (enc, size, arm) not in ckpts:
                profile, _plan = arm_settings(arm, mesh, cores)  # type: ignore[arg-type]
                path = Path(tmp) / f"{enc}-{size}-{arm}"
                ckpts[(enc, size, arm)] = build_checkpoint(path, enc, size, profile)
        seconds: dict[tuple, list[float]] = {s: [] for s in settings}
        info: dict[tuple, dict] = {}
        for _ in range(args.repeats):  # rounds interleave the settings: shared-CPU noise hits all
            for enc, size, arm, busy in settings:
                _profile, plan = arm_settings(arm, mesh, cores)  # type: ignore[arg-type]
                raster = max(1, cores // 2) if arm == "old" else None
                secs, inf = run_arm(ckpts[(enc, size, arm)], args, plan, busy, raster)
                seconds[(enc, size, arm, busy)].append(secs)
                info[(enc, size, arm, busy)] = inf
        costs = {}
        for enc, size, arm, busy in settings:
            batch = int(info[(enc, size, arm, busy)]["cpu_plan"]["batch"])
            if (enc, size, arm, batch) not in costs:
                costs[(enc, size, arm, batch)] = step_costs(
                    ckpts[(enc, size, arm)], batch, args.cost_repeats
                )
    _print_table(args, settings, seconds, info, costs, cores, mesh)


def _print_table(args, settings, seconds, info, costs, cores, mesh) -> None:
    print(
        f"eval speed vs its bound: {args.episodes} episodes x {args.steps} steps, {cores} cores "
        f"({os.cpu_count()} CPUs), old = 2 workers x 1 env, {cores} torch threads, meshes 28x16; "
        f"plan = cpu_plan; new = plan + meshes {mesh[0]}x{mesh[1]}; median of {args.repeats}; "
        f"load average after {os.getloadavg()[0]:.2f}"
    )
    print(f"{'encoder':>8} {'size':>4} {'arm':>5} {'load':>5} {'plan (w x k, thr)':>18} "
          f"{'render':>7} {'physics':>7} {'encoder':>7} {'policy':>7} {'bound':>7} "
          f"{'steps/s':>8} {'of bound':>8} {'vs old':>7}")  # fmt: skip
    rates = {}
    for s in settings:
        rates[s] = info[s]["env_steps"] / float(np.median(seconds[s]))
    for enc, size, arm, busy in settings:
        s = (enc, size, arm, busy)
        p = info[s]["cpu_plan"]
        c = costs[(enc, size, arm, int(p["batch"]))]
        per_step = c["render"] + c["physics"] + c["encoder"] + c["policy"]
        bound = cores * 1000.0 / per_step
        old = rates.get((enc, size, "old", busy))
        ratio = f"{rates[s] / old:.2f}x" if old and arm != "old" else ""
        shape = f"{p['workers']}x{p['envs_per_worker']}, {p['torch_threads']}"
        print(
            f"{enc:>8} {size:>4} {arm:>5} {'busy' if busy else 'idle':>5} {shape:>18} "
            f"{c['render']:>7.2f} {c['physics']:>7.2f} {c['encoder']:>7.2f} {c['policy']:>7.2f} "
            f"{bound:>7.1f} {rates[s]:>8.1f} {100 * rates[s] / bound:>7.0f}% {ratio:>7}"
        )
    print("(per-step ms on one thread: render, physics + IK, encoder and policy per env at the "
          "arm's batch; bound = cores x 1000 / their sum, env steps/s)")  # fmt: skip
    if args.busy:
        for enc, size, arm, _ in settings[::2]:
            idle, busy = rates[(enc, size, arm, False)], rates[(enc, size, arm, True)]
            print(f"{enc} {size} {arm}: one core busy keeps {100 * busy / idle:.0f}% of idle speed")
    for enc, size, arm, busy in settings:
        if arm == "plan" and (enc, size, "old", busy) in info:
            a = info[(enc, size, "old", busy)]["per_episode"]
            b = info[(enc, size, "plan", busy)]["per_episode"]
            same = sum(x == y for x, y in zip(a, b, strict=True))
            print(f"per-episode records old vs plan ({enc} {size}): {same}/{len(a)} identical")


def plan_sweep(args: argparse.Namespace) -> None:
    """Env steps/s for each envs-per-worker count under the plan otherwise (chooses its target)."""
    enc, size = args.encoders.split(",")[0], int(args.sizes.split(",")[0])
    mesh = tuple(int(v) for v in args.mesh.split("x"))
    ks = [int(k) for k in args.plan_sweep.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        profile = {"numslices": mesh[0], "numstacks": mesh[1]}
        ckpt = build_checkpoint(Path(tmp), enc, size, profile)
        seconds: dict[int, list[float]] = {k: [] for k in ks}
        steps = 0
        for _ in range(args.repeats):
            for k in ks:
                secs, inf = run_arm(ckpt, args, {"envs_per_worker": k}, busy=False)
                seconds[k].append(secs)
                steps = inf["env_steps"]
    auto = plan_cpu(args.episodes)
    print(f"eval speed by envs per worker: {enc} {size}px, meshes {mesh[0]}x{mesh[1]}, "
          f"{args.episodes} episodes x {args.steps} steps, plan otherwise auto ({auto.workers} "
          f"workers, {auto.torch_threads} torch threads), median of {args.repeats}")  # fmt: skip
    base = steps / float(np.median(seconds[ks[0]]))
    print(f"{'envs/worker':>11} {'batch':>6} {'steps/s':>8} {f'vs {ks[0]}':>7}")
    for k in ks:
        rate = steps / float(np.median(seconds[k]))
        batch = plan_cpu(args.episodes, envs_per_worker=k).batch
        print(f"{k:>11} {batch:>6} {rate:>8.1f} {rate / base:>6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", default="vit_t")
    parser.add_argument("--sizes", default="64,112", help="render = encoder sizes")
    parser.add_argument("--episodes", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="max_episode_steps of each episode")
    parser.add_argument("--arms", default="old,plan,new", help="old first")
    parser.add_argument("--mesh", default="8x4", help="the new arm's numslices x numstacks")
    parser.add_argument("--busy", action="store_true", help="also with one core kept busy")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the median is reported")
    parser.add_argument("--cost-repeats", type=int, default=7, help="timings per isolated cost")
    parser.add_argument("--plan-sweep", default=None, help="e.g. 1,2,4,8,16 envs per worker")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = parser.parse_args()
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args()
    if args.plan_sweep:
        plan_sweep(args)
    else:
        compare_arms(args)


if __name__ == "__main__":
    main()
