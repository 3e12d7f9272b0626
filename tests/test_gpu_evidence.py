"""The GPU block's script rehearsed on the CPU: every step (demos, MAE ViT-S and ViT-B, the
gpu_s2_mae experiment with committed cells) at toy size, so the first GPU run is not its first run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_evidence.py"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
        timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"},
    )  # fmt: skip


def test_rehearsal_runs_every_step_and_records_the_weights(tmp_path):
    out = tmp_path / "results"
    proc = run("--rehearse", "--out", str(out), "--work", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rehearsal"] and [s["step"] for s in manifest["steps"]] == [
        "demos", "pretrain_s", "pretrain_b", "experiment",
    ]  # fmt: skip
    for key, arch in (("s", "vit_s16"), ("b", "vit_b16")):
        w = manifest["weights"][key]
        assert len(w["sha256"]) == 64 and f"arch={arch}" in w["command"]
        assert (tmp_path / w["path"]).is_file()
    table = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in table["rows"]] == ["ViT-S", "ViT-S-S2", "ViT-S-448", "ViT-B"]
    assert all(len(r["runs"][0]["episodes"]) == 2 for r in table["rows"])
    assert "Holm p (Fisher)" in (out / "results.md").read_text()
    assert len(list((out / "cells").glob("*/seed0/cell.json"))) == 4


def test_the_full_block_refuses_to_start_without_a_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():  # a GPU machine runs the block for real
        pytest.skip("a GPU is visible")
    proc = run("--out", str(tmp_path / "r"), "--work", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA GPU is visible")
    assert not (tmp_path / "demos").exists()
