"""Behaviour cloning of a chunked-action policy on a demo store: the engine of ``robo-s2 train``.

:func:`train` takes the resolved ``configs/train.yaml`` config and a run directory::

    <run>/checkpoints/last   policy (+ trainable encoder), meta, config.yaml,
                             training_state.safetensors (tensors + JSON, no pickle)
    <run>/checkpoints/best   the same at the best validation loss (no training state)
    <run>/tb/                TensorBoard: train/{loss,l1,lr,grad_norm,samples_per_s}, val/...
    <run>/metrics.jsonl      one JSON line per validation
    <run>/config.yaml        the effective resolved config of the latest invocation

Its parts, each in its own module: :mod:`~robo_s2.training.setup` builds the run (store arrays,
episode split, encoder, policy with its normalizer fitted on the training episodes, model, EMA,
optimizer, sampler); :mod:`~robo_s2.training.features` supplies the features (a frozen
encoder's cached ones, consulted once; frames for an encoder that trains end to end);
:mod:`~robo_s2.training.validation` validates; :mod:`~robo_s2.training.resume` and
:mod:`~robo_s2.training.state` find, read and restore what a run resumes from;
:mod:`~robo_s2.training.run_log` writes what people read. This module is the loop.

**Optimisation.** AdamW (decay on matrices only), linear warmup then cosine decay to zero over
``train.steps``, gradient clipping, an EMA of the weights (``train.ema`` = decay, 0/null = off; the
EMA weights are the ones validated and saved), bf16 autocast on CUDA. NaN/inf in actions,
proprioception or features is an error naming the episode and step.

**Resuming** (``resume=true``, or ``resume_from=<run dir>``) restores everything, every RNG per
rank included, so N steps straight and N/2 + resume to N give bit-identical weights.
``train.stop_at`` stops early while the schedule still spans ``train.steps`` (for job time
limits). ``checkpoints/last`` is written every ``train.save_every`` steps, at the end, and on
Ctrl-C (SIGINT) or SIGTERM: the current step finishes and is saved, so an interrupted run loses
no finished step. The state is read back as data only; an old pickled ``training_state.pt`` is
refused.

**Distributed.** Under ``torchrun`` each rank trains a DistributedDataParallel replica on a
disjoint shard of every global batch (``train.batch_size`` is global and must divide by the
number of ranks); validation is sharded and summed; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.core.config import to_plain
from robo_s2.training import distributed as D
from robo_s2.training import setup as S
from robo_s2.training.checkpoint import copy_without_state
from robo_s2.training.data import SequenceData
from robo_s2.training.features import (
    Features,
    encode_frame_table,
    image_batch,
    supply_features,
)
from robo_s2.training.loop_state import LoopSettings, LoopState, TrainResult
from robo_s2.training.optim import BatchSampler, trainable_state
from robo_s2.training.resume import (
    BEST,
    LAST,
    find_resume_checkpoint,
    read_training_state,
    rng_state,
    state_must_fit,
)
from robo_s2.training.run_log import RunLog
from robo_s2.training.setup import BCModel
from robo_s2.training.state import (
    STATE_KEYS,
    STATE_VERSION,
    check_same_policy,
    restore_training_state,
)
from robo_s2.training.state_schema import BCTrainingState
from robo_s2.training.stop_signal import StopBetweenSteps
from robo_s2.training.validation import validate


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
# the trainer


class Trainer:
    """One training run (build with the config, then :meth:`run`)."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        run_dir: str | Path,
        progress: bool = False,
        encoder_name: str | None = None,
    ) -> None:
        S.check_train_config(cfg)
        self.cfg = to_plain(cfg, json_safe=True)
        self.encoder_name = encoder_name  # the encoder config's name, for messages
        self.tcfg: dict[str, Any] = self.cfg["train"]
        self.dcfg: dict[str, Any] = self.cfg["data"]
        self.progress = progress
        self.dist, self.device = D.init_distributed(str(self.cfg["device"]))
        self.run_dir = Path(D.broadcast_object(str(run_dir), self.dist))
        self.log = RunLog(self.run_dir, self.dist.is_main, progress)
        self.stop = StopBetweenSteps(not self.dist.enabled, progress and self.dist.is_main)

    # -------------------------------------------------------------------------- setup
    def setup(self) -> None:
        """Build the run (:mod:`robo_s2.training.setup`) and the state it resumes from. The order
        is part of the behaviour: the seeded RNGs draw the initial weights in it."""
        self.seed = seed = int(self.cfg["seed"])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.resume_from = find_resume_checkpoint(self.cfg, self.run_dir)
        state = None
        if self.resume_from is not None:
            state = read_training_state(
                self.resume_from, STATE_KEYS, STATE_VERSION, BCTrainingState
            )
        arrays = S.open_store(self.dcfg)
        self.split, self.split_source = S.choose_split(
            arrays.store, self.dcfg, seed, state, self.resume_from, self.dist.is_main
        )
        self.encoder, self.image_key = S.build_encoder(
            self.cfg["encoder"], str(self.dcfg["image_key"]), self.encoder_name
        )
        self.encoder_fp0 = self.encoder.fingerprint()
        if state is not None:
            name = self.encoder_name or self.encoder.label or self.encoder.name
            S.check_resumed_encoder(self.encoder, self.encoder_fp0, state, self.resume_from, name)
        policy = S.build_policy(self.cfg["policy"], self.encoder, arrays)
        self.features = self._supply_features(arrays)
        self._build_data(policy, arrays, fit_normalizer=state is None)
        self.model, self.ema, self.n_params = S.build_model(
            policy,
            self.encoder if self.trainable_encoder else None,
            self.features.precision,
            self.tcfg["ema"],
            self.device,
        )
        self.optimizer, self.scheduler, self.total_steps, self.stop_step = S.build_optimizer(
            self.model, self.tcfg
        )
        self.global_batch = int(self.tcfg["batch_size"])
        self.rank_batch = S.check_batch_size(self.global_batch, self.dist.world_size)
        self.sampler = BatchSampler(self.train_windows, self.global_batch, seed)
        self._restore(state)
        self.ddp = D.wrap_model(self.model, self.dist, self.device, self.trainable_encoder)
        train = (seed, self.dist.world_size, self.total_steps, self.global_batch, self.ema)
        self.meta_base = S.checkpoint_meta(
            self.store, self.split, self.image_key, self.features, self.dcfg, *train
        )

    def _supply_features(self, arrays: S.StoreArrays) -> Features:
        features = supply_features(
            arrays.store,
            self.encoder,
            self.image_key,
            self.dcfg,
            self.device,
            self.dist,
            self.progress,
            self.encoder_name,
        )
        self.store = features.store
        self.frames = features.frames  # the frame source of an encoder that trains, else None
        self.trainable_encoder = features.frames is not None
        return features

    def _build_data(self, policy: Any, arrays: S.StoreArrays, fit_normalizer: bool) -> None:
        _, ends, action, proprio = arrays
        self.data = SequenceData(
            ends, action, proprio, policy.history, policy.chunk, self.features.cached, self.device
        )
        self.train_windows = self.data.frames(self.split.train)
        self.val_windows = self.data.frames(self.split.val)
        if fit_normalizer:

            def encode(frames: np.ndarray) -> Tensor:
                self.encoder.to(self.device)
                table = self._frame_table(self.encoder, frames)
                return table[torch.as_tensor(frames, device=self.device)]

            S.fit_normalizer(
                policy,
                arrays,
                self.train_windows,
                self.features.cached,
                encode,
                int(self.dcfg["norm_frames"]),
                self.seed,
            )

    def _restore(self, state: Mapping[str, Any] | None) -> None:
        """Start at step 0, or continue from a training state (weights, optimizer, RNGs...)."""
        self.step = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, float]] = []
        if state is not None:
            assert self.resume_from is not None  # a state is only read from a checkpoint
            with state_must_fit(self.resume_from):
                check_same_policy(
                    state["policy_config"], self.model.policy.config, self.resume_from
                )
                self.step, self.best, self.history = restore_training_state(
                    state,
                    self.model,
                    self.ema,
                    self.optimizer,
                    self.scheduler,
                    self.sampler,
                    self.dist,
                )
        # per-rank dropout streams (rank 0 keeps the single-process stream)
        if state is None and self.dist.rank:
            torch.manual_seed(self.seed + 1_000_003 * self.dist.rank)
        self.start_step = self.step

    # -------------------------------------------------------------------------- state
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

    # -------------------------------------------------------------------------- batches
    def _frame_table(self, encoder: nn.Module, frames: np.ndarray) -> Tensor:
        assert self.frames is not None  # only an encoder that trains reads frames
        bs = int(self.dcfg["batch_size"])
        args = (self.data.n_frames, bs, self.features.precision, self.device)
        return encode_frame_table(encoder, self.frames, frames, *args)

    def _make_batch(self, windows: Tensor) -> dict[str, Tensor]:
        if self.frames is None:
            return self.data.batch(windows)
        return image_batch(self.data, self.frames, windows, self.encoder.image_size, self.device)

    def eval_model(self) -> BCModel:
        model = self.ema.shadow if self.ema is not None else self.model
        assert isinstance(model, BCModel)
        return model

    def evaluate(self) -> dict[str, float]:
        """Validation metrics over every window of the validation episodes (sharded over ranks)."""
        model = self.eval_model()
        was_training = model.training
        model.eval()
        table = None
        if self.trainable_encoder:  # every frame of the validation episodes, encoded once
            table = self._frame_table(model.encoder, self.val_windows)
        metrics = validate(
            model.policy,
            self.data,
            torch.as_tensor(self.val_windows),
            int(self.tcfg["eval_batch_size"]),
            self.dist,
            table,
            self.meta_base["data"].get("action_semantics") or [],
        )
        model.train(was_training)
        return metrics

    # -------------------------------------------------------------------------- checkpoints
    def save(self, kind: str, metrics: Mapping[str, Any], with_state: bool) -> Path | None:
        """Write ``checkpoints/<kind>`` (rank 0); every rank must call it when ``with_state``."""
        from robo_s2.training.checkpoint import save_checkpoint

        state = None
        if with_state:
            state = self._training_state(D.all_gather_object(rng_state(), self.dist))
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

    def _save_last(self, loop: LoopState) -> None:
        self.save(LAST, loop.last_metrics or {"train_loss": loop.train_loss}, True)
        loop.last_saved = self.step

    # -------------------------------------------------------------------------- logging
    def _describe(self) -> str:
        pol = self.model.policy
        e = self.store.n_episodes
        return (
            f"train: {self.store.path}: {e} episodes ({len(self.split.train)} train / "
            f"{len(self.split.val)} val by {self.split_source}, {self.train_windows.size} "
            "training windows); "
            f"{self.features.source} ({self.encoder.feature_dim} wide, {pol.feature_tokens} "
            f"token(s)); policy {pol.name} ({self.n_params / 1e6:.2f} M trainable params); "
            f"{self.device.type} x{self.dist.world_size}; run dir {self.run_dir}"
        )

    def _log_train(self, loop: LoopState, metrics: Mapping[str, Tensor], grad_norm: Tensor) -> None:
        """The mean loss since the last log line (an error when not finite), to TensorBoard."""
        sps = self.global_batch * loop.loss_n / max(loop.interval_time, 1e-9)
        mean_loss = loop.take_mean_loss(self.step)
        self.log.scalars(
            "train",
            {
                "loss": mean_loss,
                "l1": float(metrics["l1"]),
                "lr": float(self.scheduler.get_last_lr()[0]),
                "grad_norm": float(grad_norm),
                "samples_per_s": sps,
            },
            self.step,
        )
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)

    # -------------------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        """Set up, then train up to ``train.stop_at`` (else ``train.steps``)."""
        self.setup()
        self.log.open(
            self.step, self.cfg, self.history, self._describe() if self.dist.is_main else ""
        )
        if self.step >= self.stop_step:
            final = self.history[-1] if self.history else {}
            return self._result(seconds=0.0, samples_per_s=0.0, train_loss=None, final=final)
        settings = self._loop_settings()
        self.bar = self.log.start_bar(self.total_steps, self.step)
        self.model.train()
        loop = LoopState(loss_sum=torch.zeros((), device=self.device))
        start_wall = time.perf_counter()
        try:
            with self.stop:
                while self.step < self.stop_step:
                    metrics, grad_norm = self._train_one_step(settings, loop)
                    if settings.logs_at(self.step, self.stop_step):
                        self._log_train(loop, metrics, grad_norm)
                    if settings.validates_at(self.step, self.total_steps):
                        self._validate(loop)
                    if settings.saves_at(self.step, self.stop_step):
                        self._save_last(loop)
                    if self.stop.requested:  # Ctrl-C: this step is complete; keep it and stop
                        if loop.last_saved != self.step:
                            self._save_last(loop)
                        raise KeyboardInterrupt
        finally:
            self.bar.close()
        if not settings.has_val and self.step == self.total_steps and self.dist.is_main:
            ckpts = self.run_dir / "checkpoints"
            copy_without_state(ckpts / LAST, ckpts / BEST)
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

    def _result(self, **outcome: Any) -> TrainResult:
        """This run's :class:`TrainResult`; ``outcome``: what the loop measured."""
        return TrainResult(
            run_dir=self.run_dir,
            start_step=self.start_step,
            step=self.step,
            total_steps=self.total_steps,
            is_main=self.dist.is_main,
            n_params=self.n_params,
            feature_source=self.features.source,
            best=dict(self.best),
            history=self.history,
            **outcome,
        )

    def _loop_settings(self) -> LoopSettings:
        tcfg = self.tcfg
        return LoopSettings(
            eval_every=int(tcfg["eval_every"] or 0),
            save_every=int(tcfg["save_every"] or 0),
            log_every=max(1, int(tcfg["log_every"])),
            grad_clip=float(tcfg["grad_clip"] or 0.0),
            has_val=self.val_windows.size > 0,
            params=[p for p in self.model.parameters() if p.requires_grad],
        )

    def _train_one_step(
        self, settings: LoopSettings, loop: LoopState
    ) -> tuple[dict[str, Tensor], Tensor]:
        """This rank's share of the next global batch, one optimizer step and the EMA update;
        returns the policy's metrics and the gradient norm."""
        t0 = time.perf_counter()
        ids = self.sampler.next()
        r = self.dist.rank
        batch = self._make_batch(ids[r * self.rank_batch : (r + 1) * self.rank_batch])
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

    def _validate(self, loop: LoopState) -> None:
        """Evaluate, record it (history, TensorBoard, metrics.jsonl) and save a new best."""
        loop.last_metrics = metrics = self.evaluate()
        record = {"step": self.step, **metrics}
        self.history.append(record)
        self.log.scalars("val", metrics, self.step)
        self.bar.set_postfix(
            loss=f"{loop.train_loss or float('nan'):.4f}",
            val=f"{metrics['l1']:.4f}",
            ratio=f"{metrics['ratio']:.2f}",
            refresh=False,
        )
        self.log.record(record)
        if not self.best or metrics["loss"] < self.best["loss"]:
            self.best = record
            self.save(BEST, metrics, with_state=False)

    def close(self) -> None:
        self.log.close()
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
