"""Rows of several finished experiments in one table (``robo-s2 compare``).

A row too long for an experiment's budget (an end-to-end encoder, a pre-trained encoder) runs as
its own experiment on the same demos and evaluation positions. ``compare`` reads the experiments'
``results.json`` files and writes one table of the chosen rows, with the same statistics as an
experiment's own table (pooled Wilson interval, the t interval over seeds, Newcombe differences
with Fisher's p) and the same files (``results.{md,csv,json}``, ``success.png``).

It is a like-for-like table or none: sources whose demos (store, episode count, collection seed,
placement, env and expert settings) or evaluation protocol (positions, seed, episode count, env
overrides) differ are refused, naming the key. Training recipes may differ between sources (an
end-to-end arm at history 2 beside frozen rows at history 16): the report lists each source's
train overrides where they are not shared.

Where a source's ``results.json`` predates its ``setup`` record, the setup is read from the Hydra
config the experiment ran with: ``.hydra/config.yaml`` or ``config.yaml`` beside it (or in the
directory above, for committed results split into sub-directories), completed with
``configs/base/experiment.yaml``'s defaults as the runner would have.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from robo_s2.core.io import read_json
from robo_s2.errors import UserError
from robo_s2.experiments.runner import RUN_FIELDS, RowResult, provenance, write_reports
from robo_s2.paths import config_dir

ROW_FIELDS = {f.name for f in fields(RowResult)}

# the parts of an experiment's setup that must agree for two rows to share a table
DEMOS_KEYS = ("store", "n_episodes", "seed", "placement", "env", "expert")
EVAL_KEYS = ("positions", "seed", "n_episodes", "env_overrides")


@dataclass
class Source:
    """One finished experiment: its rows and the setup they ran under."""

    path: Path  # its results.json
    name: str
    rows: list[RowResult]
    setup: dict[str, Any]  # demos, eval, train_overrides
    provenance: dict[str, Any]
    protocol: str


@dataclass
class CompareResult:
    name: str
    out_dir: Path
    rows: list[RowResult]
    table_path: Path
    csv_path: Path
    json_path: Path
    plot_path: Path | None

    def summary(self) -> str:
        parts = ", ".join(f"{r.label} {r.pc_success:.1f}%" for r in self.rows)
        return f"compare {self.name}: {parts} -> {self.table_path}"


def _results_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise UserError(
            f"no experiment results at {path}: give a results.json or the directory of a finished "
            "`robo-s2 experiment` run"
        )
    return p


def _base_setup() -> dict[str, Any]:
    base = yaml.safe_load((config_dir() / "base" / "experiment.yaml").read_text())
    return {k: base[k] for k in ("demos", "eval", "train_overrides")}


def _setup_from_config(results: Path) -> dict[str, Any] | None:
    here = results.parent
    for candidate in (here / ".hydra" / "config.yaml", here / "config.yaml",
                      here.parent / "config.yaml"):  # fmt: skip
        if candidate.is_file():
            cfg = yaml.safe_load(candidate.read_text()) or {}
            exp = cfg.get("experiment") if isinstance(cfg, Mapping) else None
            if isinstance(exp, Mapping) and "demos" in exp and "eval" in exp:
                return {k: exp[k] for k in ("demos", "eval", "train_overrides") if k in exp}
    return None


def _with_defaults(setup: Mapping[str, Any]) -> dict[str, Any]:
    base = _base_setup()
    return {
        "demos": {**base["demos"], **dict(setup.get("demos") or {})},
        "eval": {**base["eval"], **dict(setup.get("eval") or {})},
        "train_overrides": list(setup.get("train_overrides", base["train_overrides"])),
    }


def _row_from_json(rec: Mapping[str, Any], where: Path) -> RowResult:
    """One row of a results.json, its fields checked against :class:`RowResult`'s types (pydantic)
    and its runs' counts against each other."""
    from pydantic import TypeAdapter, ValidationError

    from robo_s2.core.schema import first_problem
    from robo_s2.experiments.cells import counts_disagree

    try:
        if not isinstance(rec, Mapping) or not isinstance(rec.get("runs"), list):
            raise ValueError("a row needs a list of runs")
        row = {k: rec[k] for k in ROW_FIELDS if k in rec}
        row["runs"] = [
            {k: o[k] for k in RUN_FIELDS if k in o} if isinstance(o, Mapping) else o
            for o in rec["runs"]
        ]
        result = TypeAdapter(RowResult).validate_python(row)
        for run in result.runs:
            if counts_disagree(run.n_success, run.n_episodes, run.episodes):
                raise ValueError(
                    f"run {run.row} seed {run.seed}: its per-episode record does not match "
                    f"{run.n_success}/{run.n_episodes}"
                )
        if result.n_episodes <= 0:
            raise ValueError(f"row {result.label} has no evaluated episodes")
        return result
    except (ValidationError, ValueError) as exc:
        detail = first_problem(exc) if isinstance(exc, ValidationError) else str(exc)
        raise UserError(
            f"{where}: a row is not an experiment result ({detail}); it must be a results.json "
            "written by `robo-s2 experiment`"
        ) from None


