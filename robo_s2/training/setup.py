"""Building a behaviour-cloning run from its config: the store's arrays, the episode split, the
encoder, the policy (its normalizer fitted on the training episodes), the model with its EMA, the
optimizer with its schedule, and the batch sampler. :class:`robo_s2.training.trainer.Trainer`
calls these in a fixed order: the seeded RNGs draw the initial weights in it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.core.config import require_complete, to_plain
from robo_s2.data.store import DemoStore
from robo_s2.data.windows import Split, split_episodes, store_split
from robo_s2.errors import UserError
from robo_s2.training.data import check_finite
from robo_s2.training.features import Features
from robo_s2.training.optim import EMA, make_optimizer, warmup_cosine


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """Refuse a train config that lacks a key of ``configs/train.yaml`` (the policy section checked
    against its own ``configs/policy/<name>.yaml``; the encoder's keys are its factory's to check):
    the trainer has no defaults of its own, so Python and ``robo-s2 train`` run one recipe."""
    from robo_s2.paths import config_dir

    policy = to_plain(cfg).get("policy")
    name = policy.get("name") if isinstance(policy, Mapping) else None
    if name and (config_dir() / "policy" / f"{name}.yaml").is_file():
        require_complete(cfg, "train", overrides=[f"policy={name}"], exclude=("encoder",))
    else:
        require_complete(cfg, "train", exclude=("encoder", "policy"))


class StoreArrays(NamedTuple):
    """A demo store's per-frame low-dimensional arrays, as training reads them."""

    store: DemoStore
    episode_ends: np.ndarray
    action: np.ndarray
    proprio: np.ndarray


