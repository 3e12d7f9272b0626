"""Scripted-expert success rate on random cube placements (no rendering).

    python benchmarks/expert_success.py [--n 200] [--yaw no|yes|both] [--noise 0.05] [--seed 0]

Prints one row per configuration: episodes, success rate (with a Wilson 95% interval), mean and
max episode length, env steps/s and seconds. Exits non-zero when a rate is below ``--min-rate``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from envs.cube_pick import CubePickEnv
from envs.expert import ScriptedExpert


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def measure(n: int, randomize_yaw: bool, noise_std: float, seed: int) -> dict[str, float]:
    """Run ``n`` expert episodes (seeds ``seed .. seed + n - 1``) and summarise them."""
    env = CubePickEnv(render_images=False, randomize_yaw=randomize_yaw)
    expert = ScriptedExpert.for_env(env, noise_std=noise_std)
    successes, lengths, retries = 0, [], 0
    start = time.perf_counter()
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        expert.reset(seed=seed + i)
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        successes += int(info["is_success"])
        lengths.append(info["steps"])
        retries += expert.retries
    seconds = time.perf_counter() - start
    env.close()
    lo, hi = wilson(successes, n)
    return {
        "n": n,
        "success_rate": successes / n,
        "ci_low": lo,
        "ci_high": hi,
        "mean_len": float(np.mean(lengths)),
        "max_len": int(np.max(lengths)),
        "retries": retries,
        "steps_per_s": sum(lengths) / seconds,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="episodes per configuration")
    parser.add_argument("--yaw", choices=("no", "yes", "both"), default="both")
    parser.add_argument("--noise", type=float, default=0.05, help="expert noise_std")
    parser.add_argument("--seed", type=int, default=0, help="first placement seed")
    parser.add_argument("--min-rate", type=float, default=0.98)
    args = parser.parse_args()

    configs = {"no": [False], "yes": [True], "both": [False, True]}[args.yaw]
    print(
        f"{'randomize_yaw':<14}{'n':>5}{'success':>9}{'95% CI':>16}{'mean len':>10}{'max len':>9}"
        f"{'retries':>9}{'steps/s':>9}{'seconds':>9}"
    )
    ok = True
    for yaw in configs:
        r = measure(args.n, yaw, args.noise, args.seed)
        ok &= r["success_rate"] >= args.min_rate
        ci = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        print(
            f"{yaw!s:<14}{r['n']:>5}{r['success_rate']:>9.3f}{ci:>16}{r['mean_len']:>10.1f}"
            f"{r['max_len']:>9}{r['retries']:>9}{r['steps_per_s']:>9.0f}{r['seconds']:>9.1f}"
        )
    if not ok:
        print(f"success rate below --min-rate {args.min_rate}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