def load_source(path: str | Path) -> Source:
    """A finished experiment's rows and setup from its ``results.json`` (or its directory)."""
    results = _results_file(path)
    data = read_json(results, "experiment results", "rewrite it by rerunning the experiment")
    if not isinstance(data, Mapping) or not isinstance(data.get("rows"), list) or not data["rows"]:
        raise UserError(
            f"{results} holds no experiment rows: is it a `robo-s2 experiment` results.json?"
        )
    setup = data.get("setup") or _setup_from_config(results)
    if not setup:
        raise UserError(
            f"{results} does not record its demos and evaluation protocol (no 'setup', no "
            "config.yaml or .hydra/config.yaml beside it), so nothing can show it is like for like; "
            "rerun the experiment (it reads its finished runs back) to rewrite it"
        )
    return Source(
        path=results,
        name=str(data.get("name") or results.parent.name),
        rows=[_row_from_json(r, results) for r in data["rows"]],
        setup=_with_defaults(setup),
        provenance=dict(data.get("provenance") or {}),
        protocol=str(data.get("protocol") or ""),
    )


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _without(value: Any, paths: Sequence[Sequence[str]]) -> Any:
    """``value`` (a setup entry) without the nested keys at ``paths`` (relative to it)."""
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    for path in paths:
        if len(path) == 1:
            out.pop(path[0], None)
        elif path and isinstance(out.get(path[0]), Mapping):
            out[path[0]] = _without(out[path[0]], [path[1:]])
    return out


def _check_vary(vary: Sequence[str]) -> list[list[str]]:
    split = [str(v).split(".") for v in vary]
    for path in split:
        if len(path) < 2 or path[0] not in ("demos", "eval"):
            raise UserError(
                f"vary entry {'.'.join(path)!r} must name a setup key under demos. or eval., "
                "e.g. vary=[demos.store,demos.env.numslices] for an A/B of the render profile"
            )
    return split


def check_like_for_like(sources: Sequence[Source], vary: Sequence[str] = ()) -> None:
    """Refuse sources whose demos or evaluation protocol differ, naming the first differing key;
    the setup keys in ``vary`` (``demos.env.numslices``) may differ: they are what an A/B tests."""
    first = sources[0]
    varied = _check_vary(vary)
    for other in sources[1:]:
        for block, keys in (("demos", DEMOS_KEYS), ("eval", EVAL_KEYS)):
            for key in keys:
                paths = [p[2:] for p in varied if p[0] == block and p[1] == key]
                if [] in paths:
                    continue
                a = _without(first.setup[block].get(key), paths)
                b = _without(other.setup[block].get(key), paths)
                if _canonical(a) != _canonical(b):
                    raise UserError(
                        f"{other.name} and {first.name} are not like for like: {block}.{key} is "
                        f"{b!r} in {other.path} but {a!r} in {first.path}; compare only "
                        "experiments on the same demos and evaluation positions (or name the key "
                        "in vary=[...] when it is what the comparison tests)"
                    )


