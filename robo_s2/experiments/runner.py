"""Encoder comparison experiments (the S² paper's Table 8): same demos, same evaluation positions,
one policy per encoder row and training seed, one table and one plot.

An experiment config (``configs/experiment/*.yaml``) names the demo store (collected here when it
is missing or short), the encoder rows (an encoder config plus overrides), the training seeds, the
train-config overrides shared by every row and the evaluation protocol. Every stage resumes: the
store fills up to its episode count, a training run with a finished ``checkpoints/last`` is not
retrained (an interrupted one continues exactly), and an evaluation whose ``eval_info.json``
matches the protocol is read back, so rerunning an interrupted experiment finishes it.

Layout of the output directory::

    runs/<row>/seed<k>/          the training run (checkpoints/, tb/)
    runs/<row>/seed<k>/eval/     eval_info.json, videos, positions plot
    results.{md,csv,json}        one row per encoder: params, GFLOPs, success per seed, pooled
                                 success with its Wilson 95 % interval, and the difference to the
                                 first (baseline) row with a Newcombe interval and Fisher's p
    success.png                  bar plot with intervals (paper numbers as markers when given)

``results.md`` also holds every pairwise difference (Newcombe interval and Fisher's p on pooled
episodes, Welch's seed-level interval, the paired bootstrap and McNemar test on the shared positions,
each Holm-corrected over the table's pairs, with a note on how to read them), and ``results.json``
each run's per-episode successes and the provenance: the git commit the code ran at, the wall time,
the CPU, threads and software versions.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from robo_s2.core.config import load_config, require_complete, to_plain
from robo_s2.core.process import start_orphan_watch
from robo_s2.core.versions import software_versions
from robo_s2.errors import UserError
from robo_s2.evaluation.stats import SuccessRate, compare_rates, seed_interval
from robo_s2.experiments.cells import CommittedCell, demos_checksum


@dataclass(frozen=True)
class Row:
    """One encoder of the comparison."""

    label: str  # table label, e.g. "ViT-T-S2"
    encoder: str  # an encoder config name (configs/encoder/<name>.yaml)
    overrides: dict[str, Any] = field(default_factory=dict)  # merged into the encoder config

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)


@dataclass
class RunOutcome:
    """One (row, seed): its training run and its evaluation."""

    row: str
    seed: int
    run_dir: str
    n_success: int
    n_episodes: int
    train_seconds: float
    eval_seconds: float
    val_ratio: float | None  # validation L1 / mean-action L1 of the evaluated checkpoint
    reused: bool  # training and evaluation were both read back from an earlier invocation
    # per-episode success in episode order ("1" / "0"): episode i faced position i of the protocol's
    # set, the same for every row and seed (what the paired tests pair); "" in older results
    episodes: str = ""


def episode_string(per_episode: Sequence[Mapping[str, Any]]) -> str:
    """:attr:`RunOutcome.episodes` from ``eval_info.json``'s per-episode records."""
    ordered = sorted(per_episode, key=lambda r: int(r["index"]))
    return "".join("1" if r["success"] else "0" for r in ordered)


RUN_FIELDS = {f.name for f in fields(RunOutcome)}


@dataclass
class RowResult(SuccessRate):
    label: str
    encoder: str
    params: int
    gflops: float
    feature_dim: int
    runs: list[RunOutcome]
    reference: float | None = None  # the paper's success rate (percent), if any
    note: str = ""  # e.g. "oracle ceiling, not vision" for the privileged-state row

    @property
    def n_success(self) -> int:
        return sum(r.n_success for r in self.runs)

    @property
    def n_episodes(self) -> int:
        return sum(r.n_episodes for r in self.runs)


@dataclass
class ExperimentResult:
    name: str
    out_dir: Path
    rows: list[RowResult]
    seconds: float
    table_path: Path
    csv_path: Path
    json_path: Path
    plot_path: Path | None

    def summary(self) -> str:
        best = max(self.rows, key=lambda r: r.pc_success)
        parts = ", ".join(f"{r.label} {r.pc_success:.1f}%" for r in self.rows)
        return (
            f"experiment {self.name}: {parts} (best {best.label}); {self.seconds / 60:.1f} min "
            f"-> {self.table_path}"
        )


# ------------------------------------------------------------------------------------------------
# config


