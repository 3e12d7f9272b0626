"""MVP-style masked visual pre-training of a ViT encoder: the engine of ``robo-s2 pretrain``.

:func:`pretrain` takes the resolved ``configs/pretrain.yaml`` and a run directory::

    <run>/encoder.pth                         the encoder in MVP's format ({"model": timm-keyed
                                              state dict, "robo_s2": meta}), rewritten every epoch
    <run>/checkpoints/last/training_state.safetensors
                                              MAE (encoder + decoder), optimizer, schedule,
                                              sampler (tensors + JSON, no pickle)
    <run>/reconstructions.png                 held-out images | masked input | reconstruction
    <run>/tb/                                 TensorBoard: train/{loss,lr,images_per_s},
                                              val/loss (step 0 = the random init), images
    <run>/metrics.jsonl                       one JSON line per epoch
    <run>/scenes.npz                          randomized-scene frames (when scenes.episodes > 0)

Images come from demo stores, image folders and optional randomized scenes
(:mod:`robo_s2.data.image_sources`), split by episode / file into training and held-out images.
Training is MAE (:mod:`robo_s2.pretraining.mae`): random-resized crops and flips, 75 % masking, AdamW with
linear warmup and cosine decay (per step), in ``precision`` (auto: bf16 autocast on CUDA and on
CPUs with native bf16, see :mod:`robo_s2.device`). Every random draw of step ``s``
(crops, flips, masks) comes from a generator seeded with ``(seed, s)`` and the batch order from a
:class:`~robo_s2.training.optim.BatchSampler`, so resuming (``resume=true``) continues exactly:
``epochs=2`` straight and ``epochs=1`` + resume to 2 give bit-identical weights on the CPU.
The training state is written after every epoch and, with ``train.save_every_steps=N``, every N
steps inside an epoch too (with the epoch's running loss, so a run resumed mid-epoch reports the
same epoch loss); ``encoder.pth`` is rewritten at the end of each epoch only.

Load the result as a frozen encoder: ``encoder=mvp_s encoder.weights=<run>/encoder.pth`` for MVP
architectures (``arch=vit_s16|vit_b16|vit_l16``), or ``encoder=vit_t encoder.pretrained=true
encoder.weights=<run>/encoder.pth`` for a timm ViT (``arch=vit_tiny_patch16_224``); see
``configs/encoder/mae_t.yaml``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.core.config import require_complete, to_plain
from robo_s2.core.io import atomic_file
from robo_s2.device import resolve_precision
from robo_s2.errors import UserError
from robo_s2.pretraining.mae import MaskedAutoencoder, save_mvp_checkpoint
from robo_s2.safe_io import save_state
from robo_s2.training.checkpoint import TRAINING_STATE
from robo_s2.training.optim import (
    BatchSampler,
    load_optimizer_state,
    make_optimizer,
    warmup_cosine,
)
from robo_s2.training.resume import (
    LAST,
    find_resume_checkpoint,
    read_training_state,
    state_must_fit,
)
from robo_s2.training.state_schema import MAETrainingState

STATE_VERSION = 1
STATE_KEYS: tuple[str, ...] = ("version", "kind", "step", "mae_config", "model", "optimizer")
STATE_KEYS += ("scheduler", "sampler", "history", "n_images", "n_train")
ENCODER_FILE = "encoder.pth"
VAL_MASK_SEED = 12_345  # held-out masks are the same at every evaluation (comparable losses)


@dataclass
class PretrainResult:
    run_dir: Path
    encoder_path: Path
    epoch: int
    epochs: int
    start_epoch: int
    step: int
    seconds: float
    images_per_s: float
    train_loss: float | None
    val_loss: float | None
    val_loss_init: float | None  # the random init's held-out loss (fresh runs)
    n_train: int
    n_val: int
    skipped: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of every random draw of one step (crops, flips, masks)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


@torch.no_grad()
def reconstruction_loss(
    model: MaskedAutoencoder,
    images: np.ndarray,
    batch_size: int = 64,
    mask_seed: int = VAL_MASK_SEED,
    device: torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """MAE loss of uint8 ``(N, S, S, 3)`` images (no augmentation, fixed masks), averaged, with
    the model run in a resolved ``precision`` (fp32 | bf16)."""
    from robo_s2.device import autocast
    from robo_s2.encoders.preprocess import frames_to_input

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(mask_seed)
    total, n = 0.0, 0
    for lo in range(0, len(images), batch_size):
        x = frames_to_input(images[lo : lo + batch_size], model.img_size, device)
        with autocast(device, precision):
            loss, _, _ = model(x, gen)
        total += float(loss) * x.shape[0]
        n += x.shape[0]
    model.train(was_training)
    return total / max(n, 1)


@torch.no_grad()
def reconstruction_grid(model: MaskedAutoencoder, images: np.ndarray, seed: int) -> Tensor:
    """``(3, H, W)`` grid, one row per image: original | masked input | reconstruction."""
    from robo_s2.encoders.preprocess import frames_to_input

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = frames_to_input(images, model.img_size, device)
    _, pred, mask = model(x, torch.Generator().manual_seed(seed))
    recon = model.reconstruct(x, pred, mask)
    p = model.patch_size
    pix_mask = mask.view(-1, model.grid, model.grid).repeat_interleave(p, 1).repeat_interleave(p, 2)
    masked = x * (1 - pix_mask[:, None]) + 0.5 * pix_mask[:, None]
    model.train(was_training)
    rows = torch.cat([x, masked, recon], dim=3)  # (N, 3, S, 3S)
    return torch.cat(list(rows.float().cpu()), dim=1)


def _save_png(grid: Tensor, path: Path) -> None:
    from PIL import Image

    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with atomic_file(path) as tmp:
        Image.fromarray(arr).save(tmp)


def _image_paths(images: Any) -> list[str]:
    if images is None or images == "???":
        return []
    if isinstance(images, str):
        return [p.strip() for p in images.split(",") if p.strip()]
    return [str(p) for p in images]


class Pretrainer:
    """One pre-training run (build with the config, then :meth:`run`)."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | Path, progress: bool = False) -> None:
        from robo_s2.device import resolve_device

        require_complete(cfg, "pretrain")
        self.cfg = to_plain(cfg, json_safe=True)
        self.tcfg: dict[str, Any] = dict(self.cfg["train"])
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.device = resolve_device(str(self.cfg["device"]))
        self.writer: Any = None  # a TensorBoard SummaryWriter once the run starts

    # -------------------------------------------------------------------------- setup
    def _load_pool(self) -> None:
        from robo_s2.data.image_sources import ImagePool, load_images, scene_frames

        cfg = self.cfg
        size = self.image_size
        paths = _image_paths(cfg["images"])
        scfg = dict(cfg["scenes"])
        n_scenes = int(scfg["episodes"] or 0)
        if not paths and not n_scenes:
            raise UserError(
                "no images to pre-train on: set images=<store or image folder> (several: "
                "images=[a,b]) and/or scenes.episodes=<n> for randomized-scene frames"
            )
        keys = cfg["image_keys"]
        pool = (
            load_images(
                paths,
                size,
                image_keys=[keys] if isinstance(keys, str) else keys,
                frames_per_episode=cfg["frames_per_episode"],
                max_images=cfg["max_images"],
                seed=self.seed,
            )
            if paths
            else ImagePool(np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64))
        )
        if n_scenes:
            cache = self.run_dir / "scenes.npz"
            spec = json.dumps({**scfg, "size": size, "seed": self.seed}, sort_keys=True)
            frames = None
            if cache.is_file():
                z = np.load(cache)
                if str(z["spec"]) == spec:
                    frames, groups = z["frames"], z["groups"]
            if frames is None:
                if self.progress:
                    print(f"pretrain: rendering {n_scenes} randomized-scene episodes")
                frames, groups = scene_frames(
                    n_scenes, size, seed=self.seed,
                    frames_per_episode=int(scfg["frames_per_episode"]),
                    cameras=tuple(scfg["cameras"]),
                    cube_sizes=tuple(scfg["cube_sizes"]),
                    max_distractors=int(scfg["max_distractors"]),
                    steps=tuple(scfg["steps"]),
                )  # fmt: skip
                with atomic_file(cache) as tmp:
                    np.savez(tmp, frames=frames, groups=groups, spec=np.array(spec))
            offset = int(pool.groups.max()) + 1 if len(pool) else 0
            pool = ImagePool(
                np.concatenate([pool.images, frames]),
                np.concatenate([pool.groups, groups + offset]),
                [*pool.sources, f"randomized scenes: {len(frames)} frames, {n_scenes} episodes"],
                pool.skipped,
            )
        self.pool = pool
        self.train_ids, self.val_ids = pool.split(float(cfg["val_fraction"]), self.seed)
        if len(self.train_ids) == 0:
            raise UserError("no training images left after holding out val_fraction of them")

    def setup(self) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        self.seed = int(cfg["seed"])
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        torch.manual_seed(self.seed)
        self.resume_from = find_resume_checkpoint(cfg, self.run_dir, command="pretrain")
        state = None
        if self.resume_from is not None:
            state = read_training_state(
                self.resume_from, STATE_KEYS, STATE_VERSION, MAETrainingState, "pretrain"
            )
            if state.get("kind") != "mae":
                raise UserError(
                    f"{self.resume_from} is not a robo-s2 pretrain checkpoint this version reads"
                )
        self.image_size = int(cfg["image_size"])
        dcfg = dict(cfg["decoder"])
        self.model = MaskedAutoencoder(
            arch=str(cfg["arch"]),
            img_size=self.image_size,
            decoder_dim=int(dcfg["dim"]),
            decoder_depth=int(dcfg["depth"]),
            decoder_heads=int(dcfg["heads"]),
            mask_ratio=float(cfg["mask_ratio"]),
            norm_pix_loss=bool(cfg["norm_pix_loss"]),
            seed=self.seed,
        ).to(self.device)
        if state is not None and state["mae_config"] != self.model.config:
            raise UserError(
                f"the model differs from the run being resumed ({self.resume_from}): "
                f"{state['mae_config']} vs {self.model.config}; resume with its settings"
            )
        self._load_pool()
        self.batch_size = int(tcfg["batch_size"])
        self.epochs = int(tcfg["epochs"])
        if self.batch_size < 1 or self.epochs < 1:
            raise UserError("train.batch_size and train.epochs must be >= 1")
        # the encoder sees the visible (unmasked) patches only: those decide whether bf16 pays
        grid = self.image_size // self.model.patch_size
        visible = round(grid * grid * (1 - self.model.mask_ratio))
        self.precision = resolve_precision(
            str(cfg["precision"]), self.device, self.batch_size * (visible + 1)
        )
        stop = tcfg["stop_at_epoch"]
        self.stop_epoch = min(self.epochs, int(stop)) if stop else self.epochs
        self.steps_per_epoch = max(1, math.ceil(len(self.train_ids) / self.batch_size))
        self.total_steps = self.epochs * self.steps_per_epoch
        self.optimizer = make_optimizer(
            self.model,
            lr=float(tcfg["lr"]),
            weight_decay=float(tcfg["weight_decay"]),
            betas=tuple(tcfg["betas"]),
        )
        warmup = int(float(tcfg["warmup_epochs"]) * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(warmup_cosine, warmup=warmup, total=self.total_steps)
        )
        self.sampler = BatchSampler(self.train_ids, self.batch_size, self.seed)
        self.step, self.history, self.val_loss_init = 0, [], None
        self.partial: dict[str, Any] | None = None  # the running loss of an epoch saved mid-way
        if state is not None:
            if state["n_images"] != len(self.pool) or state["n_train"] != len(self.train_ids):
                raise UserError(
                    f"the images differ from the run being resumed ({self.resume_from}: "
                    f"{state['n_images']} images, now {len(self.pool)}); resume with its sources"
                )
            assert self.resume_from is not None  # a state is only read from a checkpoint
            with state_must_fit(self.resume_from):
                self.model.load_state_dict(state["model"])
                load_optimizer_state(self.optimizer, state["optimizer"])
                self.scheduler.load_state_dict(state["scheduler"])
                self.sampler.load_state_dict(state["sampler"])
            self.step = int(state["step"])
            self.history = list(state["history"])
            self.val_loss_init = state.get("val_loss_init")
            if self.step % self.steps_per_epoch:
                self.partial = state.get("partial")
        self.start_epoch = self.step // self.steps_per_epoch

    # -------------------------------------------------------------------------- pieces
    def train_step(self) -> Tensor:
        from robo_s2.data.image_sources import augment
        from robo_s2.device import autocast

        ids = self.sampler.next().numpy()
        gen = step_generator(self.seed, self.step)
        raw = torch.from_numpy(self.pool.images[ids]).to(self.device)
        t = self.tcfg
        x = augment(
            raw, self.image_size, gen, scale=tuple(t["crop_scale"]),
            hflip=float(t["hflip"]),
        )  # fmt: skip
        with autocast(self.device, self.precision):
            loss, _, _ = self.model(x, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = float(t["grad_clip"] or 0.0)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.detach()

    def held_out(self) -> np.ndarray:
        return self.pool.images[self.val_ids]

    def validate(self) -> float | None:
        if len(self.val_ids) == 0:
            return None
        return reconstruction_loss(
            self.model, self.held_out(), batch_size=self.batch_size, precision=self.precision
        )

    def save(self, epoch: int, record: Mapping[str, Any]) -> None:
        """End of an epoch: ``encoder.pth`` and the training state."""
        meta = {
            **self.model.config,
            "epoch": epoch,
            "step": self.step,
            "val_loss": record.get("val_loss"),
            "images": self.pool.sources,
            "format": "MVP/MAE: encoder state dict under 'model', timm key names",
        }
        save_mvp_checkpoint(self.model, str(self.run_dir / ENCODER_FILE), meta)
        self.save_state(epoch)

    def save_state(self, epoch: int, partial: Mapping[str, Any] | None = None) -> None:
        """``checkpoints/last``: everything resuming needs (``partial``: mid-epoch running loss)."""
        state = {
            "version": STATE_VERSION,
            "kind": "mae",
            "step": self.step,
            "epoch": epoch,
            "mae_config": self.model.config,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "history": self.history,
            "val_loss_init": self.val_loss_init,
            "n_images": len(self.pool),
            "n_train": len(self.train_ids),
            "partial": None if partial is None else dict(partial),
        }
        last = self.run_dir / "checkpoints" / LAST
        last.mkdir(parents=True, exist_ok=True)
        save_state(last / TRAINING_STATE, state)
        from omegaconf import OmegaConf

        (last / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.cfg)))

    def _recon_png(self, epoch: int) -> None:
        n = int(self.cfg["recon_images"] or 0)
        if n <= 0:
            return
        ids = self.val_ids if len(self.val_ids) else self.train_ids
        pick = ids[np.linspace(0, len(ids) - 1, min(n, len(ids))).round().astype(int)]
        grid = reconstruction_grid(self.model, self.pool.images[pick], VAL_MASK_SEED)
        _save_png(grid, self.run_dir / "reconstructions.png")
        if self.writer is not None:
            self.writer.add_image("reconstructions", grid, self.step)

    def describe(self) -> str:
        n_params = sum(p.numel() for p in self.model.encoder.parameters())
        return (
            f"pretrain: {self.model.arch} ({n_params / 1e6:.1f} M encoder params) at "
            f"{self.image_size}px on {len(self.train_ids)} images, {len(self.val_ids)} held out "
            f"[{'; '.join(self.pool.sources)}]"
            + (f"; skipped {len(self.pool.skipped)} unreadable" if self.pool.skipped else "")
            + f"; {self.device.type}; run dir {self.run_dir}"
        )

    # -------------------------------------------------------------------------- the loop
    def run(self) -> PretrainResult:
        self._start()
        result = PretrainResult(
            run_dir=self.run_dir, encoder_path=self.run_dir / ENCODER_FILE,
            epoch=self.start_epoch, epochs=self.epochs, start_epoch=self.start_epoch,
            step=self.step, seconds=0.0, images_per_s=0.0, train_loss=None, val_loss=None,
            val_loss_init=self.val_loss_init, n_train=len(self.train_ids),
            n_val=len(self.val_ids), skipped=list(self.pool.skipped), history=self.history,
        )  # fmt: skip
        log_every = max(1, int(self.tcfg["log_every"]))
        save_every_steps = int(self.tcfg["save_every_steps"] or 0)
        bar = self._progress_bar()
        self.model.train()
        start, train_time, images_done = time.perf_counter(), 0.0, 0
        try:
            for epoch in range(self.start_epoch + 1, self.stop_epoch + 1):
                loss_sum, n, t_epoch = self._train_epoch(epoch, bar, log_every, save_every_steps)
                record = self._end_epoch(epoch, loss_sum, n, t_epoch)
                train_time += t_epoch
                images_done += n * self.batch_size
                result.epoch = epoch
                result.train_loss, result.val_loss = record["train_loss"], record["val_loss"]
        finally:
            bar.close()
        result.step = self.step
        result.seconds = time.perf_counter() - start
        result.images_per_s = images_done / max(train_time, 1e-9)
        if result.val_loss is None and self.history:
            result.val_loss = self.history[-1]["val_loss"]
            result.train_loss = self.history[-1]["train_loss"]
        return result

    def _start(self) -> None:
        """Set up, open TensorBoard and, on a fresh run, score the random init on held-out images."""
        from torch.utils.tensorboard import SummaryWriter

        self.setup()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.progress:
            print(self.describe())
        self.writer = SummaryWriter(
            str(self.run_dir / "tb"), purge_step=self.step if self.step else None
        )
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.step == 0:
            self.val_loss_init = self.validate()
            if self.val_loss_init is not None:
                self.writer.add_scalar("val/loss", self.val_loss_init, 0)

    def _progress_bar(self) -> Any:
        from tqdm import tqdm

        return tqdm(
            total=self.stop_epoch * self.steps_per_epoch, initial=self.step, desc="pretrain",
            unit="step", dynamic_ncols=True, delay=1.0, disable=not self.progress,
        )  # fmt: skip

    def _running_loss(self) -> tuple[Tensor, int, float]:
        """Loss sum, steps and seconds of the epoch so far: zero, or what a mid-epoch save kept."""
        loss_sum, n, t_epoch = torch.zeros((), device=self.device), 0, 0.0
        if self.partial is not None:  # resumed inside this epoch
            loss_sum = self.partial["loss_sum"].to(self.device)
            n, t_epoch = int(self.partial["n"]), float(self.partial["epoch_s"])
            self.partial = None
        return loss_sum, n, t_epoch

    def _train_epoch(
        self, epoch: int, bar: Any, log_every: int, save_every_steps: int
    ) -> tuple[Tensor, int, float]:
        """The steps of ``epoch`` still to do; returns its loss sum, steps and seconds."""
        loss_sum, n, t_epoch = self._running_loss()
        while self.step < epoch * self.steps_per_epoch:
            t0 = time.perf_counter()
            loss = self.train_step()
            dt = time.perf_counter() - t0
            t_epoch += dt
            loss_sum += loss
            n += 1
            bar.update(1)
            if self.step % log_every == 0:
                self._log_step(loss, dt, epoch, bar)
            in_epoch = self.step < epoch * self.steps_per_epoch
            if save_every_steps and self.step % save_every_steps == 0 and in_epoch:
                partial = {"loss_sum": loss_sum, "n": n, "epoch_s": t_epoch}
                self.save_state(epoch - 1, partial)
        return loss_sum, n, t_epoch

    def _log_step(self, loss: Tensor, dt: float, epoch: int, bar: Any) -> None:
        value = float(loss)
        if not math.isfinite(value):
            raise UserError(
                f"pre-training diverged: the loss is {value} at step "
                f"{self.step}; lower train.lr or raise train.warmup_epochs"
            )
        self.writer.add_scalar("train/loss", value, self.step)
        self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.step)
        self.writer.add_scalar("train/images_per_s", self.batch_size / dt, self.step)
        bar.set_postfix(loss=f"{value:.4f}", epoch=epoch, refresh=False)

    def _end_epoch(self, epoch: int, loss_sum: Tensor, n: int, t_epoch: float) -> dict[str, Any]:
        """Validate, log, write the reconstructions, checkpoint and ``metrics.jsonl``; returns
        the epoch's record."""
        train_loss = float(loss_sum) / max(n, 1)
        val = self.validate()
        ips = n * self.batch_size / max(t_epoch, 1e-9)
        record = {
            "epoch": epoch, "step": self.step, "train_loss": train_loss,
            "val_loss": val, "images_per_s": ips, "epoch_s": t_epoch,
        }  # fmt: skip
        self.history.append(record)
        if val is not None:
            self.writer.add_scalar("val/loss", val, self.step)
        self.writer.add_scalar("train/epoch_loss", train_loss, self.step)
        self._recon_png(epoch)
        self.save(epoch, record)
        with open(self.run_dir / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in self.history)
        return record

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def pretrain(cfg: Any, run_dir: str | Path, *, progress: bool = False) -> PretrainResult:
    """Pre-train the encoder that ``cfg`` (``configs/pretrain.yaml``, resolved) describes."""
    trainer = Pretrainer(cfg, run_dir, progress=progress)
    try:
        return trainer.run()
    finally:
        trainer.close()
