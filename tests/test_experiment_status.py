"""``robo-s2 experiment status=true``: what a rerun would reuse and what it would run, read from the
committed cells without running anything, for each way a cell can stand."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import TINY_TRAIN, random_store, robo_s2
from omegaconf import OmegaConf

from robo_s2.core.config import load_config, to_plain
from robo_s2.errors import UserError
from robo_s2.experiments.cells import (
    cell_dir,
    cell_key,
    demos_checksum,
    demos_render_profile,
    write_cell,
)
from robo_s2.experiments.runner import parse_rows
from robo_s2.experiments.status import (
    CHANGED,
    COMMITTED,
    OTHER_DEMOS,
    OTHER_RENDER,
    TO_RUN,
    experiment_status,
)

ROWS = [
    {"label": "ViT-T", "encoder": "vit_t", "overrides": {"image_size": 32, "pooling": "grid:2"}},
    {"label": "MAE", "encoder": "mae_t", "overrides": {"image_size": 32, "weights": "w/enc.pth"}},
]


def experiment(root: Path, store: Path) -> dict:
    exp = {
        "name": "status_toy",
        "demos": {"store": str(store), "n_episodes": 3, "seed": 0, "env": {"image_size": 32}},
        "rows": ROWS,
        "seeds": [0, 1],
        "train_overrides": TINY_TRAIN,
        "eval": {"positions": "random", "n_episodes": 4, "seed": 3, "n_videos": 0},
        "cells": str(root / "cells"),
    }
    base = OmegaConf.create(to_plain(load_config("experiment", ["~experiment"]))["experiment"])
    return to_plain(OmegaConf.merge(base, exp))


def commit(exp: dict, row_index: int, seed: int, checksum: str, n_success: int) -> None:
    row = parse_rows(exp["rows"])[row_index]
    episodes = "1" * n_success + "0" * (4 - n_success)
    outcome = {"row": row.label, "seed": seed, "n_success": n_success, "n_episodes": 4,
               "episodes": episodes}  # fmt: skip
    write_cell(
        cell_dir(exp["cells"], row.slug, seed), cell_key(exp, asdict(row), seed), checksum,
        outcome, [], {"commit": "abcdef1234567890"}, demos_render_profile(exp["demos"]["store"]),
    )  # fmt: skip


def states(report) -> dict[tuple[str, int], str]:
    return {(c.row, c.seed): c.state for c in report.cells}


def test_status_tells_committed_changed_other_demos_and_missing_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "demos.zarr"
    random_store(store).close()
    exp = experiment(tmp_path, store)
    checksum = demos_checksum(store)
    commit(exp, 0, 0, checksum, 3)
    commit(exp, 0, 1, "0" * 64, 2)  # made from other demos: the rerun would refuse it
    changed = {**exp, "rows": [{**ROWS[0], "overrides": {"image_size": 32}}, ROWS[1]]}
    commit(changed, 0, 0, checksum, 1)  # the same slug under another config...
    commit(exp, 0, 0, checksum, 3)  # ...then re-committed under this one

    report = experiment_status(exp)
    assert states(report) == {
        ("ViT-T", 0): COMMITTED, ("ViT-T", 1): OTHER_DEMOS, ("MAE", 0): TO_RUN, ("MAE", 1): TO_RUN,
    }  # fmt: skip
    assert report.n_committed == 1
    assert any("weights w/enc.pth is missing" in n for n in report.notes)
    text = report.markdown()
    assert "status_toy: 1 of 4 cells committed, 3 to run" in text
    assert "| ViT-T | 3/4 (abcdef1) | refused (its cell was made from other demos) |" in text

    assert states(experiment_status(changed))[("ViT-T", 0)] == CHANGED

    cell = Path(exp["cells"]) / "ViT-T" / "seed0" / "cell.json"
    saved = json.loads(cell.read_text())
    other = {**saved["render_profile"], "numslices": 5}  # frames rendered another way
    cell.write_text(json.dumps({**saved, "render_profile": other}))
    assert states(experiment_status(exp))[("ViT-T", 0)] == OTHER_RENDER
    cell.write_text(json.dumps(saved))

    # the weights appear (a fresh machine re-created them): its cells are keyed by content now
    weights = tmp_path / "w" / "enc.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"mae weights")
    commit(exp, 1, 1, checksum, 4)
    report = experiment_status(exp)
    assert states(report)[("MAE", 1)] == COMMITTED and not report.notes
    weights.write_bytes(b"other weights")  # re-created differently: not the same cell
    assert states(experiment_status(exp))[("MAE", 1)] == CHANGED


def test_status_without_demos_matches_by_config_and_writes_nothing(tmp_path):
    store = tmp_path / "demos.zarr"
    random_store(store).close()
    exp = experiment(tmp_path, store)
    commit(exp, 0, 0, demos_checksum(store), 4)
    fresh = experiment(tmp_path, tmp_path / "not_collected.zarr")  # a fresh clone: no demos
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    report = experiment_status(fresh)
    assert states(report)[("ViT-T", 0)] == COMMITTED
    assert any("is not collected here" in n for n in report.notes)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_status_of_an_experiment_without_cells_or_with_a_broken_store_is_one_line(tmp_path):
    exp = {**experiment(tmp_path, tmp_path / "d.zarr"), "cells": None}
    with pytest.raises(UserError, match="commits no cells"):
        experiment_status(exp)
    not_a_store = tmp_path / "not_a_store.zarr"
    not_a_store.mkdir()
    (not_a_store / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not_a_store.zarr"):
        experiment_status(experiment(tmp_path, not_a_store))


def test_status_from_the_command_line_runs_nothing(tmp_path):
    store = Path("demos/table8_cpu.zarr")  # a committed experiment, from the repository's root
    existed = store.exists()
    run_dir = tmp_path / "run"
    out = robo_s2("experiment", "experiment=mae_pilot", "status=true", f"hydra.run.dir={run_dir}")
    assert out.returncode == 0, out.stderr
    assert re.search(r"mae_pilot: \d+ of 23 cells committed, \d+ to run", out.stdout)
    assert "| ViT-T MAE 64 grid:2 | " in out.stdout
    assert store.exists() == existed and not (run_dir / "runs").exists()
