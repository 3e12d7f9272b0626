"""``robo-s2 train``: behaviour cloning on a demo store; the run directory is Hydra's output dir.

Resuming (``resume=true`` with ``hydra.run.dir=<old run>``, or ``resume_from=<run dir>``) starts
from the run's saved, resolved config (``checkpoints/last/config.yaml``) with this command line's
overrides applied on top (``resume``, ``resume_from``, ``device`` and ``train.stop_at`` always come
from the command), so ``robo-s2 train resume=true hydra.run.dir=X`` needs no repetition of the
original overrides and ``train.steps=...`` extends a finished run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from robo_s2.commands.encode import encoder_choice
from robo_s2.core.config import to_plain
from robo_s2.errors import UserError
from robo_s2.safe_io import strip_trust
from robo_s2.training.loop_state import TrainResult
from robo_s2.training.resume import find_resume_checkpoint
from robo_s2.training.trainer import train

# keys that describe this invocation rather than the run: a resumed run takes them from the command
PER_INVOCATION = ("resume", "resume_from", "device", "train.stop_at", "train.stop_at_epoch")


def _override_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """``(key, is_delete)`` of each non-Hydra override (``a.b=1``, ``+a=1``, ``~a``, ``enc=x``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for ov in OverridesParser.create().parse_overrides(overrides):
        key = ov.key_or_group
        if key.split(".")[0] == "hydra":
            continue
        out.append((key, ov.is_delete()))
    return out


def resume_config(
    cfg: DictConfig, run_dir: Path, overrides: list[str], command: str = "train"
) -> DictConfig:
    """``cfg`` for a fresh run; when resuming, the saved config with ``overrides`` re-applied."""
    last = find_resume_checkpoint(to_plain(cfg), run_dir, command)
    if last is None:
        return cfg
    saved_file = last / "config.yaml"
    if not saved_file.is_file():
        raise UserError(f"{last} has no config.yaml; it was not written by robo-s2 {command}")
    try:  # OmegaConf's YAML loader is yaml.SafeLoader's: tags that would build objects fail
        saved = OmegaConf.load(saved_file)
    except Exception as exc:  # noqa: BLE001 - yaml and OmegaConf errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{saved_file} is not a plain YAML config ({first[:160]}); restore it, or start a "
            "new run"
        ) from None
    if not isinstance(saved, DictConfig):
        raise UserError(f"{saved_file} is not a config mapping; restore it, or start a new run")
    plain, _ = strip_trust(OmegaConf.to_container(saved, resolve=False))
    saved = OmegaConf.create(plain)  # a trust key in a file never counts (safe_io.strip_trust)
    for key, delete in _override_keys(overrides):
        if delete:
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(saved, parent) if parent else saved
            if node is not None and leaf in node:
                node.pop(leaf)
            continue
        value = OmegaConf.select(cfg, key, throw_on_missing=False)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        OmegaConf.update(saved, key, value, merge=False, force_add=True)
    for key in PER_INVOCATION:  # how and where this invocation runs, never inherited
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if node is not None and leaf in node:  # (train.stop_at: train; stop_at_epoch: pretrain)
            OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    return saved


def summary(result: TrainResult) -> str:
    """The one-line summary printed at the end of a run."""
    head = (
        f"train: {result.steps_run} steps (to {result.step}/{result.total_steps}) in "
        f"{result.seconds:.1f} s, {result.samples_per_s:.0f} samples/s"
    )
    final, best = result.final, result.best
    if final:
        val = (
            f"val L1 {final['l1']:.4f} (raw {final['l1_raw']:.4g}), mean-action baseline "
            f"{final['baseline_l1']:.4f} (raw {final['baseline_l1_raw']:.4g}) -> ratio "
            f"{final['ratio']:.3f} (raw {final['ratio_raw']:.3f})"
        )
        if best:
            val += f"; best val L1 {best['l1']:.4f} at step {best['step']}"
    elif result.step < result.total_steps:
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        val = f"stopped at step {result.step} (train.stop_at), train loss {loss}"
    else:
        loss = f"{result.train_loss:.4f}" if result.train_loss is not None else "n/a"
        val = f"no validation split (data.val_fraction=0), train loss {loss}"
    return f"{head}; {val}; checkpoint {result.checkpoint}"


def _drop_stray_run_dir(own: Path, used: Path) -> None:
    """Under torchrun, ranks > 0 may get their own Hydra run dir (another second in ``${now:}``);
    everything goes to rank 0's, so remove theirs when it holds only Hydra's bookkeeping."""
    try:
        if own.resolve() == used.resolve() or not own.is_dir():
            return
        entries = list(own.iterdir())
        if all(e.name == ".hydra" or e.suffix == ".log" for e in entries):
            shutil.rmtree(own, ignore_errors=True)
    except OSError:
        pass


def run(cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    resumed = resume_config(cfg, run_dir, overrides)
    # the encoder config's name, unless a resumed run keeps the encoder of its saved config
    name = encoder_choice()
    if resumed is not cfg and "encoder" not in [k for k, _ in _override_keys(overrides)]:
        name = None
    result = train(resumed, run_dir, progress=True, encoder_name=name)
    if not result.is_main:
        _drop_stray_run_dir(run_dir, result.run_dir)
        return result
    if result.steps_run == 0:
        print(
            f"train: {result.run_dir} is already at step {result.step}/{result.total_steps}; "
            "nothing to do (raise train.steps to train on)"
        )
    else:
        print(summary(result))
    return result
