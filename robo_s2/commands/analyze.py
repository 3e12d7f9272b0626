"""``robo-s2 analyze <analysis>``: analyses of frozen-encoder features on a store's frames.

The analysis is picked by the first bare word of the command line (``robo-s2 analyze reconstruct``
is ``robo-s2 analyze analysis=reconstruct``; see :mod:`robo_s2.cli`), its settings are
``configs/analysis/<name>.yaml``. Each analysis writes its files in the run directory, prints its
table and ends with a one-line summary.

* ``reconstruct`` — S² Table 1 (:mod:`robo_s2.experiments.reconstruct`).
* ``selection`` — the tiles an ``s2_select`` encoder runs, outlined on store frames
  (:mod:`robo_s2.experiments.tile_selection`).
* ``scorer`` — fit ``s2_select``'s learned tile rule and compare every rule on held-out frames
  (:mod:`robo_s2.experiments.scorer_fit`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from robo_s2.core.config import to_plain
from robo_s2.errors import UserError


def _run_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path.cwd()


def reconstruct(cfg: DictConfig) -> Any:
    from robo_s2.experiments.reconstruct import ReconstructConfig, format_table, run_reconstruct

    rc = ReconstructConfig.from_mapping(to_plain(cfg))
    result = run_reconstruct(rc, _run_dir())
    print()
    print(format_table(result).strip())
    print()
    print(result.summary())
    return result


def selection(cfg: DictConfig) -> Any:
    from robo_s2.experiments.tile_selection import run_selection

    png = run_selection(to_plain(cfg), _run_dir())
    print(f"selection: tiles outlined on store frames in {png}")
    return png


def scorer(cfg: DictConfig) -> Any:
    from robo_s2.experiments.scorer_fit import run_scorer_fit

    rec = run_scorer_fit(to_plain(cfg), _run_dir())
    print()
    print(
        "change captured on held-out frames (1 = the tiles where S² changes most) and how often "
        "the top scale's run tiles hold the cube's / gripper's centre:"
    )
    print(rec["markdown"])
    print()
    print(
        f"scorer: fitted on {rec['n_train_frames']} frames, judged on {rec['n_test_frames']} "
        f"held-out ones in {rec['seconds']:.0f} s -> {rec['path']}; use it with "
        f"encoder.rule=learned encoder.scorer={rec['path']}"
    )
    return rec


ANALYSES: dict[str, Callable[[DictConfig], Any]] = {
    "reconstruct": reconstruct,
    "selection": selection,
    "scorer": scorer,
}


def run(cfg: DictConfig) -> Any:
    name = str(cfg.analysis or "")
    if name not in ANALYSES:
        raise UserError(f"unknown analysis '{name}'; choose one of: {', '.join(ANALYSES)}")
    return ANALYSES[name](cfg)
