"""Committed experiment cells: how an experiment longer than a session continues on a fresh clone.

An experiment config's ``cells`` names a directory inside the repository (``docs/results/<name>/
cells``). Every finished (row, seed) writes ``<cells>/<row>/seed<k>/``::

    cell.json          what the cell is (its key: row, seed, train overrides, evaluation protocol,
                       demos spec, the demos' checksum and render profile), its outcome (successes, episodes, the
                       per-episode success string), the commit, software versions and seconds
    records.json.gz    the per-episode records: index, episode seed, cube x, y, yaw, success,
                       steps, max lift (gzip'd JSON, a few kB for 200 episodes)

Commit those files, and the next session (maybe on a fresh machine) reruns the same command: the
demos are re-collected deterministically and checked against the checksum the cells recorded, a cell
whose key matches is read back instead of trained, and only the missing cells run. A cell whose key
differs (the config changed) is run again and replaced; demos that do not match the committed
cells' checksum stop the experiment, since mixing them would compare rows on different data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from robo_s2.core.io import atomic_file, parse_json, read_json, write_json_atomic
from robo_s2.core.schema import validated
from robo_s2.encoders.base import trained_weights_path
from robo_s2.errors import UserError

CELL_FILE = "cell.json"
RECORDS_FILE = "records.json.gz"
RECORD_FIELDS = ("index", "seed", "x", "y", "yaw", "success", "steps", "max_lift")
# the store arrays the checksum covers: what the expert did and saw of the world, not the pixels
# (renders are deterministic for one Mesa/MuJoCo, but a checksum over them would refuse a machine
# whose rasterizer rounds one pixel differently)
CHECKSUM_KEYS = ("meta/episode_ends", "data/action", "data/proprio", "data/state")


def demos_checksum(store: str | Path) -> str:
    """sha256 over the store's episode ends, actions, proprioception and simulator state."""
    import numpy as np
    import zarr

    root = zarr.open_group(str(store), mode="r")
    h = hashlib.sha256()
    for key in CHECKSUM_KEYS:
        node = root.get(key)
        if not isinstance(node, zarr.Array):
            continue
        arr = np.ascontiguousarray(node[...])
        h.update(f"{key}:{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def demos_render_profile(store: str | Path) -> dict[str, Any]:
    """How the store's frames were rendered (the checksum leaves the pixels out, so a changed
    render default would otherwise go unnoticed)."""
    import zarr

    from envs.cube_pick import render_profile

    env: Any = zarr.open_group(str(store), mode="r").attrs.get("env") or {}
    return render_profile(env.get("kwargs") or env)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def weights_file(value: Any) -> Path | None:
    """The file a ``weights`` option names (a file, or a trained encoder's checkpoint directory),
    when it exists."""
    if not isinstance(value, str):
        return None
    path = trained_weights_path(value)
    return path if path.is_file() else None


def _weights_by_content(node: Any) -> Any:
    """``node`` with every ``weights: <file>`` replaced by the file's sha256: a pre-trained
    encoder is the same wherever its file lies, and another file under the same path is not."""
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            file = weights_file(v) if k == "weights" else None
            out[k] = {"sha256": file_sha256(file)} if file else _weights_by_content(v)
        return out
    if isinstance(node, list | tuple):
        return [_weights_by_content(v) for v in node]
    return node


def cell_key(exp: Mapping[str, Any], row: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """What a cell's result depends on, machine-independent (no paths; weights files by their
    sha256): equal keys, same cell."""
    demos = {k: v for k, v in dict(exp["demos"]).items() if k != "store"}
    return {
        "row": _weights_by_content(dict(row)),
        "seed": int(seed),
        "train_overrides": list(exp["train_overrides"]),
        "eval": {k: v for k, v in dict(exp["eval"]).items() if k != "n_videos"},
        "demos": demos,
    }


def cell_dir(root: str | Path, slug: str, seed: int) -> Path:
    return Path(root) / slug / f"seed{seed}"


def load_cell(directory: Path) -> CellFile | None:
    """The ``cell.json`` in ``directory`` as it is, whatever its key (``None`` when absent)."""
    path = directory / CELL_FILE
    if not path.is_file():
        return None
    fix = "restore it from git or delete it to run the cell again"
    return validated(
        CellFile, read_json(path, "a committed experiment cell", fix), f"{path} is corrupt", fix
    )


def read_cell(
    directory: Path,
    key: Mapping[str, Any],
    checksum: str,
    profile: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The committed outcome of the cell in ``directory`` when its key equals ``key`` (else
    ``None``: run it again); a matching cell made from other demos is a one-line error."""
    cell = load_cell(directory)
    if cell is None:
        return None
    saved_key, outcome, saved_sum = cell.key, cell.outcome.model_dump(), cell.demos_sha256
    if saved_key != json.loads(json.dumps(key)):
        return None
    if saved_sum != checksum:
        raise UserError(
            f"the demos differ from those of the committed cell {directory} (checksum "
            f"{checksum[:12]} != {saved_sum[:12]}): the store was collected differently; collect "
            "it again with the experiment's demos settings into an empty path, or delete the "
            "experiment's committed cells to start over"
        )
    saved_profile = cell.render_profile  # cells from before it was recorded: not checked
    if profile is not None and saved_profile is not None and saved_profile != dict(profile):
        raise UserError(
            f"the demos' frames were rendered with {dict(profile)}, the committed cell "
            f"{directory} with {saved_profile}: the env's render default changed; collect the "
            "demos with the cell's profile (demos.env), or give the experiment a new cells folder"
        )
    return outcome


def write_cell(
    directory: Path,
    key: Mapping[str, Any],
    checksum: str,
    outcome: Mapping[str, Any],
    per_episode: Sequence[Mapping[str, Any]],
    provenance: Mapping[str, Any],
    profile: Mapping[str, Any] | None = None,
) -> Path:
    """``cell.json`` and ``records.json.gz`` of a finished cell (each written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = [
        [int(r["index"]), int(r["seed"]), *(round(float(v), 5) for v in r["cube_pos"][:2]),
         round(float(r["cube_yaw"]), 5), int(bool(r["success"])), int(r["steps"]),
         round(float(r["max_lift"]), 5)]
        for r in sorted(per_episode, key=lambda r: int(r["index"]))
    ]  # fmt: skip
    with atomic_file(directory / RECORDS_FILE) as tmp:
        tmp.write_bytes(
            gzip.compress(json.dumps({"fields": RECORD_FIELDS, "rows": rows}).encode(), mtime=0)
        )
    cell = {"key": key, "demos_sha256": checksum, "outcome": dict(outcome), **provenance}
    if profile is not None:
        cell["render_profile"] = dict(profile)
    return write_json_atomic(directory / CELL_FILE, cell)


def read_records(directory: Path) -> list[dict[str, Any]]:
    """The per-episode records of a committed cell, one dict per episode."""
    path = directory / RECORDS_FILE
    fix = "restore it from git or delete the cell to run it again"
    try:
        text = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path} ({exc}); {fix}") from None
    data = parse_json(text, str(path), fix)
    validated(_Records, data, f"{path} is corrupt", fix)  # (its values are used as written)
    return [dict(zip(data["fields"], row, strict=True)) for row in data["rows"]]


def counts_disagree(n_success: int, n_episodes: int, episodes: str) -> bool:
    """Whether a success count, an episode count and a per-episode "0"/"1" string disagree."""
    return not 0 <= n_success <= n_episodes or bool(
        episodes
        and (set(episodes) - {"0", "1"} or len(episodes) != n_episodes
             or episodes.count("1") != n_success)
    )  # fmt: skip


Count = Annotated[int, Field(ge=0, le=2**62)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class CellOutcome(BaseModel):
    """A committed cell's outcome (the fields of ``runner.RunOutcome`` it stores)."""

    model_config = ConfigDict(strict=True, extra="allow")
    n_success: Count
    n_episodes: Annotated[int, Field(ge=1, le=2**62)]
    train_seconds: Seconds = 0.0
    eval_seconds: Seconds = 0.0
    val_ratio: float | None = None
    episodes: Annotated[str, Field(pattern=r"^[01]*$")] = ""

    @model_validator(mode="after")
    def _counts_agree(self) -> CellOutcome:
        if counts_disagree(self.n_success, self.n_episodes, self.episodes):
            raise ValueError(
                f"{self.n_success}/{self.n_episodes} successes disagree with the per-episode record"
            )
        return self


class CellFile(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    key: dict[str, Any]
    demos_sha256: str
    outcome: CellOutcome
    render_profile: dict[str, Any] | None = None
    commit: str | None = None


class _Records(BaseModel):
    model_config = ConfigDict(strict=True)
    fields: list[str]
    rows: list[list[Annotated[float, Field(allow_inf_nan=False)]]]

    @model_validator(mode="after")
    def _rows_fit(self) -> _Records:
        if tuple(self.fields) != RECORD_FIELDS:
            raise ValueError(f"the fields must be {list(RECORD_FIELDS)}")
        if any(len(row) != len(RECORD_FIELDS) for row in self.rows):
            raise ValueError(f"every row must hold {len(RECORD_FIELDS)} values")
        return self


@dataclass
class CommittedCell:
    """One (row, seed) of an experiment with ``cells``: where it is committed and what it is."""

    directory: Path
    key: dict[str, Any]
    checksum: str
    render_profile: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, exp: Mapping[str, Any], row: Mapping[str, Any], slug: str, seed: int, store: Path
    ) -> CommittedCell | None:
        """The cell of ``row`` and ``seed``; ``None`` when the experiment commits no cells."""
        if not exp["cells"]:
            return None
        return cls(
            cell_dir(exp["cells"], slug, seed),
            cell_key(exp, row, seed),
            demos_checksum(store),
            demos_render_profile(store),
        )

    def read(self) -> dict[str, Any] | None:
        return read_cell(self.directory, self.key, self.checksum, self.render_profile)

    def write(
        self,
        outcome: Mapping[str, Any],
        per_episode: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
    ) -> Path:
        return write_cell(
            self.directory, self.key, self.checksum, outcome, per_episode, provenance,
            self.render_profile,
        )  # fmt: skip
