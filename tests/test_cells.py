"""An experiment continues on a fresh clone from its committed cells: half an experiment, a new
checkout holding only the committed files, the rest run there — the same table as one
uninterrupted run, episode by episode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import TINY_TRAIN
from omegaconf import OmegaConf

from robo_s2.core.config import load_config, to_plain
from robo_s2.errors import UserError
from robo_s2.experiments.cells import RECORDS_FILE, demos_checksum, read_records
from robo_s2.experiments.runner import run_experiment

IMG = 32
ROWS = [
    {"label": "ViT-T", "encoder": "vit_t", "overrides": {"image_size": IMG, "pooling": "grid:2"}},
    {"label": "Oracle", "encoder": "oracle", "overrides": {}},
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def experiment(checkout: Path, rows: list[dict], cells: bool = True) -> dict:
    """A tiny experiment whose demos, outputs and committed cells live in ``checkout``."""
    exp = {
        "name": "cells_toy",
        "demos": {"store": str(checkout / "demos" / "toy.zarr"), "n_episodes": 3, "seed": 0,
                  "env": {"image_size": IMG}},
        "rows": rows,
        "seeds": [0],
        "train_overrides": TINY_TRAIN,
        "eval": {"positions": "random", "n_episodes": 3, "seed": 3, "n_videos": 0,
                 "env_overrides": {"max_episode_steps": 8}},
        "cells": str(checkout / "docs" / "results" / "cells_toy" / "cells") if cells else None,
    }  # fmt: skip
    base = OmegaConf.create(to_plain(load_config("experiment", ["~experiment"]))["experiment"])
    return to_plain(OmegaConf.merge(base, exp))


def run(checkout: Path, rows: list[dict], cells: bool = True, out: str = "outputs"):
    exp = experiment(checkout, rows, cells)
    return run_experiment(exp, checkout / out, workers=0, device="cpu", progress=False)


def committed_only(src: Path, dst: Path) -> None:
    """A fresh clone: only what git would hold (docs/), no demos, no outputs."""
    shutil.copytree(src / "docs", dst / "docs")


def test_a_fresh_clone_continues_from_committed_cells(tmp_path):
    first = tmp_path / "first"
    half = run(first, ROWS[:1])  # the first session finishes one row, then its machine is gone
    cell = first / "docs" / "results" / "cells_toy" / "cells" / "ViT-T" / "seed0"
    saved = json.loads((cell / "cell.json").read_text())
    assert saved["outcome"]["n_episodes"] == 3 and saved["versions"]["mujoco"]
    assert saved["demos_sha256"] == demos_checksum(first / "demos" / "toy.zarr")
    records = read_records(cell)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert sum(r["success"] for r in records) == half.rows[0].n_success
    assert (cell / RECORDS_FILE).stat().st_size < 2000

    fresh = tmp_path / "fresh"
    committed_only(first, fresh)
    continued = run(fresh, ROWS)
    vit, oracle = continued.rows
    assert vit.runs[0].reused and not (fresh / "outputs" / "runs" / "ViT-T").exists()
    assert not oracle.runs[0].reused and (fresh / "outputs" / "runs" / "Oracle").is_dir()

    whole = run(tmp_path / "whole", ROWS, cells=False)  # one uninterrupted run, no cells
    for a, b in zip(continued.rows, whole.rows, strict=True):
        assert [(o.n_success, o.n_episodes, o.episodes) for o in a.runs] == [
            (o.n_success, o.n_episodes, o.episodes) for o in b.runs
        ]
        assert len(a.runs[0].episodes) == 3
    table = json.loads((fresh / "outputs" / "results.json").read_text())
    assert table["provenance"]["demos_sha256"] == saved["demos_sha256"]


def test_changed_cells_rerun_and_other_demos_are_refused(tmp_path):
    first = tmp_path / "first"
    run(first, ROWS[1:])
    cell = first / "docs" / "results" / "cells_toy" / "cells" / "Oracle" / "seed0" / "cell.json"
    saved = json.loads(cell.read_text())

    other = {**ROWS[1], "overrides": {"yaw": False}}  # another row config: the cell runs again
    again = run(first, [other], out="outputs_changed")  # (its own run dirs: a new policy)
    assert not again.rows[0].runs[0].reused
    assert json.loads(cell.read_text())["key"]["row"]["overrides"] == {"yaw": False}

    assert saved["render_profile"]["numslices"] == 8  # the env's default when it ran
    cell.write_text(json.dumps({**saved, "demos_sha256": "0" * 64}))
    with pytest.raises(UserError, match="demos differ from those of the committed cell"):
        run(first, ROWS[1:])
    # same trajectories, frames rendered another way (a changed render default): refused too
    fine = {**saved["render_profile"], "numslices": 28, "numstacks": 16}
    cell.write_text(json.dumps({**saved, "render_profile": fine}))
    with pytest.raises(UserError, match="render default changed"):
        run(first, ROWS[1:])
    del saved["render_profile"]  # cells committed before the profile was recorded still load
    cell.write_text(json.dumps(saved))
    assert run(first, ROWS[1:], out="outputs_old_cell").rows[0].runs[0].reused
    cell.write_text("{not json")
    with pytest.raises(
        UserError, match="a committed experiment cell.*restore it from git or delete it"
    ):
        run(first, ROWS[1:])


def test_a_cell_knows_its_weights_by_content_not_by_path(tmp_path):
    from robo_s2.experiments.cells import cell_key, file_sha256

    exp = experiment(tmp_path, ROWS)
    a, b = tmp_path / "a" / "encoder.pth", tmp_path / "b" / "encoder.pth"
    for path, content in ((a, b"weights one"), (b, b"weights one")):
        path.parent.mkdir()
        path.write_bytes(content)
    row = {"label": "MAE", "encoder": "mae_t", "overrides": {"weights": str(a), "image_size": 32}}
    key = cell_key(exp, row, 0)
    assert key["row"]["overrides"]["weights"] == {"sha256": file_sha256(a)}
    moved = {**row, "overrides": {**row["overrides"], "weights": str(b)}}
    assert cell_key(exp, moved, 0) == key  # a fresh clone keeps the file elsewhere: same cell
    b.write_bytes(b"weights two")  # re-created, and different: not the same cell
    assert cell_key(exp, moved, 0) != key
    json.dumps(key)
    # a trained PIIP named by its checkpoint directory: known by its encoder.safetensors
    ckpt = tmp_path / "run" / "checkpoints" / "best"
    ckpt.mkdir(parents=True)
    (ckpt / "encoder.safetensors").write_bytes(b"weights one")
    piip = {**row, "overrides": {"weights": str(ckpt), "trainable": False}}
    assert cell_key(exp, piip, 0)["row"]["overrides"]["weights"] == {"sha256": file_sha256(a)}
