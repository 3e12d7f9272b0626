"""Scripted-expert success rate on random cube placements (no rendering), for any env config.

    python benchmarks/expert_success.py [--n 200] [--yaw no|yes|both|env] [--noise 0.05 [0 ...]]
        [--seed 0] [--env cube_pick_small] [--set cube_size=0.02 --set 'cube_region=[[..],[..]]']
        [--no-align-yaw] [--failures] [--json out.json]

The env is ``configs/env/<--env>.yaml`` (a config name or a YAML path; default: the constructor's
defaults) with each ``--set key=value`` (the value parsed as YAML) on top. ``--yaw`` runs the
config with ``randomize_yaw`` false, true or both; its default is ``both`` when neither ``--env``
nor ``--set randomize_yaw=...`` is given (as before those flags existed), else ``env`` (the
config's own). Prints one row per (yaw, noise): episodes, success rate with its Wilson 95 %
interval (``robo_s2.evaluation.stats``), mean and max episode length, retries, env steps/s and seconds.
``--no-align-yaw`` runs the expert without turning its hand to the cube's yaw (does the grasp
need it?); ``--failures`` lists each failed episode (seed, placement, the expert's last phase,
highest cube lift). Exits non-zero when a rate is below ``--min-rate``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.cube_pick import CubePickEnv
from envs.expert import ScriptedExpert
from robo_s2.evaluation.stats import wilson_interval
from robo_s2.experiments.runner import git_commit
from robo_s2.paths import env_config

# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {"n": 2}


def measure(
    n: int,
    env_kwargs: dict[str, Any],
    noise_std: float,
    seed: int,
    expert_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``n`` expert episodes (seeds ``seed .. seed + n - 1``) in ``CubePickEnv(**env_kwargs)``
    without rendering and summarise them (``failures`` lists the failed episodes)."""
    env = CubePickEnv(**{**env_kwargs, "render_images": False, "render_mode": None})
    expert = ScriptedExpert.for_env(env, noise_std=noise_std, **dict(expert_kwargs or {}))
    successes, lengths, retries, failures = 0, [], 0, []
    start = time.perf_counter()
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        expert.reset(seed=seed + i)
        max_lift = 0.0
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            max_lift = max(max_lift, float(info["cube_lift"]))
            if terminated or truncated:
                break
        successes += int(info["is_success"])
        lengths.append(info["steps"])
        retries += expert.retries
        if not info["is_success"]:
            x, y, yaw = info["cube_placement"]
            failures.append(
                {
                    "seed": seed + i,
                    "x": x,
                    "y": y,
                    "yaw": yaw,
                    "phase": expert.phase,
                    "retries": expert.retries,
                    "max_lift": max_lift,
                }
            )
    seconds = time.perf_counter() - start
    env.close()
    lo, hi = wilson_interval(successes, n)
    return {
        "n": n,
        "successes": successes,
        "success_rate": successes / n,
        "ci_low": lo,
        "ci_high": hi,
        "mean_len": float(np.mean(lengths)),
        "max_len": int(np.max(lengths)),
        "retries": retries,
        "steps_per_s": sum(lengths) / seconds,
        "seconds": seconds,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="episodes per configuration")
    parser.add_argument("--yaw", choices=("no", "yes", "both", "env"), default=None)
    parser.add_argument(
        "--noise", type=float, nargs="+", default=[0.05], help="expert noise_std (one or more)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first placement seed")
    parser.add_argument("--min-rate", type=float, default=0.98)
    parser.add_argument("--env", default=None, help="configs/env name or YAML path")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="env constructor argument (YAML value), repeatable",
    )
    parser.add_argument(
        "--no-align-yaw",
        action="store_true",
        help="the expert keeps its hand's yaw (does the grasp need to match the cube's?)",
    )
    parser.add_argument("--failures", action="store_true", help="list the failed episodes")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        parser.set_defaults(**SMOKE)
        args = parser.parse_args(argv)

    try:
        env_kwargs = env_config(args.env, args.sets)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(str(exc)) from None
    yaw = args.yaw or ("env" if args.env or "randomize_yaw" in env_kwargs else "both")
    configs = {
        "no": [False],
        "yes": [True],
        "both": [False, True],
        "env": [bool(env_kwargs.get("randomize_yaw", False))],
    }[yaw]
    expert_kwargs = {"align_yaw": False} if args.no_align_yaw else {}
    shown = {k: v for k, v in env_kwargs.items() if k != "randomize_yaw"}
    print(f"env: {args.env or 'constructor defaults'} {json.dumps(shown) if shown else ''}")
    if expert_kwargs:
        print(f"expert: {json.dumps(expert_kwargs)}")
    print(
        f"{'randomize_yaw':<14}{'noise':>6}{'n':>5}{'success':>9}{'95% CI':>16}{'mean len':>10}"
        f"{'max len':>9}{'retries':>9}{'steps/s':>9}{'seconds':>9}"
    )
    ok, rows = True, []
    for randomize_yaw in configs:
        for noise in args.noise:
            kwargs = {**env_kwargs, "randomize_yaw": randomize_yaw}
            r = measure(args.n, kwargs, noise, args.seed, expert_kwargs)
            ok &= r["success_rate"] >= args.min_rate
            ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
            print(
                f"{randomize_yaw!s:<14}{noise:>6.3g}{r['n']:>5}{r['success_rate']:>9.3f}{ci:>16}"
                f"{r['mean_len']:>10.1f}{r['max_len']:>9}{r['retries']:>9}"
                f"{r['steps_per_s']:>9.0f}{r['seconds']:>9.1f}"
            )
            if args.failures:
                for f in r["failures"]:
                    print(
                        f"    failed seed {f['seed']}: x={f['x']:.3f} y={f['y']:.3f} "
                        f"yaw={f['yaw']:+.3f} phase={f['phase']} retries={f['retries']} "
                        f"max_lift={f['max_lift']:.3f}"
                    )
            rows.append(
                {
                    "env_kwargs": kwargs,
                    "noise_std": noise,
                    "expert_kwargs": expert_kwargs,
                    "seed": args.seed,
                    **r,
                }
            )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"argv": sys.argv[1:] if argv is None else argv, "commit": git_commit()}
        args.json.write_text(json.dumps({**record, "rows": rows}, indent=2) + "\n")
    if not ok:
        print(f"success rate below --min-rate {args.min_rate}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
