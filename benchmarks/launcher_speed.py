"""Wall time of ``robo-s2 experiment`` run serially vs through ``hydra/launcher=joblib``.

    python benchmarks/launcher_speed.py [--experiment table8_tiny] [--n-jobs 2] [--out DIR]
        [--no-serial-matched] [-- extra overrides, e.g. "experiment.seeds=[0]"]

The demos are collected and every row's features encoded first (outside all timings: each run
then finds the same complete feature cache), then the same experiment runs back to back on this
machine, into fresh output directories: serially (one process, all torch threads), serially with
the threads each launcher job gets (``cpu_count // N``; the arm whose numerics equal the jobs'), and
with ``hydra/launcher=joblib hydra.launcher.n_jobs=N``. Prints the wall times, their ratios to the
serial run, and whether every (row, seed)'s per-episode records and the results tables are
identical to the joblib run's.
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

TINY_TRAIN = (  # --smoke's trainer
    "['policy.d_model=16','policy.n_layers=1','policy.n_heads=2','policy.history=2',"
    "'policy.chunk=2','train.batch_size=4','train.steps=2','train.warmup_steps=1',"
    "'train.eval_every=1','train.save_every=1','data.val_fraction=0.34']"
)
# --smoke sets these defaults: the same code path at a tiny size, in seconds (tests/
# test_benchmarks.py); flags given explicitly still win
SMOKE = {
    "overrides": [
        "experiment.demos.store=demos/smoke.zarr", "experiment.demos.n_episodes=2",
        "experiment.demos.env.image_size=32",
        "experiment.rows=[{label:ViT-T,encoder:vit_t,overrides:{image_size:32,pooling:'grid:2'}}]",
        "experiment.seeds=[0]", f"experiment.train_overrides={TINY_TRAIN}",
        "experiment.eval.positions=random", "experiment.eval.n_episodes=1",
        "experiment.eval.n_videos=0", "+experiment.eval.env_overrides.max_episode_steps=4",
        "workers=0",
    ]
}  # fmt: skip


def robo_s2(args: list[str], cwd: Path, threads: int | None = None) -> float:
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op pool size in the child
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "robo_s2", "experiment", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
    )
    if out.returncode:
        sys.exit(f"failed: robo-s2 experiment {' '.join(args)}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def episodes(run: Path) -> dict[str, list]:
    return {
        str(p.parent.parent.relative_to(run)): json.loads(p.read_text())["per_episode"]
        for p in sorted(run.glob("runs/*/seed*/eval/eval_info.json"))
    }


def warm_feature_cache(exp: dict, store: Path) -> None:
    """Encode every row's features into ``store`` exactly as its training run would (the trainer's
    own setup), so that no timed run pays for first-time encoding."""
    from robo_s2.experiments.runner import parse_rows, train_config
    from robo_s2.training.trainer import Trainer

    for row in parse_rows(exp["rows"]):
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = train_config(exp, row, int(exp["seeds"][0]), store, "auto")
            trainer = Trainer(cfg, run_dir, encoder_name=row.encoder)
            try:
                trainer.setup()
            finally:
                trainer.close()
        print(f"features: {row.label} cached")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="table8_tiny")
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--no-serial-matched", action="store_true",
                    help="skip the serial run at the jobs' thread count")  # fmt: skip
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (SMOKE), in seconds")
    a = ap.parse_args()
    if a.smoke:
        ap.set_defaults(**SMOKE)
        a = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    root = (a.out or Path(tempfile.mkdtemp(prefix="launcher_speed_"))).resolve()  # we chdir
    root.mkdir(parents=True, exist_ok=True)
    base = [f"experiment={a.experiment}", *a.overrides]
    # the demos once, with the experiment's own collection stage, outside both timings
    from robo_s2.core.config import load_config, to_plain
    from robo_s2.experiments.runner import ensure_demos

    exp = to_plain(load_config("experiment", base).experiment)
    t0 = time.perf_counter()
    os.chdir(root)
    store = ensure_demos(exp["demos"], workers=2, progress=False)
    warm_feature_cache(exp, store)
    print(f"demos and features: {store} ready in {time.perf_counter() - t0:.0f} s")
    serial = robo_s2([*base, f"hydra.run.dir={root / 'serial'}"], root)
    print(f"serial: {serial:.1f} s")
    job_threads = max(1, (os.cpu_count() or 1) // a.n_jobs)
    runs = [("serial", f"serial, {os.cpu_count()} threads", serial)]
    if not a.no_serial_matched:
        matched = robo_s2(
            [*base, f"hydra.run.dir={root / 'serial_matched'}"], root, threads=job_threads
        )
        print(f"serial, {job_threads} thread(s): {matched:.1f} s")
        runs.append(("serial_matched", f"serial, {job_threads} thread(s)", matched))
    launched = robo_s2(
        [*base, "hydra/launcher=joblib", f"hydra.launcher.n_jobs={a.n_jobs}",
         f"hydra.run.dir={root / 'joblib'}"],
        root,
    )  # fmt: skip
    print(f"joblib n_jobs={a.n_jobs}: {launched:.1f} s")
    runs.append(("joblib", f"joblib n_jobs={a.n_jobs}, {job_threads} thread(s) each", launched))

    def table(name: str) -> list:
        return json.loads((root / name / "results.json").read_text())["table"]

    lines = ["| run | wall s | ratio to serial | per-episode = joblib's | table = joblib's |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, label, secs in runs:
        same_eps = episodes(root / name) == episodes(root / "joblib")
        lines.append(
            f"| {label} | {secs:.1f} | {secs / serial:.2f} | {same_eps} | "
            f"{table(name) == table('joblib')} |"
        )
    print("\n" + "\n".join(lines) + "\n")
    print(
        f"speed-up of joblib over serial {serial / launched:.2f}x ({len(episodes(root / 'joblib'))} "
        f"runs, {os.cpu_count()} CPUs); outputs in {root}"
    )


if __name__ == "__main__":
    main()
