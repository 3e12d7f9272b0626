"""The GPU block of the evidence issue, in one command: demos, MAE pre-training of ViT-S and ViT-B at
224² on those frames, then experiment=gpu_s2_mae (MAE ViT-S, ViT-S-S², ViT-S at 448², MAE ViT-B;
3 seeds x 200 positions), its tables and cells committed under docs/results/gpu_s2_mae/.

    python scripts/gpu_evidence.py                     # on a machine with one GPU (~9 min)
    python scripts/gpu_evidence.py --rehearse --out /tmp/r   # the same steps, tiny, on a CPU

Every step is a ``robo-s2`` command (printed before it runs, and recorded in ``manifest.json`` with
its wall time), so a lost weights file is re-created by the recorded command and checked by its
sha256. Rerunning continues: demos and pre-training runs are resumed, finished experiment cells are
read back (the experiment's ``cells``). Without a GPU the full block refuses to start (it would take
a day on a CPU); ``--rehearse`` runs every step at toy size (32² frames, a few steps) so that the
first GPU run is not the script's first run (tests/test_gpu_evidence.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "gpu_s2_mae"
# MAE pre-training of both encoders: the same recipe, one budget in epochs over the demo frames
PRETRAIN = {"image_size": 224, "epochs": 40, "batch_size": 256, "lr": 1.5e-3}
# --rehearse: the same commands at toy size (CPU, seconds to a minute)
REHEARSAL_PRETRAIN = [
    "image_size=32", "train.epochs=1", "train.batch_size=16", "train.warmup_epochs=0",
    "decoder.dim=32", "decoder.depth=1", "decoder.heads=2", "frames_per_episode=4",
    "val_fraction=0.34", "recon_images=1",
]  # fmt: skip
REHEARSAL_EXPERIMENT = [
    "experiment.demos.n_episodes=3", "experiment.demos.env.image_size=32",
    "experiment.rows.0.overrides.image_size=32", "+experiment.rows.1.overrides.backbone={image_size:32}",
    "experiment.rows.2.overrides.image_size=64",
    "experiment.rows.2.overrides.upsample_from=32", "experiment.rows.3.overrides.image_size=32",
    "experiment.seeds=[0]",
    "experiment.train_overrides=['policy.d_model=32','policy.n_layers=1','policy.n_heads=2',"
    "'policy.history=4','policy.chunk=4','train.batch_size=8','train.steps=4',"
    "'train.warmup_steps=1','train.eval_every=2','train.save_every=2','data.val_fraction=0.34']",
    "experiment.eval.n_episodes=2", "+experiment.eval.env_overrides.max_episode_steps=6",
]  # fmt: skip


class Block:
    """Runs and records the block's ``robo-s2`` commands."""

    def __init__(self, work: Path, out: Path) -> None:
        self.work, self.out = work, out
        self.steps: list[dict] = []

    def robo_s2(self, name: str, *args: str) -> None:
        cmd = ["robo-s2", *args]
        print(f"[{name}] {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "robo_s2", *args], cwd=self.work, env={**os.environ}
        )
        seconds = round(time.perf_counter() - t0, 1)
        self.steps.append({"step": name, "command": " ".join(cmd), "seconds": seconds})
        if proc.returncode:
            sys.exit(f"error: step {name} failed (exit {proc.returncode}); rerun to continue")
        print(f"[{name}] done in {seconds} s", flush=True)


def device_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    return f"cpu: {os.cpu_count()} cores"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rehearse", action="store_true", help="every step at toy size, on a CPU")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / EXPERIMENT)
    ap.add_argument("--work", type=Path, default=ROOT, help="where demos/ and outputs/ go")
    ap.add_argument("--workers", type=int, default=None, help="env processes (default: cores-2)")
    a = ap.parse_args()

    import torch

    from robo_s2.experiments.cells import file_sha256

    if not a.rehearse and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU is visible; this block is sized for one GPU (~9 min there, a day "
            "on a CPU). Run it where `python -c 'import torch; print(torch.cuda.is_available())'` "
            "prints True, or try its steps at toy size with --rehearse",
            file=sys.stderr,
        )
        return 2
    work, out = a.work.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = a.workers if a.workers is not None else max(2, (os.cpu_count() or 4) - 2)
    if a.rehearse:
        workers = 0
    block = Block(work, out)
    store = work / "demos" / f"{EXPERIMENT}.zarr"
    size = 32 if a.rehearse else 224
    t0 = time.perf_counter()
    block.robo_s2(
        "demos", "collect", f"out={store}", f"n_episodes={3 if a.rehearse else 120}", "seed=0",
        f"workers={workers}", f"env.image_size={size}", "expert.noise_std=0.05",
        f"hydra.run.dir={work / 'outputs' / EXPERIMENT / 'collect'}",
    )  # fmt: skip
    weights = {}
    for key, arch in (("s", "vit_s16"), ("b", "vit_b16")):
        run_dir = work / "outputs" / EXPERIMENT / f"pretrain_{key}"
        recipe = (
            REHEARSAL_PRETRAIN
            if a.rehearse
            else [
                f"image_size={PRETRAIN['image_size']}", f"train.epochs={PRETRAIN['epochs']}",
                f"train.batch_size={PRETRAIN['batch_size']}", f"train.lr={PRETRAIN['lr']}",
            ]
        )  # fmt: skip
        block.robo_s2(
            f"pretrain_{key}", "pretrain", f"images=[{store}]", f"arch={arch}", "seed=0",
            *recipe, "resume=auto",
            f"hydra.run.dir={run_dir}",
        )  # fmt: skip
        path = run_dir / "encoder.pth"
        weights[key] = {
            "path": str(path.relative_to(work)) if path.is_relative_to(work) else str(path),
            "sha256": file_sha256(path),
            "command": block.steps[-1]["command"],
        }
    exp_dir = work / "outputs" / "experiment" / EXPERIMENT
    block.robo_s2(
        "experiment", "experiment", f"experiment={EXPERIMENT}",
        f"experiment.demos.store={store}", f"experiment.cells={out / 'cells'}",
        f"experiment.weights.s={work / weights['s']['path']}",
        f"experiment.weights.b={work / weights['b']['path']}",
        *(REHEARSAL_EXPERIMENT if a.rehearse else []),
        f"workers={workers}", f"hydra.run.dir={exp_dir}",
    )  # fmt: skip
    for name in ("results.md", "results.json", "results.csv", "success.png"):
        if (exp_dir / name).is_file():
            shutil.copy2(exp_dir / name, out / name)
    from robo_s2.core.versions import software_versions
    from robo_s2.experiments.runner import git_commit

    manifest = {
        "experiment": EXPERIMENT,
        "rehearsal": bool(a.rehearse),
        "device": device_line(),
        "commit": git_commit(),
        "versions": software_versions(),
        "minutes": round((time.perf_counter() - t0) / 60, 2),
        "weights": weights,
        "steps": block.steps,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"gpu_evidence: {manifest['minutes']} min on {manifest['device']} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