def require_experiment_config(exp: Mapping[str, Any]) -> None:
    """Refuse an experiment config that lacks a key of ``configs/base/experiment.yaml`` (the
    runner has no defaults of its own): build it with ``load_config("experiment",
    ["experiment=<name>"]).experiment``, as ``robo-s2 experiment`` does."""
    require_complete(
        {"experiment": exp}, "experiment", overrides=["~experiment"],
        exclude=("workers", "jobs", "job", "device", "status"),
    )  # fmt: skip


def parse_rows(rows: Any) -> list[Row]:
    """The experiment's rows; labels must be unique and every encoder config must exist."""
    from robo_s2.encoders import list_encoder_configs

    rows = to_plain(rows)
    if not rows:
        raise UserError("the experiment has no rows: list encoders under experiment.rows")
    known = list_encoder_configs()
    out: list[Row] = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or "encoder" not in r:
            raise UserError(
                f"experiment.rows[{i}] = {r!r} needs at least 'encoder: <config name>' "
                "(and optionally 'label' and 'overrides')"
            )
        encoder = str(r["encoder"])
        if encoder not in known:
            raise UserError(
                f"experiment.rows[{i}]: unknown encoder config '{encoder}'; choose one of: "
                f"{', '.join(sorted(known))}"
            )
        overrides = r.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise UserError(f"experiment.rows[{i}].overrides must be a mapping, got {overrides!r}")
        out.append(Row(str(r.get("label") or encoder), encoder, dict(overrides)))
    labels = [r.label for r in out]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise UserError(f"experiment rows need distinct labels; repeated: {', '.join(dupes)}")
    return out


def check_env_options(exp: Mapping[str, Any]) -> None:
    """Refuse an option the env or the expert does not take (``demos.env``, ``demos.expert``,
    ``eval.env_overrides``: open mappings the command line lets ``+key=value`` add to) before any
    demo is collected, naming the options there are."""
    import inspect

    from envs.expert import ScriptedExpert
    from envs.registry import ENV_ID, env_parameters

    demos = exp["demos"]
    env = dict(demos.get("env") or {})
    try:
        env_options = {"id", *env_parameters(str(env.get("id") or ENV_ID))}
    except ValueError as e:
        raise UserError(f"experiment.demos.env: {e}") from None
    expert_options = set(inspect.signature(ScriptedExpert.__init__).parameters) - {"self"}
    checks = (
        ("experiment.demos.env", env, env_options),
        (
            "experiment.eval.env_overrides",
            dict(exp["eval"].get("env_overrides") or {}),
            env_options,
        ),
        ("experiment.demos.expert", dict(demos.get("expert") or {}), expert_options),
    )
    for where, given, options in checks:
        unknown = sorted(set(given) - options)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(options), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"{where} has no option {unknown[0]!r}{hint}; its options: "
                f"{', '.join(sorted(options))}"
            )


