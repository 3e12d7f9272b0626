"""Every script in benchmarks/ runs at its ``--smoke`` size: the same code path as a real run, tiny
(the numbers are not checked, only that it runs and prints its table)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# per script: the arguments that point its output files into the test's directory (relative to
# it: the scripts run there), and what it must print and write
RUNS: dict[str, tuple[list[str], list[str], list[str]]] = {
    "bf16_crossover": ([], ["speed-up", "vit_tiny_patch16_224"], []),
    "env_speed": ([], ["env steps/s, no rendering", "collect frames/s, 2 worker(s)"], []),
    "eval_speed": ([], ["vs old", "of bound", "per-episode records old vs plan"], []),
    "expert_success": (["--json", "expert.json"], ["95% CI", "False", "True"], ["expert.json"]),
    "launcher_speed": (
        ["--out", "launcher"],
        ["joblib n_jobs=2", "| serial, ", "speed-up of joblib over serial"],
        ["launcher/joblib/results.json"],
    ),
    "pixel_coverage": (
        ["--json", "coverage.json", "--montage", "montage.png"],
        ["smallest at", "cube_pick", "montage:"],
        ["coverage.json", "montage.png"],
    ),
    "pretrain_probe": (
        ["--out", "probe"],
        ["pretrained vit_tiny_patch16_224", "| ViT-S random | mean |", "(probe: "],
        ["probe/probe_table.json"],
    ),
    "pretrain_speed": ([], ["pretrain img/s", "vit_tiny_patch16_224"], []),
    "s2_select": (
        ["--store", "probe.zarr", "--out", "s2_select"],
        ["learned rule: fitted", "| S² (1,2,4) |", "| select learned budget=5 |"],
        ["s2_select/tile_scorer.safetensors"],
    ),
    "s2_speed": ([], ["max |diff|", "ours/4 bf16 vs s2w bf16"], []),
    "store_speed": ([], ["append_episode vs np.save", "sequence_indices vs broadcast"], []),
    "train_speed": ([], ["samples/s", "chunk_transformer", "mlp"], []),
}


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_benchmark_runs_at_its_smoke_size(name, tmp_path):
    assert name in RUNS, f"say in RUNS what benchmarks/{name}.py --smoke prints and writes"
    args, printed, written = RUNS[name]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # default output paths (bench_out/...) land here too, never in the repo
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for text in printed:
        assert text in out.stdout, f"{text!r} not in the output:\n{out.stdout[-3000:]}"
    for path in written:
        assert (tmp_path / path).is_file(), f"{name} did not write {path}"
