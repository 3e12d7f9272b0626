"""Behaviour cloning of a chunked-action policy on a demo store: the engine of ``robo-s2 train``.

:func:`train` takes the resolved ``configs/train.yaml`` config and a run directory::

    <run>/checkpoints/last   policy (+ trainable encoder), meta, config.yaml,
                             training_state.safetensors (tensors + JSON, no pickle)
    <run>/checkpoints/best   the same at the best validation loss (no training state)
    <run>/tb/                TensorBoard: train/{loss,l1,lr,grad_norm,samples_per_s}, val/...
    <run>/metrics.jsonl      one JSON line per validation
    <run>/config.yaml        the effective resolved config of the latest invocation

**Features.** A fully frozen encoder (``encoder.trainable`` False) is run once over the store and
its features are cached inside it (:mod:`robo_s2.encoders.feature_cache`; computed here on first use unless
``data.encode=false``); training then reads them from memory. An encoder with trainable parts
(PIIP interactions) trains end to end from images: each batch's windows reference some set of
frames; every DISTINCT frame is encoded once (``torch.unique`` over the window's frame indices,
one encoder forward, features scattered back to ``(B, H, D)``), and the encoder's trainable
parameters train with the policy. Frames are area-downsized to ``encoder.image_size`` exactly as
when caching and at evaluation (:func:`robo_s2.encoders.preprocess.frames_to_input`).

**Data.** One window per frame (:mod:`robo_s2.training.data`); an episode-level split
(``data.val_fraction``, seeded by ``data.split_seed`` or ``seed``); the policy's normalizer is
fitted on the training episodes only. NaN/inf in actions, proprioception or features is an error
naming the episode and step.

**Optimisation.** AdamW (decay on matrices only), linear warmup then cosine decay to zero over
``train.steps``, gradient clipping, an EMA of the weights (``train.ema`` = decay, 0/null = off; the
EMA weights are the ones validated and saved), bf16 autocast on CUDA. Validation every
``train.eval_every`` steps: the action L1 in normalized and in raw units, and the L1 of predicting
the training-mean action as a baseline, with their ratio (< 1: the policy beats the mean).

**Resuming** (``resume=true``, or ``resume_from=<run dir>``) restores the model, EMA, optimizer,
scheduler, step, the batch sampler and every RNG (python, numpy, torch, CUDA; per rank), so
training N steps straight and N/2 + resume to N give bit-identical weights. ``train.stop_at``
stops early at a step while the schedule still spans ``train.steps`` (for job time limits).
``checkpoints/last`` is written every ``train.save_every`` steps, at the end, and when the run is
stopped by Ctrl-C (SIGINT) or SIGTERM (a job scheduler's stop): the current step finishes, is
saved, and training stops, so an interrupted run loses no finished step. The training state is
read back as data only (:func:`robo_s2.safe_io.load_state`); an older ``training_state.pt``
(a pickle) is refused rather than unpickled.

**Distributed.** Under ``torchrun`` each rank trains a DistributedDataParallel replica on a
disjoint shard of every global batch (``train.batch_size`` is global and must divide by the
number of ranks); validation is sharded and summed; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from policies.base import loss_elements
from robo_s2.core.config import require_complete, to_plain
from robo_s2.core.io import replace_path
from robo_s2.data.windows import Split, split_episodes, store_split
from robo_s2.encoders.feature_cache import CacheStatus, feature_precision, input_key
from robo_s2.errors import UserError
from robo_s2.safe_io import load_state
from robo_s2.training import distributed as D
from robo_s2.training.checkpoint import LEGACY_TRAINING_STATE, TRAINING_STATE
from robo_s2.training.data import FrameSource, SequenceData, check_finite
from robo_s2.training.optim import (
    EMA,
    BatchSampler,
    load_partial_state,
    make_optimizer,
    match_state_layout,
    trainable_state,
    warmup_cosine,
)

STATE_VERSION = 1
LAST, BEST = "last", "best"
# what a training state must hold for this version to resume from it
STATE_KEYS: tuple[str, ...] = ("version", "step", "model", "optimizer", "scheduler", "sampler")
STATE_KEYS += ("rng", "split", "feature_dim", "encoder_fingerprint", "policy_config")


@dataclass
class TrainResult:
    """What a training run did (returned on every rank; only rank 0 wrote anything)."""

    run_dir: Path
    start_step: int
    step: int
    total_steps: int
    seconds: float
    samples_per_s: float
    train_loss: float | None
    final: dict[str, float] = field(default_factory=dict)  # metrics of the last validation
    best: dict[str, Any] = field(default_factory=dict)  # {"step", "loss", ...metrics}
    checkpoint: Path | None = None  # best (last when there is no validation)
    last: Path | None = None
    is_main: bool = True
    n_params: int = 0
    feature_source: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def steps_run(self) -> int:
        return self.step - self.start_step


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


def train_step(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    params: list[nn.Parameter],
    grad_clip: float,
    device: torch.device,
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One optimizer step: forward under autocast (bf16 on CUDA), backward, clip, step, schedule.
    Returns the loss, the policy's metrics and the gradient norm before clipping (all tensors)."""
    from robo_s2.device import autocast

    with autocast(device):
        loss, metrics = model(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    return loss, metrics, grad_norm


# ------------------------------------------------------------------------------------------------
# config helpers


def read_training_state(
    directory: Path, keys: tuple[str, ...], version: int, command: str = "train"
) -> dict[str, Any]:
    """``<directory>/training_state.safetensors`` as data, checked for the entries it must hold."""
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
    return state


@contextlib.contextmanager
def state_must_fit(source: Path) -> Iterator[None]:
    """Loading a training state that does not fit this run is one line, not a traceback."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(
            f"the training state in {source} does not fit this run "
            f"({type(exc).__name__}: {str(exc).strip()[:160]}); resume with the run's "
            "own settings, or delete the state and start a new run"
        ) from None


def feature_tokens(encoder: Any) -> int:
    """How many tokens an encoder's per-frame feature is made of (``grid:k`` -> k*k, else 1)."""
    return int(encoder.feature_shape[0])


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


# ------------------------------------------------------------------------------------------------
# the trainer


class _StoreArrays(NamedTuple):
    """A demo store's per-frame low-dimensional arrays, as training reads them."""

    episode_ends: np.ndarray
    action: np.ndarray
    proprio: np.ndarray


@dataclass(frozen=True)
class _LoopSettings:
    """The ``train.*`` settings the loop consults at every step."""

    eval_every: int  # 0: validate only at train.steps
    save_every: int  # 0: write checkpoints/last only where the run stops
    log_every: int
    grad_clip: float  # 0: no clipping
    has_val: bool
    params: list[nn.Parameter]  # the trainable ones, whose gradient norm is clipped

    def logs_at(self, step: int, stop_step: int) -> bool:
        return step % self.log_every == 0 or step == stop_step

    def validates_at(self, step: int, total_steps: int) -> bool:
        return self.has_val and bool(
            (self.eval_every and step % self.eval_every == 0) or step == total_steps
        )

    def saves_at(self, step: int, stop_step: int) -> bool:
        return bool((self.save_every and step % self.save_every == 0) or step == stop_step)


@dataclass
class _LoopState:
    """What the training loop carries from step to step."""

    loss_sum: Tensor  # over the steps since the last log line
    loss_n: int = 0
    interval_time: float = 0.0  # seconds those steps took
    train_time: float = 0.0  # seconds all steps of this invocation took
    train_loss: float | None = None  # the mean loss at the last log line
    last_metrics: dict[str, float] = field(default_factory=dict)  # of the last validation
    last_saved: int = -1  # the step checkpoints/last was last written at


class Trainer:
    """One training run (build with the config, then :meth:`run`)."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        run_dir: str | Path,
        progress: bool = False,
        encoder_name: str | None = None,
    ) -> None:
        check_train_config(cfg)
        self.cfg = to_plain(cfg, json_safe=True)
        self.encoder_name = encoder_name  # the encoder config's name, for messages
        self.tcfg: dict[str, Any] = self.cfg["train"]
        self.dcfg: dict[str, Any] = self.cfg["data"]
        self.progress = progress
        self.dist, self.device = D.init_distributed(str(self.cfg["device"]))
        self.run_dir = Path(D.broadcast_object(str(run_dir), self.dist))
        self.writer: Any = None  # TensorBoard SummaryWriter (rank 0) once the run starts
        self.bar: Any = None  # tqdm progress bar
        self._interrupted = False
        self._previous_sigint: dict[Any, Any] | None = None

    # -------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build the run: data, encoder, policy, optimizer, and the state it resumes from.
        The order is part of the behaviour: the seeded RNGs draw the initial weights in it."""
        self.seed = int(self.cfg["seed"])
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.resume_from = find_resume_checkpoint(self.cfg, self.run_dir)
        state = None
        if self.resume_from is not None:
            state = read_training_state(self.resume_from, STATE_KEYS, STATE_VERSION)
        arrays = self._open_store()
        self.split_source = "a seeded random split"  # _split names the store's own when used
        self.split = self._split(state)
        self._build_encoder(state)
        policy = self._build_policy(arrays)
        features = self._prepare_features()
        self._build_data(policy, arrays, features, fit_normalizer=state is None)
        self._build_model(policy)
        self._build_optimizer()
        self._build_sampler()
        self._restore(state)
        self.ddp = self._distributed_model()
        self.meta_base = self._meta_base()

    def _open_store(self) -> _StoreArrays:
        """Open ``data.store``; its episode ends, actions and proprioception (checked finite)."""
        from robo_s2.data.store import DemoStore

        store_path = self.dcfg["store"]
        if not store_path:
            raise UserError("data.store is not set; pass data.store=<path to a demo store>")
        self.store = store = DemoStore.open(store_path, mode="r")
        ends = store.episode_ends
        if store.n_episodes == 0 or store.n_frames == 0:
            raise UserError(f"{store.path} has no episodes; collect some first (robo-s2 collect)")
        self.action_key = str(self.dcfg["action_key"])
        self.proprio_key = self.dcfg["proprio_key"]
        action = self._read_lowdim(self.action_key)
        proprio = (
            self._read_lowdim(self.proprio_key)
            if self.proprio_key
            else np.zeros((store.n_frames, 0), np.float32)
        )
        fix = "fix or drop that episode (re-collect or re-import the store)"
        check_finite(f"{store.path} data/{self.action_key}", action, ends, fix)
        check_finite(f"{store.path} data/{self.proprio_key}", proprio, ends, fix)
        return _StoreArrays(ends, action, proprio)

    def _split(self, state: Mapping[str, Any] | None) -> Split:
        """The resumed run's episode split, or a new one."""
        store = self.store
        if state is None:
            mode = str(self.dcfg["split"])
            if mode not in ("auto", "random"):
                raise UserError(
                    f"data.split={mode!r}: use auto (the store's own split when it has one) or random"
                )
            own = store_split(store.attrs, store.n_episodes) if mode == "auto" else None
            if own is not None:
                self.split_source = "the store's own train/valid split"
                return own
            split_seed = self.dcfg["split_seed"]
            return split_episodes(
                store.n_episodes,
                self.dcfg["val_fraction"],
                self.seed if split_seed is None else int(split_seed),
            )
        split = Split.from_dict(state["split"])
        self.split_source = "the resumed run's split"
        n_saved = int(state.get("n_episodes", store.n_episodes))
        if int(np.concatenate([split.train, split.val]).max()) >= store.n_episodes:
            raise UserError(
                f"{store.path} has {store.n_episodes} episodes, fewer than the {n_saved} the "
                f"run in {self.resume_from} trained on; resume with its store or start anew"
            )
        if store.n_episodes != n_saved and self.dist.is_main:
            print(
                f"train: note: {store.path} now has {store.n_episodes} episodes; the resumed "
                f"run keeps its split over the first {n_saved}"
            )
        return split

    def _build_encoder(self, state: Mapping[str, Any] | None) -> None:
        from robo_s2.encoders import create_encoder

        self.encoder = encoder = create_encoder(self.cfg["encoder"])
        # the store array the encoder reads: a camera's frames, or data/state for the oracle
        self.image_key = input_key(encoder, str(self.dcfg["image_key"]))
        if self.encoder_name:  # the config's name (vit_t_s2) labels the feature cache, not "timm"
            encoder.label = self.encoder_name
        self.encoder_fp0 = encoder.fingerprint()
        if state is not None:
            self._check_resumed_encoder(state)

    def _build_policy(self, arrays: _StoreArrays) -> nn.Module:
        from policies import create_policy

        pcfg = dict(self.cfg["policy"])
        name = pcfg.pop("name", None)
        if not name:
            raise UserError("policy.name is not set; choose a policy config (policy=...)")
        if pcfg.get("feature_tokens") in ("auto", None):  # (a policy without the option: auto)
            pcfg["feature_tokens"] = feature_tokens(self.encoder)
        pcfg.update(
            feature_dim=int(self.encoder.feature_dim),
            proprio_dim=int(arrays.proprio.shape[1]),
            action_dim=int(arrays.action.shape[1]),
        )
        return create_policy(name, **pcfg)

    def _prepare_features(self) -> np.ndarray | None:
        """The cached features of a frozen encoder, or None when the encoder trains from
        images (then the store's frames are read per batch)."""
        self.trainable_encoder = bool(self.encoder.trainable)
        if not self.trainable_encoder:
            return self._cached_features()
        from robo_s2.encoders.feature_cache import _check_image_key, check_store_frames

        store, encoder = self.store, self.encoder
        _check_image_key(store, self.image_key)
        check_store_frames(store, encoder, self.image_key)
        gb = float(self.dcfg["images_in_memory_gb"])
        self.frames = FrameSource(store.array(self.image_key), gb * 2**30)
        self.feature_precision = feature_precision(
            encoder, self.device, int(self.dcfg["batch_size"])
        )
        self.feature_source = (
            f"images ({self.image_key}), encoder trained end to end in {self.feature_precision}"
        )
        return None

    def _build_data(
        self,
        policy: Any,  # a policies.BasePolicy
        arrays: _StoreArrays,
        features: np.ndarray | None,
        fit_normalizer: bool,
    ) -> None:
        ends, action, proprio = arrays
        self.data = SequenceData(
            ends, action, proprio, policy.history, policy.chunk, features, self.device
        )
        self.train_windows = self.data.frames(self.split.train)
        self.val_windows = self.data.frames(self.split.val)
        if fit_normalizer:
            self._fit_normalizer(policy, features, action, proprio)

    def _build_model(self, policy: nn.Module) -> None:
        self.model = BCModel(
            policy, self.encoder if self.trainable_encoder else None, self.feature_precision
        ).to(self.device)
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        if self.n_params == 0:
            raise UserError("nothing to train: the policy and encoder have no trainable parameters")
        ema = self.tcfg["ema"]
        self.ema = EMA(self.model, float(ema)) if ema else None

    def _build_optimizer(self) -> None:
        """The step budget, AdamW and its warmup + cosine schedule over ``train.steps``."""
        tcfg = self.tcfg
        self.total_steps = int(tcfg["steps"])
        if self.total_steps < 1:
            raise UserError(f"train.steps={self.total_steps} must be >= 1")
        stop_at = tcfg["stop_at"]
        self.stop_step = min(self.total_steps, int(stop_at)) if stop_at else self.total_steps
        self.optimizer = make_optimizer(
            self.model,
            lr=float(tcfg["lr"]),
            weight_decay=float(tcfg["weight_decay"]),
            betas=tuple(tcfg["betas"]),
            lr_by_prefix={"encoder.": tcfg["encoder_lr"]},
            impl=str(tcfg["optimizer"]),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            partial(warmup_cosine, warmup=int(tcfg["warmup_steps"]), total=self.total_steps),
        )

    def _build_sampler(self) -> None:
        self.global_batch = int(self.tcfg["batch_size"])
        if self.global_batch < 1 or self.global_batch % self.dist.world_size:
            raise UserError(
                f"train.batch_size={self.global_batch} must be a positive multiple of the "
                f"{self.dist.world_size} ranks (it is the global batch, split across ranks)"
            )
        self.rank_batch = self.global_batch // self.dist.world_size
        self.sampler = BatchSampler(self.train_windows, self.global_batch, self.seed)

    def _restore(self, state: Mapping[str, Any] | None) -> None:
        """Start at step 0, or continue from a training state (weights, optimizer, RNGs...)."""
        self.step = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        if state is not None:
            assert self.resume_from is not None  # a state is only read from a checkpoint
            with state_must_fit(self.resume_from):
                self._load_state(state)
        # per-rank dropout streams (rank 0 keeps the single-process stream)
        if state is None and self.dist.rank:
            torch.manual_seed(self.seed + 1_000_003 * self.dist.rank)
        self.start_step = self.step

    def _distributed_model(self) -> nn.Module:
        """The model the loop steps: a DistributedDataParallel wrapper under torchrun."""
        if not self.dist.enabled:
            return self.model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(
            self.model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.trainable_encoder,
        )

    def _read_lowdim(self, key: str) -> np.ndarray:
        if key not in self.store.keys():
            raise UserError(
                f"{self.store.path} has no data/{key}; its arrays: {', '.join(self.store.keys())}"
            )
        arr = np.asarray(self.store.array(key)[: self.store.n_frames], dtype=np.float32)
        if arr.ndim != 2:
            raise UserError(
                f"{self.store.path} data/{key} has shape {arr.shape}, expected (frames, dims)"
            )
        return arr

    def _cached_features(self) -> np.ndarray:
        from robo_s2.data.store import DemoStore
        from robo_s2.encoders.feature_cache import cache_status, encoder_label, load_features

        store, enc, key = self.store, self.encoder, self.image_key
        batch_size = int(self.dcfg["batch_size"])
        self.feature_precision = precision = feature_precision(enc, self.device, batch_size)
        status = cache_status(store, enc, key, precision)
        if not status.complete:
            if not self.dcfg["encode"]:
                name = self.encoder_name or encoder_label(enc)
                raise UserError(
                    f"{store.path} has no cached features of encoder {name} "
                    f"({status.n_done}/{status.n_frames} frames of {status.key}) and "
                    f"data.encode=false; run: robo-s2 encode store={store.path} encoder={name} "
                    f"image_key={key} (with the same encoder overrides), or drop data.encode=false "
                    "to encode now"
                )
            if self.dist.is_main:
                self._encode_into_store(status, batch_size, precision)
            D.barrier(self.dist)
            self.store = store = DemoStore.open(store.path, mode="r")
        features = load_features(store, enc, key, precision)
        check_finite(
            f"cached features {status.key} in {store.path}",
            features,
            store.episode_ends,
            f"delete {store.path}/features/{status.key} and encode again (robo-s2 encode)",
        )
        self.feature_source = f"cached features {status.key}"
        self.cache_key = status.key
        return features

    def _encode_into_store(self, status: CacheStatus, batch_size: int, precision: str) -> None:
        """Rank 0: cache the features of the frames ``status`` finds missing, in the store."""
        from tqdm import tqdm

        from robo_s2.data.store import DemoStore
        from robo_s2.encoders.feature_cache import encode_store

        store = self.store
        bar = tqdm(
            total=status.n_frames,
            initial=status.n_done,
            desc="encode",
            unit="frame",
            dynamic_ncols=True,
            delay=1.0,
            disable=not self.progress,
        )

        def on_batch(s: Any) -> None:
            bar.n = s.n_done
            bar.refresh()

        writable = DemoStore.open(
            store.path, mode="a", wait_s=float(self.dcfg["store_wait_s"] or 0)
        )
        try:
            done = encode_store(
                writable,
                self.encoder,
                image_key=self.image_key,
                batch_size=batch_size,
                device=str(self.device),
                on_batch=on_batch,
                precision=precision,
            )
        finally:
            bar.close()
            writable.close()
        print(
            f"train: cached features {done.key} for {done.n_encoded_now} frames of "
            f"{store.path} in {done.seconds:.1f} s"
        )

    def _fit_normalizer(
        self, policy: Any, features: np.ndarray | None, action: np.ndarray, proprio: np.ndarray
    ) -> None:
        frames = self.train_windows
        if features is None:  # training from images: statistics of the initial encoder's features
            n = min(int(self.dcfg["norm_frames"]), frames.size)
            rng = np.random.default_rng(self.seed)
            frames = np.sort(rng.choice(frames, size=n, replace=False))
            self.encoder.to(self.device)
            table = self._encode_frames(self.encoder, frames)
            feats = table[torch.as_tensor(frames, device=self.device)]
        else:
            feats = features[frames]
        policy.fit_normalizer(
            {"feature": feats, "proprio": proprio[frames], "action": action[frames]}
        )

    def _meta_base(self) -> dict[str, Any]:
        attrs = self.store.attrs
        return {
            "env": attrs.get("env", {}),
            "image_key": self.image_key,
            # what evaluation runs the encoder in, so its features match the training ones
            "feature_precision": self.feature_precision,
            "data": {
                "store": str(Path(self.store.path).resolve()),
                "n_episodes": int(self.store.n_episodes),
                "n_frames": int(self.store.n_frames),
                "train_episodes": self.split.to_dict()["train"],
                "val_episodes": self.split.to_dict()["val"],
                "action_key": self.action_key,
                "proprio_key": self.proprio_key,
                "features": self.feature_source,
                "action_semantics": attrs.get("action_semantics"),
                "proprio_semantics": attrs.get("proprio_semantics"),
            },
            "train": {
                "seed": self.seed,
                "world_size": self.dist.world_size,
                "steps": self.total_steps,
                "batch_size": self.global_batch,
                "ema": self.ema.decay if self.ema else None,
            },
        }

    # -------------------------------------------------------------------------- state
    def _rng_state(self) -> dict[str, Any]:
        return {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _set_rng_state(self, s: Mapping[str, Any]) -> None:
        random.setstate(s["python"])
        np.random.set_state(s["numpy"])
        torch.set_rng_state(s["torch"])
        if s.get("cuda") is not None and torch.cuda.is_available():
            if len(s["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(s["cuda"])

    def _training_state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "total_steps": self.total_steps,
            "model": trainable_state(self.model),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rngs,
            "world_size": self.dist.world_size,
            "split": self.split.to_dict(),
            "n_episodes": int(self.store.n_episodes),
            "feature_dim": int(self.encoder.feature_dim),
            "encoder_fingerprint": self.encoder_fp0,
            "policy_config": self.model.policy.config,
            "best": self.best,
            "history": self.history,
        }

    def _check_resumed_encoder(self, state: Mapping[str, Any]) -> None:
        src = self.resume_from
        saved_dim = int(state["feature_dim"])
        name = self.encoder_name or self.encoder.label or self.encoder.name
        if saved_dim != self.encoder.feature_dim:
            raise UserError(
                f"feature width {self.encoder.feature_dim} of encoder "
                f"{name} does not match the {saved_dim}-wide "
                f"features the run in {src} was trained on; resume with its encoder (see "
                f"{src}/config.yaml) or start a new run"
            )
        if state["encoder_fingerprint"] != self.encoder_fp0:
            raise UserError(
                f"encoder {name} is not the one the run in "
                f"{src} was trained with (other config or weights); resume with its encoder "
                f"(see {src}/config.yaml) or start a new run"
            )

    def _load_state(self, state: Mapping[str, Any]) -> None:
        src = self.resume_from
        policy = self.model.policy
        saved_cfg = dict(state["policy_config"])
        now_cfg = policy.config
        diffs = [
            f"{k}: {saved_cfg.get(k)!r} -> {now_cfg.get(k)!r}"
            for k in sorted(set(saved_cfg) | set(now_cfg))
            if k != "execution" and saved_cfg.get(k) != now_cfg.get(k)
        ]
        if diffs:
            raise UserError(
                f"the policy differs from the run being resumed ({src}): {'; '.join(diffs[:4])}; "
                "resume with the same policy settings or start a new run"
            )
        load_partial_state(self.model, state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:  # EMA switched on at resume: start it from the current weights
            load_partial_state(self.ema.shadow, trainable_state(self.model))
        self.optimizer.load_state_dict(state["optimizer"])
        match_state_layout(self.optimizer)
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.best = dict(state.get("best") or {})
        self.history = list(state.get("history") or [])
        rngs = state["rng"]
        if len(rngs) != self.dist.world_size and self.dist.is_main:
            print(
                f"train: note: resuming a {len(rngs)}-rank run on {self.dist.world_size} ranks; "
                "batches stay the same, dropout noise differs from an uninterrupted run"
            )
        self._set_rng_state(rngs[self.dist.rank % len(rngs)])

    # -------------------------------------------------------------------------- features
    @torch.no_grad()
    def _encode_frames(self, encoder: nn.Module, frames: np.ndarray) -> Tensor:
        """A per-frame feature table ``(n_frames, D)`` with the rows of ``frames`` filled."""
        from robo_s2.device import autocast
        from robo_s2.encoders.preprocess import frames_to_input

        was_training = encoder.training
        encoder.eval()
        table = torch.zeros(self.data.n_frames, int(self.encoder.feature_dim), device=self.device)
        bs = int(self.dcfg["batch_size"])
        for lo in range(0, len(frames), bs):
            ids = frames[lo : lo + bs]
            x = frames_to_input(self.frames(ids), self.encoder.image_size, self.device)
            with autocast(self.device, self.feature_precision):
                table[torch.as_tensor(ids, device=self.device)] = encoder(x).float()
        encoder.train(was_training)
        return table

    def _make_batch(self, windows: Tensor) -> dict[str, Tensor]:
        if not self.trainable_encoder:
            return self.data.batch(windows)
        from robo_s2.encoders.preprocess import frames_to_input

        hist = self.data.history_frames(windows)
        uniq, inverse = torch.unique(hist, return_inverse=True)
        frames = self.frames(uniq.cpu().numpy())
        batch = self.data.batch(windows, feature=None)
        batch["frames"] = frames_to_input(frames, self.encoder.image_size, self.device)
        batch["inverse"] = inverse
        return batch

    # -------------------------------------------------------------------------- evaluation
    def eval_model(self) -> BCModel:
        model = self.ema.shadow if self.ema is not None else self.model
        assert isinstance(model, BCModel)
        return model

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics over every window of the validation episodes (sharded over ranks)."""
        from robo_s2.device import autocast

        model = self.eval_model()
        was_training = model.training
        model.eval()
        policy = model.policy
        norm = policy.normalizer
        da = policy.action_dim
        table = None
        if self.trainable_encoder:  # every frame of the validation episodes, encoded once
            table = self._encode_frames(model.encoder, self.val_windows)
        windows = torch.as_tensor(self.val_windows[self.dist.rank :: self.dist.world_size])
        sums = torch.zeros(6 + da, dtype=torch.float64, device=self.device)
        mean_raw = norm.action_mean.float()
        bs = int(self.tcfg["eval_batch_size"])
        for lo in range(0, windows.numel(), bs):
            batch = self.data.batch(windows[lo : lo + bs], feature=table)
            with autocast(self.device):
                pred = policy(batch).float()
            target = batch["action_chunk"]
            mask = batch["chunk_valid"][..., None].float()
            count = mask.sum() * da
            pred_raw = norm.unnormalize(pred, "action")
            target_n = norm.normalize(target, "action")
            base_n = norm.normalize(mean_raw.expand_as(target), "action")
            err_raw = (pred_raw - target).abs() * mask
            sums += torch.stack(
                [
                    (loss_elements(pred, target_n, policy.loss_type) * mask).sum().double(),
                    ((pred - target_n).abs() * mask).sum().double(),
                    ((base_n - target_n).abs() * mask).sum().double(),
                    err_raw.sum().double(),
                    ((mean_raw - target).abs() * mask).sum().double(),
                    count.double(),
                    *err_raw.sum(dim=(0, 1)).double(),
                ]
            )
        sums = D.all_reduce_sum(sums, self.dist)
        model.train(was_training)
        n = max(float(sums[5]), 1.0)
        m = {
            "loss": float(sums[0]) / n,
            "l1": float(sums[1]) / n,
            "baseline_l1": float(sums[2]) / n,
            "l1_raw": float(sums[3]) / n,
            "baseline_l1_raw": float(sums[4]) / n,
        }
        m["ratio"] = m["l1"] / max(m["baseline_l1"], 1e-12)
        m["ratio_raw"] = m["l1_raw"] / max(m["baseline_l1_raw"], 1e-12)
        names = self.meta_base["data"].get("action_semantics") or []
        for i in range(da):
            label = names[i] if i < len(names) else str(i)
            m[f"l1_raw/{label}"] = float(sums[6 + i]) / (n / da)
        return m

    # -------------------------------------------------------------------------- checkpoints
    def save(self, kind: str, metrics: Mapping[str, Any], with_state: bool) -> Path | None:
        """Write ``checkpoints/<kind>`` (rank 0); every rank must call it when ``with_state``."""
        from robo_s2.training.checkpoint import save_checkpoint

        state = None
        if with_state:
            rngs = D.all_gather_object(self._rng_state(), self.dist)
            state = self._training_state(rngs)
        if not self.dist.is_main:
            return None
        model = self.eval_model()
        encoder = model.encoder if model.encoder is not None else self.encoder
        meta = {**self.meta_base, "step": self.step, "metrics": dict(metrics)}
        return save_checkpoint(
            self.run_dir / "checkpoints" / kind,
            model.policy,
            encoder,
            meta,
            config=self.cfg,
            training_state=state,
        )

    # -------------------------------------------------------------------------- logging
    def _log(self, scalars: Mapping[str, float], prefix: str) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, self.step)

    def _describe(self) -> str:
        pol = self.model.policy
        e = self.store.n_episodes
        return (
            f"train: {self.store.path}: {e} episodes ({len(self.split.train)} train / "
            f"{len(self.split.val)} val by {self.split_source}, {self.train_windows.size} "
            "training windows); "
            f"{self.feature_source} ({self.encoder.feature_dim} wide, {pol.feature_tokens} "
            f"token(s)); policy {pol.name} ({self.n_params / 1e6:.2f} M trainable params); "
            f"{self.device.type} x{self.dist.world_size}; run dir {self.run_dir}"
        )

    # -------------------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        """Set up, then train up to ``train.stop_at`` (else ``train.steps``)."""
        self.setup()
        if self.dist.is_main:
            self._open_run_dir()
        if self.step >= self.stop_step:
            return self._result(
                seconds=0.0,
                samples_per_s=0.0,
                train_loss=None,
                final=self.history[-1] if self.history else {},
            )
        settings = self._loop_settings()
        self.bar = self._progress_bar()
        self.model.train()
        loop = _LoopState(loss_sum=torch.zeros((), device=self.device))
        start_wall = time.perf_counter()
        try:
            self._catch_interrupt(True)
            while self.step < self.stop_step:
                metrics, grad_norm = self._train_one_step(settings, loop)
                if settings.logs_at(self.step, self.stop_step):
                    self._log_train(loop, metrics, grad_norm)
                if settings.validates_at(self.step, self.total_steps):
                    self._validate(loop)
                if settings.saves_at(self.step, self.stop_step):
                    self._save_last(loop)
                if self._interrupted:  # Ctrl-C: this step is complete; keep it and stop
                    if loop.last_saved != self.step:
                        self._save_last(loop)
                    raise KeyboardInterrupt
        finally:
            self._catch_interrupt(False)
            self.bar.close()
        if not settings.has_val and self.step == self.total_steps and self.dist.is_main:
            self._copy_last_to_best()
        D.barrier(self.dist)
        steps_run = self.step - self.start_step
        ckpts = self.run_dir / "checkpoints"
        return self._result(
            seconds=time.perf_counter() - start_wall,
            samples_per_s=self.global_batch * steps_run / max(loop.train_time, 1e-9),
            train_loss=loop.train_loss,
            final=loop.last_metrics,
            last=ckpts / LAST,
            checkpoint=ckpts / BEST if (ckpts / BEST).is_dir() else ckpts / LAST,
        )

    def _open_run_dir(self) -> None:
        """Rank 0: the run directory, its TensorBoard writer, config.yaml and metrics.jsonl."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.progress:
            print(self._describe())
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            str(self.run_dir / "tb"), purge_step=self.step if self.step else None
        )
        # the effective config of this invocation (a resumed run's .hydra/ shows only the
        # command line's) and the validation history so far (dropping any later entries
        # an interrupted run logged after its last checkpoint)
        from omegaconf import OmegaConf

        (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg))
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in self.history)

    def _result(self, **outcome: Any) -> TrainResult:
        """This run's :class:`TrainResult`; ``outcome``: what the loop measured."""
        return TrainResult(
            run_dir=self.run_dir,
            start_step=self.start_step,
            step=self.step,
            total_steps=self.total_steps,
            is_main=self.dist.is_main,
            n_params=self.n_params,
            feature_source=self.feature_source,
            best=dict(self.best),
            history=self.history,
            **outcome,
        )

    def _loop_settings(self) -> _LoopSettings:
        tcfg = self.tcfg
        return _LoopSettings(
            eval_every=int(tcfg["eval_every"] or 0),
            save_every=int(tcfg["save_every"] or 0),
            log_every=max(1, int(tcfg["log_every"])),
            grad_clip=float(tcfg["grad_clip"] or 0.0),
            has_val=self.val_windows.size > 0,
            params=[p for p in self.model.parameters() if p.requires_grad],
        )

    def _progress_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            delay=1.0,
            disable=not (self.progress and self.dist.is_main),
        )

    def _train_one_step(
        self, settings: _LoopSettings, loop: _LoopState
    ) -> tuple[dict[str, Tensor], Tensor]:
        """This rank's share of the next global batch, one optimizer step and the EMA update;
        returns the policy's metrics and the gradient norm."""
        t0 = time.perf_counter()
        ids = self.sampler.next()
        r = self.dist.rank
        ids = ids[r * self.rank_batch : (r + 1) * self.rank_batch]
        batch = self._make_batch(ids)
        loss, metrics, grad_norm = train_step(
            self.ddp,
            batch,
            self.optimizer,
            self.scheduler,
            settings.params,
            settings.grad_clip,
            self.device,
        )
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        loop.loss_sum += loss.detach()
        loop.loss_n += 1
        dt = time.perf_counter() - t0
        loop.interval_time += dt
        loop.train_time += dt
        self.bar.update(1)
        return metrics, grad_norm

    def _log_train(
        self, loop: _LoopState, metrics: Mapping[str, Tensor], grad_norm: Tensor
    ) -> None:
        """The mean loss since the last log line (an error when not finite), to TensorBoard."""
        mean_loss = float(loop.loss_sum) / loop.loss_n
        if not np.isfinite(mean_loss):
            raise UserError(
                f"training diverged: the loss is {mean_loss} by step {self.step}; "
                "lower train.lr, raise train.warmup_steps or check the data"
            )
        sps = self.global_batch * loop.loss_n / max(loop.interval_time, 1e-9)
        loop.train_loss = mean_loss
        self._log(
            {
                "loss": mean_loss,
                "l1": float(metrics["l1"]),
                "lr": float(self.scheduler.get_last_lr()[0]),
                "grad_norm": float(grad_norm),
                "samples_per_s": sps,
            },
            "train",
        )
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        loop.loss_sum.zero_()
        loop.loss_n, loop.interval_time = 0, 0.0

    def _validate(self, loop: _LoopState) -> None:
        """Evaluate, record it (history, TensorBoard, metrics.jsonl) and save a new best."""
        loop.last_metrics = metrics = self.evaluate()
        record = {"step": self.step, **metrics}
        self.history.append(record)
        self._log(metrics, "val")
        self.bar.set_postfix(
            loss=f"{loop.train_loss or float('nan'):.4f}",
            val=f"{metrics['l1']:.4f}",
            ratio=f"{metrics['ratio']:.2f}",
            refresh=False,
        )
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        if not self.best or metrics["loss"] < self.best["loss"]:
            self.best = record
            self.save(BEST, metrics, with_state=False)

    def _save_last(self, loop: _LoopState) -> None:
        self.save(LAST, loop.last_metrics or {"train_loss": loop.train_loss}, True)
        loop.last_saved = self.step

    def _copy_last_to_best(self) -> None:
        """Without validation the best checkpoint is the final weights (without the state)."""
        best = self.run_dir / "checkpoints" / BEST
        tmp = best.parent / f".{BEST}.copy"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(self.run_dir / "checkpoints" / LAST, tmp)
        (tmp / TRAINING_STATE).unlink(missing_ok=True)
        replace_path(tmp, best)

    def _catch_interrupt(self, on: bool) -> None:
        """Single process: the first Ctrl-C (SIGINT) or SIGTERM lets the current step finish,
        saves checkpoints/last (an exact resume point) and stops; a second one stops at once.
        Under torchrun both keep their default (the ranks could not agree on a step to stop at)."""
        import signal
        import threading

        self._interrupted = False
        if self.dist.enabled or threading.current_thread() is not threading.main_thread():
            return
        if not on:
            for signum, previous in (self._previous_sigint or {}).items():
                signal.signal(signum, previous)
            self._previous_sigint = None
            return

        def handler(signum: int, frame: Any) -> None:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            if self.dist.is_main and self.progress:
                name = signal.Signals(signum).name
                print(f"\ntrain: {name}: stopping after this step ({name} again to stop at once)")

        self._previous_sigint = {
            s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        D.cleanup(self.dist)


def train(
    cfg: Any, run_dir: str | Path, *, progress: bool = False, encoder_name: str | None = None
) -> TrainResult:
    """Train the policy (and trainable encoder parts) that ``cfg`` describes into ``run_dir``.

    ``cfg`` is ``configs/train.yaml`` resolved (a DictConfig or a plain dict). ``progress`` shows
    progress bars and a header line (rank 0); ``encoder_name`` (the encoder config's name) is used
    in messages. Under ``torchrun`` every rank calls this; rank 0's ``run_dir`` is used by all.
    """
    trainer = Trainer(cfg, run_dir, progress=progress, encoder_name=encoder_name)
    try:
        return trainer.run()
    finally:
        trainer.close()