def missing_values(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys of a plain (unresolved) config whose value is still ``???``."""
    found: list[str] = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            found += missing_values(v, f"{prefix}{k}.")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += missing_values(v, f"{prefix}{i}.")
    elif node == "???":
        found.append(prefix.rstrip("."))
    return found


def train_config(
    exp: Mapping[str, Any], row: Row, seed: int, store: str | Path, device: str
) -> DictConfig:
    """``configs/train.yaml`` composed for one (row, seed) of the experiment."""
    overrides = [
        f"encoder={row.encoder}",
        *[str(o) for o in exp["train_overrides"]],
        f"data.store={store}",
        f"seed={seed}",
        f"device={device}",
        "resume=auto",
        "data.store_wait_s=3600",  # rows in parallel jobs cache their features one at a time
    ]
    try:
        cfg = load_config("train", overrides)
    except Exception as exc:  # Hydra's override/config errors
        raise UserError(
            f"experiment row {row.label}: the train overrides do not compose: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    with open_dict(cfg):
        cfg.encoder = OmegaConf.merge(cfg.encoder, row.overrides)
    missing = missing_values(to_plain(cfg.encoder))
    if missing:
        keys = ", ".join(missing)
        raise UserError(
            f"experiment row {row.label} (encoder {row.encoder}) needs a value for {keys}, e.g. "
            f"the path of an MVP .pth checkpoint (real MVP weights or one from robo-s2 pretrain); "
            f"set it in the experiment config or on the command line"
        )
    return cfg


# ------------------------------------------------------------------------------------------------
# stages


def ensure_demos(demos: Mapping[str, Any], workers: int, progress: bool) -> Path:
    """Collect expert demos into ``demos.store`` up to ``demos.n_episodes`` (a no-op when full)."""
    from tqdm import tqdm

    from robo_s2.data.collection import collect

    store = Path(str(demos["store"])).expanduser()
    n = int(demos["n_episodes"])
    bar = tqdm(total=n, desc="collect", unit="ep", dynamic_ncols=True, disable=not progress)
    try:
        res = collect(
            store,
            n_episodes=n,
            env_kwargs=dict(to_plain(demos["env"])),
            expert_kwargs=dict(to_plain(demos["expert"])),
            seed=int(demos["seed"]),
            workers=workers,
            placement=str(demos["placement"]),
            on_episode=lambda r: bar.update(r.n_total - bar.n),
        )
    finally:
        bar.close()
    if res.n_new:
        print(f"experiment: {res.n_total} demos in {store} ({res.n_new} new, {res.seconds:.0f} s)")
    return store


def _cores_of_this_job() -> int:
    """The cores an evaluation inside this process may plan for: an experiment job's share is
    its torch thread count (``run_rows_in_parallel`` splits the cores that way), never more
    than the CPUs present."""
    import torch

    from robo_s2.evaluation.cpu_plan import available_cores

    return max(1, min(torch.get_num_threads(), available_cores()))


def run_one(
    exp: Mapping[str, Any],
    row: Row,
    seed: int,
    store: Path,
    out_dir: Path,
    workers: int,
    device: str,
    progress: bool,
) -> RunOutcome:
    """Train (or resume, or reuse) one policy and evaluate it (or read its evaluation back); with
    the experiment's ``cells``, a committed cell of the same key is read back instead, and a
    finished one is written there (:mod:`robo_s2.experiments.cells`)."""
    from robo_s2.evaluation.runner import evaluate
    from robo_s2.training.trainer import train

    committed = CommittedCell.of(exp, asdict(row), row.slug, seed, store)
    saved = None if committed is None else _read_committed(committed, row, seed)
    if saved is not None:
        return saved
    run_dir = out_dir / "runs" / row.slug / f"seed{seed}"
    cfg = train_config(exp, row, seed, store, device)
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=progress, encoder_name=row.encoder)
    train_s = time.perf_counter() - t0
    ckpt = run_dir / "checkpoints" / "best"
    if not ckpt.is_dir():
        ckpt = run_dir / "checkpoints" / "last"

    protocol = dict(to_plain(exp["eval"]))
    eval_dir = run_dir / "eval"
    protocol_path = eval_dir / "protocol.json"
    info = _saved_evaluation(protocol, ckpt, eval_dir) if result.steps_run == 0 else None
    reused_eval = info is not None
    if info is not None:
        n_success, n_episodes, eval_s = info["n_success"], info["n_episodes"], info["eval_s"]
        per_episode = info["per_episode"]
    else:
        protocol_path.unlink(missing_ok=True)  # an interrupted evaluation must not look finished
        t1 = time.perf_counter()
        res = evaluate(
            checkpoint=ckpt,
            n_episodes=protocol["n_episodes"],
            positions=str(protocol["positions"]),
            seed=int(protocol["seed"]),
            workers=workers,
            device=device,
            n_videos=int(protocol["n_videos"]),
            env_overrides=dict(protocol["env_overrides"]),
            out_dir=eval_dir,
            cores=_cores_of_this_job(),
        )
        n_success, n_episodes, eval_s = res.n_success, res.n_episodes, time.perf_counter() - t1
        per_episode = [r.to_dict() for r in res.records]
        protocol_path.write_text(json.dumps({**protocol, "checkpoint": str(ckpt)}, indent=2))
    metrics = result.best if ckpt.name == "best" and result.best else result.final
    ratio = metrics.get("ratio") if metrics else None
    outcome = RunOutcome(
        row=row.label,
        seed=seed,
        run_dir=str(run_dir),
        n_success=int(n_success),
        n_episodes=int(n_episodes),
        train_seconds=round(train_s, 1),
        eval_seconds=round(float(eval_s), 1),
        val_ratio=None if ratio is None else round(float(ratio), 4),
        reused=reused_eval,  # (only possible when training had nothing left to do)
        episodes=episode_string(per_episode),
    )
    if committed is not None:
        record = {k: v for k, v in asdict(outcome).items() if k not in ("run_dir", "reused")}
        about = {"commit": git_commit(), "versions": software_versions(), "run_dir": str(run_dir)}
        committed.write(record, per_episode, about)
    pc = 100.0 * outcome.n_success / max(outcome.n_episodes, 1)
    state = "reused" if outcome.reused else f"train {train_s:.0f} s, eval {eval_s:.0f} s"
    print(
        f"experiment: {row.label} seed {seed}: {outcome.n_success}/{outcome.n_episodes} "
        f"({pc:.1f}%) [{state}]"
    )
    return outcome


def _saved_evaluation(
    protocol: Mapping[str, Any], ckpt: Path, eval_dir: Path
) -> dict[str, Any] | None:
    """``eval_info.json`` of this very checkpoint under this very protocol when it is on disk
    already (a protocol written before a key existed had that key's default, configs/base)."""
    info_path, protocol_path = eval_dir / "eval_info.json", eval_dir / "protocol.json"
    if not (info_path.is_file() and protocol_path.is_file()):
        return None
    base = to_plain(load_config("experiment", ["~experiment"]))["experiment"]["eval"]
    saved = {**base, **json.loads(protocol_path.read_text())}
    if saved != {**protocol, "checkpoint": str(ckpt)}:
        return None
    return json.loads(info_path.read_text())


def _read_committed(cell: CommittedCell, row: Row, seed: int) -> RunOutcome | None:
    """The outcome of a committed cell whose key matches, else None."""
    saved = cell.read()
    if saved is None:
        return None
    known = {k: saved[k] for k in RUN_FIELDS if k in saved}
    outcome = RunOutcome(**{**known, "run_dir": str(cell.directory), "reused": True})
    print(
        f"experiment: {row.label} seed {seed}: {outcome.n_success}/{outcome.n_episodes} "
        f"[committed cell {cell.directory}]"
    )
    return outcome


def encoder_cost(cfg: DictConfig) -> tuple[int, float, int, str]:
    """Parameters, GFLOPs per frame, feature width and table note of a row's encoder (as
    configured); the note labels a row that does not see images (the oracle) as a ceiling and
    one whose whole encoder trains with the policy (the ResNet-18 reference) as end to end."""
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.profile import count_gflops, count_params

    encoder = create_encoder(to_plain(cfg.encoder)).eval()
    params = list(encoder.parameters())
    if encoder.input_key == "state":
        note = "oracle ceiling, not vision"
    elif encoder.trainable and params and all(p.requires_grad for p in params):
        note = "trained end to end"
    else:
        note = ""
    return count_params(encoder), count_gflops(encoder), int(encoder.feature_dim), note


# ------------------------------------------------------------------------------------------------
# reports


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _seed_ci(row: RowResult) -> str:
    """The t 95 % interval over the row's seeds (percent), "" with fewer than two seeds."""
    spread = seed_interval([o.n_success / max(o.n_episodes, 1) for o in row.runs])
    return "" if spread is None else f"{100 * spread[1]:.1f}-{100 * spread[2]:.1f}"


def results_table(rows: Sequence[RowResult]) -> list[dict[str, Any]]:
    """One flat record per row (CSV/markdown), including the comparison with the first row."""
    base = rows[0]
    table = []
    for r in rows:
        lo, hi = r.ci95
        rec: dict[str, Any] = {
            "encoder": f"{r.label} ({r.note})" if r.note else r.label,
            "config": r.encoder,
            "params": _fmt_params(r.params),
            "gflops": round(r.gflops, 2),
            "feature_dim": r.feature_dim,
            "per_seed": " ".join(f"{o.n_success}/{o.n_episodes}" for o in r.runs),
            "success": f"{r.n_success}/{r.n_episodes}",
            "pc_success": round(r.pc_success, 1),
            "ci95": f"{lo:.1f}-{hi:.1f}",
            "seed_ci95": _seed_ci(r),
        }
        if r is base:
            rec["vs_first"] = "baseline"
            rec["p_value"] = ""
        else:
            c = compare_rates(r.n_success, r.n_episodes, base.n_success, base.n_episodes)
            rec["vs_first"] = (
                f"{100 * c.diff:+.1f} ({100 * c.diff_ci95[0]:+.1f}, {100 * c.diff_ci95[1]:+.1f})"
            )
            rec["p_value"] = f"{c.p_value:.3g}"
        rec["paper"] = "" if r.reference is None else f"{r.reference:.1f}"
        table.append(rec)
    return table


HEADERS = {
    "encoder": "encoder",
    "config": "config",
    "params": "params",
    "gflops": "GFLOPs",
    "feature_dim": "feature",
    "per_seed": "success per seed",
    "success": "pooled",
    "pc_success": "success %",
    "ci95": "95% CI",
    "seed_ci95": "95% CI over seeds",
    "vs_first": "diff vs first row (95% CI)",
    "p_value": "Fisher p",
    "paper": "paper %",
}


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    keys = [k for k in HEADERS if any(str(r.get(k, "")) != "" for r in records)]
    lines = [
        "| " + " | ".join(HEADERS[k] for k in keys) + " |",
        "|" + "|".join("---" for _ in keys) + "|",
    ]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in records]
    return "\n".join(lines)


def pairwise_table(rows: Sequence[RowResult]) -> list[dict[str, Any]]:
    """Every pair of rows (earlier row ``A``, later row ``B``): ``A - B`` in points with its
    Newcombe 95 % interval and Fisher's exact p (two-sided) on the pooled episodes; Welch's
    seed-level comparison where both rows have two or more seeds; the paired comparison where both
    carry per-episode records of the same positions (:mod:`robo_s2.evaluation.paired`); each
    family of p-values Holm-adjusted over the table's pairs (``holm_<key>``)."""
    from robo_s2.evaluation.paired import holm, paired_comparison, seed_comparison

    pairs, fisher = [], []
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            c = compare_rates(a.n_success, a.n_episodes, b.n_success, b.n_episodes)
            fisher.append(c.p_value)
            pair: dict[str, Any] = {
                "a": a.label,
                "b": b.label,
                "diff_points": round(100 * c.diff, 1),
                "ci95": [round(100 * c.diff_ci95[0], 1), round(100 * c.diff_ci95[1], 1)],
                "p_value": float(f"{c.p_value:.3g}"),
                "significant": c.significant,
            }
            seeds = seed_comparison(
                [o.n_success / max(o.n_episodes, 1) for o in a.runs],
                [o.n_success / max(o.n_episodes, 1) for o in b.runs],
            )
            if seeds is not None:
                pair["seed_ci95"] = [round(100 * x, 1) for x in seeds.ci95]
                pair["welch_p"] = seeds.welch_p
            if _pairable(a, b):
                pc = paired_comparison(
                    [[int(x) for x in o.episodes] for o in a.runs],
                    [[int(x) for x in o.episodes] for o in b.runs],
                )
                pair["paired_ci95"] = [round(100 * x, 1) for x in pc.paired_ci95]
                pair["mcnemar_p"] = pc.mcnemar_p
                pair["discordant"] = list(pc.discordant)
            pairs.append(pair)
    for key in ("p_value", "mcnemar_p", "welch_p"):
        adjusted = holm(fisher if key == "p_value" else [p.get(key) for p in pairs])
        for p, h in zip(pairs, adjusted, strict=True):
            if key in p:
                p[f"holm_{key}"] = h
    return pairs


def _pairable(a: RowResult, b: RowResult) -> bool:
    """Whether every run of both rows has per-episode records of one and the same length."""
    lengths = {len(o.episodes) for o in (*a.runs, *b.runs)}
    return len(lengths) == 1 and 0 not in lengths


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


# the pairwise table's optional column groups: (key present in a pair, headers)
_PAIR_COLUMNS = (
    ("welch_p", ("seed-level 95% CI (Welch)", "Welch p", "Holm p (Welch)")),
    ("mcnemar_p", ("paired 95% CI (positions)", "McNemar p", "Holm p (McNemar)")),
)


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if ci is None else f"{ci[0]:+.1f}, {ci[1]:+.1f}"


def pairwise_markdown(pairs: Sequence[Mapping[str, Any]]) -> str:
    groups = [(key, heads) for key, heads in _PAIR_COLUMNS if any(key in p for p in pairs)]
    heads = ["A", "B", "A - B (points)", "95% CI", "Fisher p", "Holm p (Fisher)"]
    heads += [h for _, hs in groups for h in hs]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for p in pairs:
        mark = " *" if p["significant"] else ""
        cells = [
            p["a"], p["b"], f"{p['diff_points']:+.1f}{mark}", _ci(p["ci95"]),
            _p(p["p_value"]), _p(p.get("holm_p_value")),
        ]  # fmt: skip
        for key, _ in groups:
            ci_key = "seed_ci95" if key == "welch_p" else "paired_ci95"
            cells += [_ci(p.get(ci_key)), _p(p.get(key)), _p(p.get(f"holm_{key}"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


HOW_TO_READ_PAIRS = """How to read the pairwise table. *A - B*, its *95% CI* (Newcombe) and *Fisher p* pool the
episodes of all seeds: every episode counts as independent and seeds as exchangeable. The
*seed-level* interval and *Welch p* take the per-seed success rates as the units, so a recipe that
collapses on one seed widens them (with 3 seeds they are wide). Every row faced the same positions,
so where per-episode records exist the *paired* columns are the stronger design: a bootstrap
interval over positions (each carries its success over seeds for both rows) and McNemar's exact
test on the (seed, position) pairs where exactly one row succeeded. Each *Holm p* corrects its
column for the number of pairs in the table. A difference stands when its Holm-corrected p (paired
where there are records, else Fisher's) is below 0.05 and the seed-level interval agrees in sign.
A random-init row shares one encoder draw across its seeds unless its encoder's seed varies."""


def git_commit(path: Path | None = None) -> str:
    """The commit the robo_s2 code runs at (``+dirty`` with uncommitted changes to tracked files),
    or ``unknown`` outside a git checkout."""
    where = path or Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(seconds: float) -> dict[str, Any]:
    """Where, with what and how long an experiment ran: what a committed result must say about
    itself (the software versions of :func:`robo_s2.core.versions.software_versions` included)."""
    import torch

    return {
        "commit": git_commit(),
        "minutes": round(seconds / 60, 1),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.machine(),
        **software_versions(),
    }


def results_markdown(
    name: str,
    title: str,
    rows: Sequence[RowResult],
    records: Sequence[Mapping[str, Any]],
    pairs: Sequence[Mapping[str, Any]],
    protocol: str,
    prov: Mapping[str, Any] | None = None,
    notes: str = "",
) -> str:
    """results.md: the table, how to read its intervals, ``notes``, the pairwise differences
    and where it ran."""
    n_eps = sorted({o.n_episodes for r in rows for o in r.runs})
    seeds = sorted({o.seed for r in rows for o in r.runs})
    per_row = sorted({len(r.runs) for r in rows})
    seeds_text = ", ".join(map(str, seeds)) + (
        f" ({' or '.join(map(str, per_row))} per row)" if len(per_row) > 1 else ""
    )
    text = (
        f"# {title or name}\n\n{markdown_table(records)}\n\n"
        f"Evaluation: {protocol}, {'/'.join(map(str, n_eps))} episodes per run; training seeds "
        f"{seeds_text}; success pooled over seeds with a Wilson 95% interval (episodes "
        "as the units; it does not see seed-to-seed variation) and, with two or more seeds, a "
        "Student's t 95% interval over the per-seed rates (seeds as the units); the difference to "
        "the first row is a Newcombe 95% interval with Fisher's exact p on the pooled episodes.\n"
    )
    if notes:
        text += f"\n{notes.strip()}\n"
    if len(rows) >= 2:
        text += (
            "\n## Pairwise differences\n\n"
            f"{pairwise_markdown(pairs)}\n\n* : the 95% interval excludes 0.\n\n"
            f"{HOW_TO_READ_PAIRS}\n"
        )
    if prov:
        text += (
            f"\nRan at commit {prov.get('commit', 'unknown')} in {prov.get('minutes', '?')} min "
            f"({prov.get('cpu_count', '?')} CPUs, {prov.get('torch_threads', '?')} torch threads"
            + (f", {prov['cuda']}" if prov.get("cuda") else "")
            + ").\n"
        )
        if prov.get("mujoco"):
            bf16 = prov.get("cpu_bf16_flags")
            text += (
                f"Software: Python {prov.get('python')}, torch {prov.get('torch')}, timm "
                f"{prov.get('timm')}, MuJoCo {prov.get('mujoco')}, numpy {prov.get('numpy')}, zarr "
                f"{prov.get('zarr')}; CPU {prov.get('cpu')} (bf16 flags: "
                f"{', '.join(bf16) if bf16 else 'none'}).\n"
            )
    return text


def write_reports(
    name: str,
    title: str,
    rows: Sequence[RowResult],
    out_dir: Path,
    protocol: str,
    prov: Mapping[str, Any] | None = None,
    setup: Mapping[str, Any] | None = None,
    notes: str = "",
) -> tuple[Path, Path, Path, Path | None]:
    """results.{md,csv,json} and success.png in ``out_dir``. ``setup`` (demos, eval protocol,
    train overrides) goes into results.json so that a later ``robo-s2 compare`` can check that
    two experiments' rows are like for like; ``notes`` is markdown appended to results.md."""
    from robo_s2.evaluation.plots import plot_success_bars

    records = results_table(rows)
    pairs = pairwise_table(rows)
    md = out_dir / "results.md"
    text = results_markdown(name, title, rows, records, pairs, protocol, prov, notes)
    md.write_text(text)
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(HEADERS))
        writer.writeheader()
        writer.writerows(records)
    json_path = out_dir / "results.json"
    json_path.write_text(
        json.dumps(
            {
                "name": name,
                "title": title,
                "protocol": protocol,
                "provenance": dict(prov or {}),
                "setup": dict(setup or {}),
                "table": records,
                "pairwise": pairs,
                "rows": [
                    {**{k: v for k, v in asdict(r).items() if k != "runs"},
                     "runs": [asdict(o) for o in r.runs]}
                    for r in rows
                ],
            },
            indent=2,
        )
    )  # fmt: skip
    plot: Path | None = out_dir / "success.png"
    try:
        reference = {r.label: r.reference for r in rows if r.reference is not None}
        plot_success_bars(
            [f"{r.label}\n({r.note})" if r.note else r.label for r in rows],
            [r.n_success for r in rows],
            [r.n_episodes for r in rows],
            out_dir / "success.png",
            title=title or name,
            reference=reference or None,
        )
    except Exception as exc:  # a plot must never cost the table
        print(f"experiment: note: no plot ({type(exc).__name__}: {exc})")
        plot = None
    return md, csv_path, json_path, plot


# ------------------------------------------------------------------------------------------------
# the whole experiment


def _row_job(
    exp: Mapping[str, Any],
    rows: Sequence[Row],
    seeds: Sequence[int],
    store: Path,
    out: Path,
    workers: int,
    device: str,
    threads: int,
    todo: Any,
    done: Any,
    parent: int,
) -> None:
    """One of ``jobs`` processes: takes row indices from ``todo`` until it is empty and runs every
    seed of each row, putting ``(index, [RunOutcome...])`` or ``(index, error line)`` on ``done``."""
    import queue

    import torch

    start_orphan_watch(parent)  # no orphaned job keeps training when the parent is killed
    torch.set_num_threads(threads)
    while True:
        try:  # (get_nowait can raise Empty while another job holds the queue's lock)
            i = todo.get(timeout=2)
        except queue.Empty:
            return
        try:
            done.put(
                (i, [run_one(exp, rows[i], s, store, out, workers, device, False) for s in seeds])
            )
        except Exception as exc:  # reported by the parent, which knows the row's label
            done.put((i, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            return


def run_rows_in_parallel(
    exp: Mapping[str, Any],
    rows: Sequence[Row],
    seeds: Sequence[int],
    store: Path,
    out: Path,
    workers: int,
    device: str,
    jobs: int,
) -> dict[int, list[RunOutcome]]:
    """Rows spread over ``jobs`` processes (each row's seeds stay in one process, so a row's
    feature cache is written once), ``torch threads / jobs`` threads each."""
    import multiprocessing as mp

    import torch

    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for i in range(len(rows)):
        todo.put(i)
    threads = max(1, torch.get_num_threads() // jobs)
    procs = [
        ctx.Process(
            target=_row_job,
            args=(exp, rows, seeds, store, out, workers, device, threads, todo, done, os.getpid()),
        )
        for _ in range(min(jobs, len(rows)))
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, list[RunOutcome]] = {}
    errors: list[str] = []
    try:
        while len(outcomes) + len(errors) < len(rows):
            try:
                i, result = done.get(timeout=5)
            except Exception:  # queue.Empty: is anyone still working?
                if not any(p.is_alive() for p in procs):
                    break
                continue
            if isinstance(result, str):
                errors.append(f"experiment row {rows[i].label}: {result}")
            else:
                outcomes[i] = result  # (run_one printed each seed's line in its process)
    finally:
        for p in procs:  # an exception or Ctrl-C here must not leave jobs running
            if p.is_alive() and (errors or len(outcomes) < len(rows)):
                p.terminate()
    for p in procs:
        p.join()
    missing = [r.label for i, r in enumerate(rows) if i not in outcomes]
    if errors or missing:
        raise UserError(
            (errors[0] if errors else f"experiment rows {', '.join(missing)} did not finish "
             "(a job process died)")
            + "; finished runs are kept: rerun the same command to resume"
        )  # fmt: skip
    return outcomes


def run_experiment(
    exp: Mapping[str, Any],
    out_dir: str | Path,
    workers: int = 2,
    device: str = "auto",
    progress: bool = True,
    on_run: Callable[[RunOutcome], None] | None = None,
    jobs: int = 1,
    launch: Callable[[list[tuple[Row, int]]], list[RunOutcome]] | None = None,
) -> ExperimentResult:
    """Collect (if needed), then train and evaluate every (row, seed), then write the reports.

    ``jobs > 1`` runs rows in that many processes at once (a 2-core CPU trains a small policy on
    one thread, so two rows at a time keep both cores busy); results are the same as ``jobs=1``.
    ``launch`` runs every (row, seed) as its own job (:mod:`robo_s2.experiments.launch`)."""
    exp = to_plain(exp)
    require_experiment_config(exp)
    name = str(exp["name"])
    rows = parse_rows(exp.get("rows"))
    seeds = [int(s) for s in exp["seeds"]]
    if not seeds:
        raise UserError("experiment.seeds is empty: give at least one training seed")
    if workers < 0:
        raise UserError(f"workers={workers} must be >= 0 (0 runs the envs in this process)")
    if jobs < 1:
        raise UserError(f"jobs={jobs} must be >= 1 (rows trained and evaluated at once)")
    if "demos" not in exp or "store" not in exp["demos"]:
        raise UserError("the experiment needs demos.store (and demos.n_episodes to collect)")
    references = dict(exp["reference"])
    check_env_options(exp)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # every row's encoder must build (configs compose, weights load) before hours of work start
    costs = {
        r.label: encoder_cost(train_config(exp, r, seeds[0], exp["demos"]["store"], device))
        for r in rows
    }

    t0 = time.perf_counter()
    store = ensure_demos(exp["demos"], workers, progress)
    if launch is not None:
        cells = [(r, s) for r in rows for s in seeds]
        done = launch(cells)
        parallel = {i: done[i * len(seeds) : (i + 1) * len(seeds)] for i in range(len(rows))}
    elif jobs > 1 and len(rows) > 1:
        parallel = run_rows_in_parallel(exp, rows, seeds, store, out, workers, device, jobs)
    else:
        parallel = {}
    results: list[RowResult] = []
    for i, row in enumerate(rows):
        runs = parallel.get(i, [])
        if not runs:
            for seed in seeds:
                runs.append(run_one(exp, row, seed, store, out, workers, device, progress))
                if on_run is not None:
                    on_run(runs[-1])
        elif on_run is not None:
            for outcome in runs:
                on_run(outcome)
        params, gflops, dim, note = costs[row.label]
        ref = references.get(row.label)
        results.append(
            RowResult(row.label, row.encoder, params, gflops, dim, runs,
                      None if ref is None else float(ref), note)
        )  # fmt: skip
    protocol = exp["eval"]
    described = f"positions={protocol['positions']} seed={protocol['seed']}"
    seconds = time.perf_counter() - t0
    prov = provenance(seconds)
    prov["demos_sha256"] = demos_checksum(store)
    md, csv_path, json_path, plot = write_reports(
        name, str(exp["title"]), results, out, described, prov,
        setup={k: exp[k] for k in ("demos", "eval", "train_overrides")},
    )  # fmt: skip
    return ExperimentResult(name, out, results, seconds, md, csv_path, json_path, plot)
