"""Training checkpoints: what evaluation needs to rebuild policy and encoder, and a trainer to resume.

A checkpoint is a directory (``<run>/checkpoints/{last,best}``)::

    model.safetensors, config.json   the policy (``BasePolicy.save_pretrained``), normalizer included
    encoder.safetensors              the encoder's weights, only when it has trainable parts (PIIP)
    robo_s2.json                     meta: encoder (label, config, fingerprint), env description, image
                                     key, data store, step, metrics, software versions
                                     (python, torch, timm, mujoco, ..., CPU, threads)
    config.yaml                      the training run's full resolved config
    training_state.safetensors       optimizer, scheduler, EMA, RNG states, step (``last`` only):
                                     tensors plus JSON, no pickle (:func:`robo_s2.safe_io.save_state`)

Directories are written beside their final place and renamed into it, so a crash mid-save never
leaves a half checkpoint where a good one was.

Everything is read back as data: JSON, safetensors, YAML through OmegaConf's safe loader. A trust
key inside a checkpoint's stored encoder config (``trust_weights``, ``trust_checkpoint``) is
dropped: only the user's command line can allow a weights file that needs pickle.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

if TYPE_CHECKING:
    from policies import BasePolicy
    from robo_s2.encoders import VisionEncoder

import torch
from pydantic import BaseModel, ConfigDict, Field

from robo_s2 import __version__
from robo_s2.core.io import read_json, replace_path
from robo_s2.core.schema import validated
from robo_s2.core.versions import software_versions
from robo_s2.data.store_attrs import EnvAttrs
from robo_s2.encoders.base import TRAINED_CONFIG_KEY, TRAINED_WEIGHTS_FILE
from robo_s2.errors import UserError
from robo_s2.safe_io import fit_state_dict, read_safetensors, save_state, strip_trust

META_NAME = "robo_s2.json"
CONFIG_NAME = "config.yaml"
ENCODER_WEIGHTS = TRAINED_WEIGHTS_FILE
TRAINING_STATE = "training_state.safetensors"
LEGACY_TRAINING_STATE = "training_state.pt"  # robo_s2 <= 0.x: a pickle, never loaded


@dataclass
class Checkpoint:
    path: Path
    policy: BasePolicy
    encoder: VisionEncoder
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
        options = json.dumps(encoder.config, sort_keys=True, default=str)
        save_file(state, str(tmp / ENCODER_WEIGHTS), metadata={TRAINED_CONFIG_KEY: options})
    full_meta = {
        **meta,
        "encoder": encoder_meta(encoder),
        "robo_s2_version": __version__,
        "versions": software_versions(),
    }
    (tmp / META_NAME).write_text(json.dumps(full_meta, indent=2, default=str) + "\n")
    if config is not None:
        if not OmegaConf.is_config(config):
            config = OmegaConf.create(config)
        (tmp / CONFIG_NAME).write_text(OmegaConf.to_yaml(config, resolve=True))
    if training_state is not None:
        save_state(tmp / TRAINING_STATE, training_state)
    replace_path(tmp, final)
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
    meta = read_json(meta_file, "checkpoint metadata", "use another checkpoint")
    info = meta.get("encoder") if isinstance(meta, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise UserError(f"{meta_file} has no encoder config; it was not written by robo-s2 train")
    validated(CheckpointMeta, meta, f"{meta_file} is corrupt", "use another checkpoint or retrain")
    return meta


class _EncoderMeta(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    label: str | None = None
    config: dict[str, Any]
    fingerprint: str
    trainable: bool = False


class CheckpointMeta(BaseModel):
    """What robo_s2 reads back of a checkpoint's metadata file (other keys pass)."""

    model_config = ConfigDict(strict=True, extra="allow")
    env: EnvAttrs | None = None
    image_key: str = "image"
    feature_precision: str | None = None
    step: Annotated[int, Field(ge=0)] | None = None
    encoder: _EncoderMeta
    versions: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


def build_encoder(meta: dict[str, Any], directory: Path | None = None):
    """The encoder a checkpoint was trained with, with its trained weights when it has any.

    Trust keys in the stored config are dropped (a file never enables unsafe loading)."""
    from robo_s2.encoders import create_encoder

    info = meta["encoder"]
    config, trusted = strip_trust(info["config"])
    if trusted:
        logging.getLogger("robo_s2").warning(
            f"ignoring {', '.join(trusted)} stored in checkpoint {directory}: only the command "
            "line can trust a weights file"
        )
    encoder = create_encoder({**config, "_label": info.get("label")})
    if info.get("trainable") and directory is not None:
        weights = directory / ENCODER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{directory} lacks {ENCODER_WEIGHTS} for its trainable encoder")
        state = fit_state_dict(
            read_safetensors(weights, "encoder weights"),
            encoder.state_dict(),
            source=str(weights),
            target=f"the checkpoint's encoder '{info.get('label')}'",
            fix="the checkpoint is damaged: restore it or retrain",
            exact=True,
        )
        encoder.load_state_dict(state, strict=True)
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


def copy_without_state(source: Path, target: Path) -> None:
    """Replace checkpoint ``target`` by a copy of ``source`` without its training state (the
    best checkpoint of a run without validation: its final weights)."""
    tmp = target.parent / f".{target.name}.copy"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    (tmp / TRAINING_STATE).unlink(missing_ok=True)
    replace_path(tmp, target)
