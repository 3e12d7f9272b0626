"""``robo-s2 experiment``: an encoder comparison (Table 8) — train and evaluate every row and seed."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from robo_s2.core.config import to_plain
from robo_s2.errors import UserError
from robo_s2.experiments.launch import launch_cells, launcher_choice, run_cell
from robo_s2.experiments.runner import ExperimentResult, missing_values, run_experiment
from robo_s2.experiments.status import ExperimentStatus, experiment_status


def run(cfg: DictConfig) -> ExperimentResult | ExperimentStatus | dict:
    from hydra.core.hydra_config import HydraConfig

    for name in ("OpenGL", "matplotlib"):  # their INFO notes are noise under Hydra's job logging
        logging.getLogger(name).setLevel(logging.WARNING)
    missing = missing_values(OmegaConf.to_container(cfg.experiment, resolve=False))
    if missing:
        keys = ", ".join(f"experiment.{k}" for k in missing)
        raise UserError(
            f"{keys} must be set (e.g. experiment.{missing[0]}=/path/to/file) for experiment "
            f"{cfg.experiment.name}"
        )
    if cfg.status:
        report = experiment_status(to_plain(cfg.experiment))
        print(report.markdown())
        return report
    if cfg.job.row is not None:  # one (row, seed) job of a launched experiment
        return run_cell(cfg)
    launcher = launcher_choice()
    if launcher is not None and int(cfg.jobs) > 1:
        raise UserError(f"jobs={cfg.jobs} and hydra/launcher={launcher}: choose one (the "
                        "launcher runs every row and seed as its own job)")  # fmt: skip
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = run_experiment(
        to_plain(cfg.experiment),
        out_dir,
        workers=int(cfg.workers),
        device=str(cfg.device),
        jobs=int(cfg.jobs),
        launch=None if launcher is None else lambda cells: launch_cells(cells, out_dir),
    )
    print()
    print(result.table_path.read_text().strip())
    print()
    print(result.summary())
    return result
