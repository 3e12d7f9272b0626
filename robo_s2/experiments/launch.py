"""An experiment's (row, seed) jobs through Hydra's launcher plugins.

``robo-s2 experiment hydra/launcher=joblib hydra.launcher.n_jobs=2`` (one machine),
``hydra/launcher=submitit_slurm`` (a Slurm cluster) or ``hydra/launcher=submitit_local`` (the
cluster path, locally): the parent collects the demos and checks every row's encoder, then hands
one job per (row, seed) to the launcher. A job is ``robo-s2 experiment`` itself with ``job.row``,
``job.seed`` and ``job.out_dir`` set: it trains and evaluates that one (row, seed) in
``<out_dir>/runs/<row>/seed<k>`` (resuming like every experiment run) and returns its outcome; its
Hydra files (config, log) go to ``<out_dir>/jobs/<row>_seed<k>``. The parent writes the table
when all jobs are done. Jobs encoding the same store take its append lock in turn, so a feature
cache is written once.

The launcher plugins are the ``cluster`` extra (``pip install -e ".[cluster]"``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from robo_s2.core.process import start_ancestor_watch
from robo_s2.errors import UserError
from robo_s2.experiments.runner import Row, RunOutcome

# hydra/launcher option -> the plugin module it needs and the package that has it
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def missing_launcher(args: Sequence[str]) -> str | None:
    """The one-line error for a ``hydra/launcher=<name>`` on the command line whose plugin is not
    installed (or, for submitit_slurm, whose Slurm is not on this machine), else None: said before
    any demo is collected."""
    import importlib.util

    for arg in args:
        key, _, name = arg.partition("=")
        if key.lstrip("+~") != "hydra/launcher" or name not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"hydra/launcher={name} needs the {package} plugin, which is not installed: "
                'pip install -e ".[cluster]" (hydra-joblib-launcher, hydra-submitit-launcher)'
            )
        if name == "submitit_slurm" and shutil.which("sbatch") is None:
            return (
                "hydra/launcher=submitit_slurm needs Slurm, but this machine has no sbatch on its "
                "PATH: run from a Slurm login node, or use hydra/launcher=joblib or "
                "submitit_local here (nothing was started)"
            )
    return None


def launcher_choice() -> str | None:
    """The ``hydra/launcher`` option this Hydra run was started with; None for Hydra's basic
    launcher (or outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("hydra/launcher")
    return None if choice in (None, "basic") else str(choice)


class CellTask:
    """A launched job's task: run one (row, seed) with the user's trust flag (a command-line flag
    of the parent, carried here because a job is another process)."""

    def __init__(self, trust: bool) -> None:
        self.trust = trust

    def __call__(self, cfg: DictConfig) -> dict[str, Any]:
        import multiprocessing as mp

        from robo_s2.safe_io import trusted_weights

        if mp.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            # a joblib (loky) worker's own start method, which the env processes this job spawns
            # could not find in a fresh interpreter
            mp.set_start_method("spawn", force=True)
        with trusted_weights(self.trust):
            return run_cell(cfg)


def run_cell(cfg: DictConfig) -> dict[str, Any]:
    """The (row ``cfg.job.row``, seed ``cfg.job.seed``) of the experiment, trained and evaluated
    in ``cfg.job.out_dir``; its :class:`RunOutcome` as a dict."""
    from robo_s2.core.config import to_plain
    from robo_s2.experiments.runner import parse_rows, run_one

    exp = to_plain(cfg.experiment)
    rows = {r.slug: r for r in parse_rows(exp.get("rows"))}
    slug = str(cfg.job.row)
    if slug not in rows:
        raise UserError(f"job.row={slug} is not a row of {exp['name']}: {', '.join(rows)}")
    if not isinstance(cfg.job.seed, int) or isinstance(cfg.job.seed, bool):
        raise UserError(f"job.seed={cfg.job.seed} must be a training seed (an integer)")
    seed = int(cfg.job.seed)
    if cfg.job.out_dir in (None, ""):
        raise UserError("job.out_dir= must name the experiment's output directory")
    parent = cfg.job.parent_pid
    if parent is not None:  # a job of this machine's launcher (joblib, submitit_local: the
        start_ancestor_watch(int(parent))  # experiment is its ancestor) dies with the experiment
    store = Path(str(exp["demos"]["store"])).expanduser()
    outcome = run_one(
        exp, rows[slug], seed, store, Path(str(cfg.job.out_dir)), int(cfg.workers),
        str(cfg.device), False,
    )  # fmt: skip
    return asdict(outcome)


def launch_cells(cells: Sequence[tuple[Row, int]], out_dir: Path) -> list[RunOutcome]:
    """Every (row, seed) as a job of this Hydra run's launcher; their outcomes in ``cells``'
    order. Failed jobs are reported after all have ended (finished ones are kept)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    from robo_s2.safe_io import user_trusts_weights

    try:
        from hydra._internal.callbacks import Callbacks
    except ImportError:  # pragma: no cover - hydra-core moved it
        raise UserError(
            'this hydra-core has no launcher callbacks; pip install "hydra-core>=1.3,<1.4"'
        ) from None
    hc = HydraConfig.get()
    loader = GlobalHydra.instance().hydra.config_loader  # type: ignore[union-attr]
    task = list(hc.overrides.task)
    master = loader.load_configuration(
        config_name=hc.job.config_name, overrides=[*hc.overrides.hydra, *task],
        run_mode=RunMode.MULTIRUN,
    )  # fmt: skip
    out_dir = out_dir.resolve()
    with open_dict(master):
        master.hydra.sweep.dir = str(out_dir / "jobs")
        launcher_cfg = master.hydra.launcher
        if str(launcher_cfg.get("_target_", "")).endswith(".LocalLauncher"):
            # submitit_local's default folder ".submitit/%j" is a race: the job's controller
            # opens <folder>/<pid>/<pid>_0_log.out while this process is still creating that
            # folder, and on a busy machine it loses (FileNotFoundError, the job never runs).
            # One folder for all jobs (their files are named by job id) exists before any starts.
            launcher_cfg.submitit_folder = str(out_dir / "jobs" / ".submitit")
    context = HydraContext(config_loader=loader, callbacks=Callbacks(master))
    launcher = Plugins.instance().instantiate_launcher(
        hydra_context=context, task_function=CellTask(user_trusts_weights()), config=master
    )
    overrides = [
        [*task, f"job.row='{row.slug}'", f"job.seed={seed}", f"job.out_dir='{out_dir}'",
         f"job.parent_pid={os.getpid()}",
         f"hydra.sweep.dir='{out_dir / 'jobs'}'", f"hydra.sweep.subdir='{row.slug}_seed{seed}'"]
        for row, seed in cells
    ]  # fmt: skip
    returns = launcher.launch(overrides, initial_job_idx=0)
    outcomes, errors = [], []
    for (row, seed), ret in zip(cells, returns, strict=True):
        if ret.status == JobStatus.COMPLETED:
            outcomes.append(RunOutcome(**ret.return_value))
        else:
            exc = ret._return_value
            errors.append(f"{row.label} seed {seed}: {str(exc).strip().splitlines()[0]}")
    if errors:
        raise UserError(
            f"experiment jobs failed: {'; '.join(errors)}; finished runs are kept: rerun the same "
            "command to resume"
        )
    return outcomes