def select_rows(
    sources: Sequence[Source], selectors: Sequence[str]
) -> list[tuple[Source, RowResult]]:
    """The rows to show, in order: every row of every source for no selectors, else each
    ``"<experiment>:<label>"`` or ``"<label>"`` (when one source has it)."""
    if not selectors:
        return [(s, r) for s in sources for r in s.rows]
    chosen = []
    for sel in selectors:
        exp_name, colon, label = str(sel).rpartition(":")
        if not colon:
            label = str(sel)
        hits = [(s, r) for s in sources for r in s.rows
                if r.label == label and (not colon or s.name == exp_name)]  # fmt: skip
        if not hits:
            known = ", ".join(f"{s.name}:{r.label}" for s in sources for r in s.rows)
            raise UserError(f"no row {sel!r} in the sources; they have: {known}")
        if len(hits) > 1:
            raise UserError(
                f"row {sel!r} is in several sources ({', '.join(s.name for s, _ in hits)}); "
                f"name it as '<experiment>:{label}'"
            )
        chosen.append(hits[0])
    return chosen


def _labelled(chosen: Sequence[tuple[Source, RowResult]]) -> list[RowResult]:
    """Rows with labels unique across sources (a repeated label gets its experiment's name)."""
    counts: dict[str, int] = {}
    for _, r in chosen:
        counts[r.label] = counts.get(r.label, 0) + 1
    return [replace(r, label=f"{r.label} [{s.name}]") if counts[r.label] > 1 else r
            for s, r in chosen]  # fmt: skip


def _lookup(setup: Mapping[str, Any], path: str) -> Any:
    node: Any = setup
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def sources_markdown(chosen: Sequence[tuple[Source, RowResult]], vary: Sequence[str] = ()) -> str:
    """Where each row came from, each source's train overrides that not all sources share, and
    the values of the setup keys the comparison varies."""
    sources: list[Source] = []
    for s, _ in chosen:
        if s not in sources:
            sources.append(s)
    shared = set.intersection(*(set(map(str, s.setup["train_overrides"])) for s in sources))
    varied = "".join(f" {v} |" for v in vary)
    lines = [
        "## Sources",
        "",
        f"| experiment | rows | ran at commit | minutes | train overrides not shared by all |{varied}",
        "|---|---|---|---|---|" + "---|" * len(vary),
    ]
    for s in sources:
        own = [str(o) for o in s.setup["train_overrides"] if str(o) not in shared]
        rows = ", ".join(r.label for src, r in chosen if src is s)
        values = "".join(f" {_lookup(s.setup, v)} |" for v in vary)
        lines.append(
            f"| {s.name} (`{s.path}`) | {rows} | {s.provenance.get('commit', 'unknown')} | "
            f"{s.provenance.get('minutes', '?')} | {' '.join(own) or '-'} |{values}"
        )
    lines += [
        "",
        f"Train overrides of every source: {' '.join(sorted(shared)) or '-'}. The 'Ran at' line "
        "below is when this table was written; each source's own commit and run time are above.",
    ]
    return "\n".join(lines)


def run_compare(
    results: Sequence[str | Path],
    out_dir: str | Path,
    rows: Sequence[str] = (),
    name: str = "compare",
    title: str = "",
    vary: Sequence[str] = (),
) -> CompareResult:
    """One table of ``rows`` (see :func:`select_rows`) from the experiments at ``results``; the
    setup keys in ``vary`` may differ between them (:func:`check_like_for_like`)."""
    if not results:
        raise UserError(
            "compare needs results=[...]: the results.json files (or run directories) of finished experiments"
        )
    t0 = time.perf_counter()
    sources = [load_source(p) for p in results]
    check_like_for_like(sources, vary)
    chosen = select_rows(sources, rows)
    table_rows = _labelled(chosen)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = sources[0].setup
    protocol = f"positions={setup['eval']['positions']} seed={setup['eval']['seed']}"
    md, csv_path, json_path, plot = write_reports(
        name, title or f"{name}: " + " vs ".join(r.label for r in table_rows), table_rows, out,
        protocol, provenance(time.perf_counter() - t0),
        setup={"demos": setup["demos"], "eval": setup["eval"],
               "sources": {s.name: {"results": str(s.path), "train_overrides": s.setup["train_overrides"]}
                           for s in sources}},
        notes=sources_markdown(chosen, vary),
    )  # fmt: skip
    return CompareResult(name, out, table_rows, md, csv_path, json_path, plot)
