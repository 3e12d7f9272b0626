"""``robo-s2 experiment status=true``: which (row, seed) cells of an experiment are committed and
which are left to run, read from its ``cells`` directory without collecting, training or writing.

An experiment longer than a session is continued on another machine from its committed cells;
this says, before hours of work start, what that continuation will reuse and what it will run.
A cell is ``committed`` when its key equals the one the experiment would write now (the same row
config, weights by content, seed, recipe, demos settings and protocol) and its demos checksum
equals the store's; a cell under another key (the config changed since) runs again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from robo_s2.core.config import to_plain
from robo_s2.data.store import DemoStore
from robo_s2.errors import UserError
from robo_s2.experiments.cells import (
    cell_dir,
    cell_key,
    demos_checksum,
    demos_render_profile,
    load_cell,
    weights_file,
)
from robo_s2.experiments.runner import Row, parse_rows, require_experiment_config

COMMITTED = "committed"
TO_RUN = "to run"
CHANGED = "to run (its cell has another config)"
OTHER_DEMOS = "refused (its cell was made from other demos)"
OTHER_RENDER = "refused (its demos' frames were rendered otherwise)"


@dataclass(frozen=True)
class CellStatus:
    """One (row, seed) of an experiment, as a rerun would find it."""

    row: str
    seed: int
    state: str  # COMMITTED | TO_RUN | CHANGED | OTHER_DEMOS | OTHER_RENDER
    n_success: int | None = None
    n_episodes: int | None = None
    commit: str | None = None

    def cell_text(self) -> str:
        if self.state != COMMITTED:
            return self.state
        commit = f" ({self.commit[:7]})" if self.commit else ""
        return f"{self.n_success}/{self.n_episodes}{commit}"


@dataclass(frozen=True)
class ExperimentStatus:
    name: str
    seeds: list[int]
    cells: list[CellStatus]
    notes: list[str]  # what the reader must know (demos not collected, weights missing)

    @property
    def n_committed(self) -> int:
        return sum(c.state == COMMITTED for c in self.cells)

    def markdown(self) -> str:
        lines = [
            f"{self.name}: {self.n_committed} of {len(self.cells)} cells committed, "
            f"{len(self.cells) - self.n_committed} to run",
            "",
            "| row | " + " | ".join(f"seed {s}" for s in self.seeds) + " |",
            "|---|" + "---|" * len(self.seeds),
        ]
        by_row: dict[str, list[CellStatus]] = {}
        for c in self.cells:
            by_row.setdefault(c.row, []).append(c)
        for label, cells in by_row.items():
            lines.append(f"| {label} | " + " | ".join(c.cell_text() for c in cells) + " |")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _missing_weights(row: Row) -> list[str]:
    """``weights`` paths of the row's overrides that name no weights file here (the cell key then
    holds the path, not the file's sha256, and cannot match a committed cell)."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k == "weights" and isinstance(v, str) and weights_file(v) is None:
                    found.append(v)
                else:
                    walk(v)

    walk(row.overrides)
    return found


def experiment_status(exp: Mapping[str, Any]) -> ExperimentStatus:
    """Every (row, seed) of ``exp`` (an experiment config, as ``robo-s2 experiment`` composes it)
    with what a rerun would do with it."""
    exp = to_plain(exp)
    require_experiment_config(exp)
    name = str(exp["name"])
    if not exp.get("cells"):
        raise UserError(
            f"experiment {name} commits no cells (experiment.cells is null), so there is nothing "
            "to report; set experiment.cells=<a folder> to commit each finished row and seed"
        )
    rows = parse_rows(exp.get("rows"))
    seeds = [int(s) for s in exp["seeds"]]
    store = Path(str(exp["demos"]["store"])).expanduser()
    notes: list[str] = []
    checksum = profile = None
    if store.exists():
        DemoStore.open(store).close()  # a path that is not a readable store: one line, not a trace
        checksum, profile = demos_checksum(store), demos_render_profile(store)
    if checksum is None:
        notes.append(
            f"{store} is not collected here: cells are matched by their config only; the "
            "experiment collects the demos and checks every cell against them"
        )
    for row in rows:
        for path in _missing_weights(row):
            notes.append(f"{row.label}: weights {path} is missing here, so its cells cannot match")
    cells: list[CellStatus] = []
    for row in rows:
        for seed in seeds:
            cell = load_cell(cell_dir(exp["cells"], row.slug, seed))
            key = json.loads(json.dumps(cell_key(exp, asdict(row), seed)))
            if cell is None:
                cells.append(CellStatus(row.label, seed, TO_RUN))
            elif cell.key != key:
                cells.append(CellStatus(row.label, seed, CHANGED))
            elif checksum is not None and cell.demos_sha256 != checksum:
                cells.append(CellStatus(row.label, seed, OTHER_DEMOS))
            elif profile is not None and cell.render_profile not in (None, profile):
                cells.append(CellStatus(row.label, seed, OTHER_RENDER))
            else:
                out = cell.outcome
                cells.append(
                    CellStatus(row.label, seed, COMMITTED, out.n_success, out.n_episodes,
                               cell.commit)
                )  # fmt: skip
    return ExperimentStatus(name, seeds, cells, notes)