class BCModel(nn.Module):
    """The policy, plus the encoder when it trains from images; ``forward`` returns the loss.

    A batch for image training carries ``frames`` ``(U, 3, S, S)`` (the distinct frames of its
    windows) and ``inverse`` ``(B, H)`` (each step's row in ``frames``) instead of ``feature``.
    """

    policy: Any  # a policies.BasePolicy (its normalizer, loss and sizes are used duck-typed)
    encoder: Any  # the trainable VisionEncoder, or None when training from cached features

    def __init__(
        self, policy: nn.Module, encoder: nn.Module | None = None, encoder_precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.policy = policy
        self.encoder = encoder
        self.encoder_precision = encoder_precision  # resolved: fp32 | bf16

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        if "frames" in batch:
            from robo_s2.device import autocast

            frames = batch["frames"]
            with autocast(frames.device, self.encoder_precision):
                feats = self.encoder(frames).float()
            batch = {k: v for k, v in batch.items() if k not in ("frames", "inverse")} | {
                "feature": feats[batch["inverse"]]
            }
        return self.policy.compute_loss(batch)


def open_store(dcfg: Mapping[str, Any]) -> StoreArrays:
    """Open ``data.store``; its episode ends, actions and proprioception (checked finite)."""
    store_path = dcfg["store"]
    if not store_path:
        raise UserError("data.store is not set; pass data.store=<path to a demo store>")
    store = DemoStore.open(store_path, mode="r")
    ends = store.episode_ends
    if store.n_episodes == 0 or store.n_frames == 0:
        raise UserError(f"{store.path} has no episodes; collect some first (robo-s2 collect)")
    action_key, proprio_key = str(dcfg["action_key"]), dcfg["proprio_key"]
    action = _read_lowdim(store, action_key)
    proprio = (
        _read_lowdim(store, proprio_key)
        if proprio_key
        else np.zeros((store.n_frames, 0), np.float32)
    )
    fix = "fix or drop that episode (re-collect or re-import the store)"
    check_finite(f"{store.path} data/{action_key}", action, ends, fix)
    check_finite(f"{store.path} data/{proprio_key}", proprio, ends, fix)
    return StoreArrays(store, ends, action, proprio)


def _read_lowdim(store: DemoStore, key: str) -> np.ndarray:
    if key not in store.keys():
        raise UserError(f"{store.path} has no data/{key}; its arrays: {', '.join(store.keys())}")
    arr = np.asarray(store.array(key)[: store.n_frames], dtype=np.float32)
    if arr.ndim != 2:
        raise UserError(f"{store.path} data/{key} has shape {arr.shape}, expected (frames, dims)")
    return arr


def choose_split(
    store: DemoStore,
    dcfg: Mapping[str, Any],
    seed: int,
    state: Mapping[str, Any] | None,
    resume_from: Path | None,
    is_main: bool,
) -> tuple[Split, str]:
    """The episode split and how it was chosen: the resumed run's, the store's own, or seeded."""
    if state is None:
        mode = str(dcfg["split"])
        if mode not in ("auto", "random"):
            raise UserError(
                f"data.split={mode!r}: use auto (the store's own split when it has one) or random"
            )
        own = store_split(store.attrs, store.n_episodes) if mode == "auto" else None
        if own is not None:
            return own, "the store's own train/valid split"
        split_seed = dcfg["split_seed"]
        split = split_episodes(
            store.n_episodes, dcfg["val_fraction"], seed if split_seed is None else int(split_seed)
        )
        return split, "a seeded random split"
    split = Split.from_dict(state["split"])
    n_saved = int(state.get("n_episodes", store.n_episodes))
    if int(np.concatenate([split.train, split.val]).max()) >= store.n_episodes:
        raise UserError(
            f"{store.path} has {store.n_episodes} episodes, fewer than the {n_saved} the "
            f"run in {resume_from} trained on; resume with its store or start anew"
        )
    if store.n_episodes != n_saved and is_main:
        print(
            f"train: note: {store.path} now has {store.n_episodes} episodes; the resumed "
            f"run keeps its split over the first {n_saved}"
        )
    return split, "the resumed run's split"


def build_encoder(
    ecfg: Mapping[str, Any], image_key: str, encoder_name: str | None
) -> tuple[Any, str]:
    """The encoder and the store array it reads (a camera's frames, or data/state for the
    oracle); the config's name (vit_t_s2) labels the feature cache, not the factory's (timm)."""
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.feature_cache import input_key

    encoder = create_encoder(ecfg)
    if encoder_name:
        encoder.label = encoder_name
    return encoder, input_key(encoder, image_key)


def check_resumed_encoder(
    encoder: Any, fingerprint: str, state: Mapping[str, Any], src: Path | None, name: str
) -> None:
    """A resumed run must see the encoder (width and weights) it was trained with."""
    saved_dim = int(state["feature_dim"])
    if saved_dim != encoder.feature_dim:
        raise UserError(
            f"feature width {encoder.feature_dim} of encoder {name} does not match the "
            f"{saved_dim}-wide features the run in {src} was trained on; resume with its encoder "
            f"(see {src}/config.yaml) or start a new run"
        )
    if state["encoder_fingerprint"] != fingerprint:
        raise UserError(
            f"encoder {name} is not the one the run in {src} was trained with (other config or "
            f"weights); resume with its encoder (see {src}/config.yaml) or start a new run"
        )


def build_policy(pcfg: Mapping[str, Any], encoder: Any, arrays: StoreArrays) -> nn.Module:
    """The policy its config names, sized to the encoder's features and the store's arrays."""
    from policies import create_policy

    pcfg = dict(pcfg)
    name = pcfg.pop("name", None)
    if not name:
        raise UserError("policy.name is not set; choose a policy config (policy=...)")
    if pcfg.get("feature_tokens") in ("auto", None):  # (a policy without the option: auto)
        pcfg["feature_tokens"] = int(encoder.feature_shape[0])  # grid:k -> k*k tokens, else 1
    pcfg.update(
        feature_dim=int(encoder.feature_dim),
        proprio_dim=int(arrays.proprio.shape[1]),
        action_dim=int(arrays.action.shape[1]),
    )
    return create_policy(name, **pcfg)


def build_model(
    policy: nn.Module,
    encoder: nn.Module | None,
    precision: str,
    ema: float | None,
    device: torch.device,
) -> tuple[BCModel, EMA | None, int]:
    """The model the loop trains (the encoder only when it trains), its EMA (``train.ema``) and
    its number of trainable parameters."""
    model = BCModel(policy, encoder, precision).to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_params == 0:
        raise UserError("nothing to train: the policy and encoder have no trainable parameters")
    return model, (EMA(model, float(ema)) if ema else None), n_params


def build_optimizer(
    model: nn.Module, tcfg: Mapping[str, Any]
) -> tuple[torch.optim.Optimizer, Any, int, int]:
    """AdamW and its warmup + cosine schedule over ``train.steps``; returns them with the step
    budget and the step the run stops at (``train.stop_at``)."""
    total_steps = int(tcfg["steps"])
    if total_steps < 1:
        raise UserError(f"train.steps={total_steps} must be >= 1")
    stop_at = tcfg["stop_at"]
    stop_step = min(total_steps, int(stop_at)) if stop_at else total_steps
    optimizer = make_optimizer(
        model,
        lr=float(tcfg["lr"]),
        weight_decay=float(tcfg["weight_decay"]),
        betas=tuple(tcfg["betas"]),
        lr_by_prefix={"encoder.": tcfg["encoder_lr"]},
        impl=str(tcfg["optimizer"]),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=int(tcfg["warmup_steps"]), total=total_steps)
    )
    return optimizer, scheduler, total_steps, stop_step


