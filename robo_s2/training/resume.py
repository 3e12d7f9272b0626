"""Resuming a run, shared by ``robo-s2 train`` and ``robo-s2 pretrain``: which checkpoint to
continue from, its training state read back as data only (no pickle) and checked for the entries
a version needs, a state that does not fit refused in one line, and the process RNGs."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from robo_s2.core.schema import validated
from robo_s2.errors import UserError
from robo_s2.safe_io import load_state
from robo_s2.training.checkpoint import LEGACY_TRAINING_STATE, TRAINING_STATE

LAST, BEST = "last", "best"


def find_resume_checkpoint(
    cfg: Mapping[str, Any], run_dir: str | Path, command: str = "train"
) -> Path | None:
    """The ``checkpoints/last`` directory to resume from, or None for a fresh run.

    ``resume``: false (fresh), true (``resume_from`` or the run directory must hold a checkpoint
    with a training state), or ``auto`` (resume when there is one, else start fresh).
    ``resume_from`` alone implies ``resume=true``.
    """
    mode = cfg["resume"]
    source = cfg["resume_from"]
    if isinstance(mode, str):
        if mode.lower() not in ("auto", "true", "false"):
            raise UserError(f"resume={mode!r} must be true, false or auto")
        mode = {"auto": "auto", "true": True, "false": False}[mode.lower()]
    if not mode and not source:
        return None
    src = Path(source).expanduser() if source else Path(run_dir)
    last = src / "checkpoints" / LAST
    if (last / TRAINING_STATE).is_file():
        return last
    if (last / LEGACY_TRAINING_STATE).is_file():
        raise UserError(
            f"{last / LEGACY_TRAINING_STATE} is a training state in the old pickle format, which "
            "robo_s2 no longer loads (unpickling can run code from the file); start a new run "
            f"(its checkpoints can still be evaluated), or delete it to use resume=auto"
        )
    if mode == "auto":
        return None
    raise UserError(
        f"nothing to resume in {src}: no checkpoints/{LAST}/{TRAINING_STATE} there; point "
        f"resume_from= (or hydra.run.dir=) at the run directory of an earlier robo-s2 {command}, or "
        "drop resume=true to start a new run"
    )


def read_training_state(
    directory: Path,
    keys: tuple[str, ...],
    version: int,
    schema: type[BaseModel],
    command: str = "train",
) -> dict[str, Any]:
    """``<directory>/training_state.safetensors`` as data, checked for the entries it must hold
    and then against ``schema`` (:mod:`robo_s2.training.state_schema`)."""
    path = directory / TRAINING_STATE
    state = load_state(path, "training state")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        have = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UserError(
            f"training state {path} lacks entries this version needs (has {have}); it was not "
            f"written by robo-s2 {command}: delete it or start a new run"
        )
    if state.get("version") != version:
        raise UserError(
            f"{directory} was written by an incompatible robo_s2 "
            f"(training state v{state.get('version')}, this one reads v{version}); start a new run"
        )
    validated(schema, state, f"training state {path} is corrupt", "delete it or start a new run")
    return state


@contextlib.contextmanager
def state_must_fit(source: Path) -> Iterator[None]:
    """Loading a training state that does not fit this run is one line, not a traceback."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"the training state in {source} does not fit this run "
            f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); resume with the run's "
            "own settings, or delete the state and start a new run"
        ) from None


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch, CUDA), for an exact resume."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (CUDA's only on as many devices as it was saved on)."""
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        if len(s["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(s["cuda"])
