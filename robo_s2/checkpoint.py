"""Training checkpoints: what evaluation needs to rebuild policy and encoder, and a trainer to resume.

A checkpoint is a directory (``<run>/checkpoints/{last,best}``)::

    model.safetensors, config.json   the policy (``BasePolicy.save_pretrained``), normalizer included
    encoder.safetensors              the encoder's weights, only when it has trainable parts (PIIP)
    robo_s2.json                     meta: encoder (label, config, fingerprint), env description, image
                                     key, data store, step, metrics, software version
    config.yaml                      the training run's full resolved config
    training_state.pt                optimizer, scheduler, EMA, RNG states, step (``last`` only)

Directories are written beside their final place and renamed into it, so a crash mid-save never
leaves a half checkpoint where a good one was.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robo_s2 import __version__
from robo_s2.errors import UserError

META_NAME = "robo_s2.json"
CONFIG_NAME = "config.yaml"
ENCODER_WEIGHTS = "encoder.safetensors"
TRAINING_STATE = "training_state.pt"


@dataclass
class Checkpoint:
    path: Path
    policy: Any  # policies.BasePolicy
    encoder: Any  # robo_s2.encoders.VisionEncoder
    meta: dict[str, Any]

    @property
    def env(self) -> dict[str, Any]:
        return self.meta.get("env", {})

    @property
    def image_key(self) -> str:
        return self.meta.get("image_key", "image")


def encoder_meta(encoder) -> dict[str, Any]:
    """How to rebuild an encoder and recognise its weights."""
    return {
        "label": getattr(encoder, "label", None) or encoder.name,
        "config": encoder.config,
        "fingerprint": encoder.fingerprint(),
        "trainable": bool(encoder.trainable),
        "feature_dim": int(encoder.feature_dim),
        "image_size": int(encoder.image_size),
    }


def save_checkpoint(
    directory: str | Path,
    policy,
    encoder,
    meta: dict[str, Any],
    config: Any = None,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing an older one at the same path)."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    policy.save_pretrained(tmp)
    if encoder.trainable:
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        save_file(state, str(tmp / ENCODER_WEIGHTS))
    full_meta = {**meta, "encoder": encoder_meta(encoder), "robo_s2_version": __version__}
    (tmp / META_NAME).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
    if config is not None:
        if not OmegaConf.is_config(config):
            config = OmegaConf.create(config)
        (tmp / CONFIG_NAME).write_text(OmegaConf.to_yaml(config, resolve=True))
    if training_state is not None:
        torch.save(training_state, tmp / TRAINING_STATE)
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory)
    if not path.is_dir():
        raise UserError(
            f"checkpoint {path} does not exist; point checkpoint= to <run dir>/checkpoints/best "
            "(written by robo-s2 train)"
        )
    meta_file = path / META_NAME
    if not meta_file.is_file():
        raise UserError(f"{path} is not a robo_s2 checkpoint (no {META_NAME}); use one from train")
    try:
        return json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{meta_file} is corrupt ({exc}); use another checkpoint") from None


def build_encoder(meta: dict[str, Any], directory: Path | None = None):
    """The encoder a checkpoint was trained with, with its trained weights when it has any."""
    from robo_s2.encoders import create_encoder

    info = meta["encoder"]
    encoder = create_encoder({**info["config"], "_label": info.get("label")})
    if info.get("trainable") and directory is not None:
        from safetensors.torch import load_file

        weights = directory / ENCODER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{directory} lacks {ENCODER_WEIGHTS} for its trainable encoder")
        encoder.load_state_dict(load_file(str(weights)), strict=True)
    return encoder


def load_checkpoint(
    directory: str | Path, device: str | torch.device = "cpu", check_fingerprint: bool = True
) -> Checkpoint:
    """Policy and encoder of a checkpoint; refuses an encoder with other weights than trained."""
    from policies import load_policy

    path = Path(directory)
    meta = read_meta(path)
    policy = load_policy(path, device=device)
    encoder = build_encoder(meta, path)
    expected = meta["encoder"]["fingerprint"]
    if check_fingerprint and encoder.fingerprint() != expected:
        raise UserError(
            f"encoder '{meta['encoder'].get('label')}' now has other weights than the policy in "
            f"{path} was trained with (fingerprint {encoder.fingerprint()[:12]} != "
            f"{expected[:12]}); restore the original weights file or retrain"
        )
    if encoder.feature_dim != policy.feature_dim:
        raise UserError(
            f"encoder '{meta['encoder'].get('label')}' gives {encoder.feature_dim}-wide features, the "
            f"policy in {path} takes {policy.feature_dim}; the checkpoint is inconsistent, retrain"
        )
    return Checkpoint(path=path, policy=policy, encoder=encoder.to(device).eval(), meta=meta)