def check_batch_size(global_batch: int, world_size: int) -> int:
    """This rank's share of ``train.batch_size`` (the global batch)."""
    if global_batch < 1 or global_batch % world_size:
        raise UserError(
            f"train.batch_size={global_batch} must be a positive multiple of the "
            f"{world_size} ranks (it is the global batch, split across ranks)"
        )
    return global_batch // world_size


def fit_normalizer(
    policy: Any,
    arrays: StoreArrays,
    frames: np.ndarray,
    cached: np.ndarray | None,
    encode: Callable[[np.ndarray], Tensor],
    norm_frames: int,
    seed: int,
) -> None:
    """Fit the policy's normalizer on the training ``frames``: their cached features, or, for an
    encoder that trains from images, the initial encoder's features (``encode``) of
    ``data.norm_frames`` of them drawn with ``seed``."""
    if cached is None:
        n = min(norm_frames, frames.size)
        frames = np.sort(np.random.default_rng(seed).choice(frames, size=n, replace=False))
        feats: Tensor | np.ndarray = encode(frames)
    else:
        feats = cached[frames]
    policy.fit_normalizer(
        {"feature": feats, "proprio": arrays.proprio[frames], "action": arrays.action[frames]}
    )


def checkpoint_meta(
    store: DemoStore,
    split: Split,
    image_key: str,
    features: Features,
    dcfg: Mapping[str, Any],
    seed: int,
    world_size: int,
    steps: int,
    batch_size: int,
    ema: EMA | None,
) -> dict[str, Any]:
    """What every checkpoint's meta says the run trained on (env, image key, data, recipe)."""
    attrs = store.attrs
    return {
        "env": attrs.get("env", {}),
        "image_key": image_key,
        # what evaluation runs the encoder in, so its features match the training ones
        "feature_precision": features.precision,
        "data": {
            "store": str(Path(store.path).resolve()),
            "n_episodes": int(store.n_episodes),
            "n_frames": int(store.n_frames),
            "train_episodes": split.to_dict()["train"],
            "val_episodes": split.to_dict()["val"],
            "action_key": str(dcfg["action_key"]),
            "proprio_key": dcfg["proprio_key"],
            "features": features.source,
            "action_semantics": attrs.get("action_semantics"),
            "proprio_semantics": attrs.get("proprio_semantics"),
        },
        "train": {
            "seed": seed,
            "world_size": world_size,
            "steps": steps,
            "batch_size": batch_size,
            "ema": ema.decay if ema else None,
        },
    }
