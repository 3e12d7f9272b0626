"""``robo-s2 pretrain``: MAE pre-training of a ViT encoder; the run directory is Hydra's output dir.

Resuming (``resume=true`` with ``hydra.run.dir=<old run>``, or ``resume_from=<run dir>``) takes the
run's saved config with this command line's overrides on top, as ``robo-s2 train`` does.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from robo_s2.commands.train import resume_config
from robo_s2.pretraining.pretrainer import PretrainResult, pretrain


def summary(result: PretrainResult) -> str:
    """The one-line summary printed at the end of a run."""

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    head = (
        f"pretrain: epochs {result.start_epoch}->{result.epoch}/{result.epochs} "
        f"({result.step} steps) in {result.seconds:.1f} s, {result.images_per_s:.0f} images/s"
    )
    losses = (
        f"train loss {f(result.train_loss)}, held-out loss {f(result.val_loss)} "
        f"(random init {f(result.val_loss_init)})"
    )
    skipped = f"; skipped {len(result.skipped)} unreadable images" if result.skipped else ""
    return f"{head}; {losses}{skipped}; encoder {result.encoder_path}"


def run(cfg: DictConfig) -> PretrainResult:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    resumed = resume_config(cfg, run_dir, list(hc.overrides.task), command="pretrain")
    result = pretrain(resumed, run_dir, progress=True)
    if result.start_epoch >= result.epoch:
        print(
            f"pretrain: {run_dir} is already at epoch {result.epoch}/{result.epochs}; nothing to "
            "do (raise train.epochs to train on)"
        )
    else:
        print(summary(result))
    return result
