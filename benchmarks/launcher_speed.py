"""Wall time of ``robo-s2 experiment`` run serially vs through ``hydra/launcher=joblib``.

    python benchmarks/launcher_speed.py [--experiment table8_tiny] [--n-jobs 2] [--out DIR]
        [-- extra overrides, e.g. "experiment.seeds=[0]"]

The demos are collected first (outside both timings), then the same experiment runs twice, back to
back on this machine, into fresh output directories: serially (one process, all torch threads) and
with ``hydra/launcher=joblib hydra.launcher.n_jobs=N`` (joblib gives each job
``cpu_count // N`` threads). Prints both wall times, their ratio, and whether every (row, seed)'s
per-episode records and the results tables are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def robo_s2(args: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "robo_s2", "experiment", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        sys.exit(f"failed: robo-s2 experiment {' '.join(args)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def episodes(run: Path) -> dict[str, list]:
    return {
        str(p.parent.parent.relative_to(run)): json.loads(p.read_text())["per_episode"]
        for p in sorted(run.glob("runs/*/seed*/eval/eval_info.json"))
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="table8_tiny")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    root = a.out or Path(tempfile.mkdtemp(prefix="launcher_speed_"))
    root.mkdir(parents=True, exist_ok=True)
    base = [f"experiment={a.experiment}", *a.overrides]
    # the demos once, with the experiment's own collection stage, outside both timings
    from robo_s2.core.config import load_config, to_plain
    from robo_s2.experiments.runner import ensure_demos

    exp = to_plain(load_config("experiment", base).experiment)
    t0 = time.perf_counter()
    os.chdir(root)
    ensure_demos(exp["demos"], workers=2, progress=False)
    print(f"demos: {exp['demos']['store']} ready in {time.perf_counter() - t0:.0f} s")
    serial = robo_s2([*base, f"hydra.run.dir={root / 'serial'}"], root)
    print(f"serial: {serial:.1f} s")
    launched = robo_s2(
        [*base, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={a.n_jobs}",
         f"hydra.run.dir={root / 'joblib'}"],
        root,
    )  # fmt: skip
    print(f"joblib n_jobs={a.n_jobs}: {launched:.1f} s")
    same_eps = episodes(root / "serial") == episodes(root / "joblib")
    tables = [json.loads((root / n / "results.json").read_text())["table"]
              for n in ("serial", "joblib")]  # fmt: skip
    print(
        f"\n| run | wall s | ratio to serial |\n|---|---|---|\n| serial | {serial:.1f} | 1.00 |\n"
        f"| joblib n_jobs={a.n_jobs} | {launched:.1f} | {launched / serial:.2f} |\n\n"
        f"speed-up {serial / launched:.2f}x; per-episode records identical: {same_eps}; "
        f"results tables identical: {tables[0] == tables[1]} ({len(episodes(root / 'serial'))} "
        f"runs, {os.cpu_count()} CPUs); outputs in {root}"
    )


if __name__ == "__main__":
    main()
