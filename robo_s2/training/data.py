"""Training data in memory: per-frame arrays, finite-value checks, window batches (the episode
split is :func:`robo_s2.data.windows.split_episodes`).

A demo store of ~120 episodes x ~40 steps is a few thousand frames: actions, proprioception and
cached features (even a 4x4 grid of 384-wide tokens, 6144 floats per frame) fit in memory as
tensors on the training device, so a batch is a handful of gathers, with no data loader.

Every frame ``t`` is the current step of one window (:func:`robo_s2.data.windows.sequence_indices` with
``history`` steps up to and including ``t`` and ``chunk - 1`` steps after it), edge-padded at the
episode's borders and masked, so a window never mixes two episodes:

* ``feature``, ``proprio`` ``(B, H, .)`` at steps ``t-H+1 .. t`` and ``valid (B, H)``;
* ``prev_action (B, H, Da)``: at each step the action executed at the step before, zeros at an
  episode's first step (the convention of :mod:`policies` and of rollouts);
* ``action_chunk (B, chunk, Da)``: the actions at ``t .. t+chunk-1``, ``chunk_valid`` False past
  the episode's end.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.data.windows import (
    episode_starts,
    frame_episode,
    sequence_indices,
)
from robo_s2.errors import UserError


def check_finite(what: str, array: np.ndarray, episode_ends: np.ndarray, fix: str) -> None:
    """A :class:`UserError` naming the first episode and step where ``array`` has NaN or inf."""
    flat = np.asarray(array).reshape(len(array), -1)
    ok = np.isfinite(flat).all(axis=1)
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    frame = int(bad[0])
    ep = int(frame_episode(episode_ends)[frame])
    step = frame - int(episode_starts(episode_ends)[ep])
    raise UserError(
        f"{what} has NaN/inf at episode {ep} step {step} (frame {frame}; {bad.size} bad frame(s) "
        f"in all); {fix}"
    )


def previous_actions(action: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """``prev[t]`` = the action executed at ``t-1`` in the same episode, zeros at episode starts."""
    prev = np.zeros_like(action)
    prev[1:] = action[:-1]
    starts = episode_starts(episode_ends)
    prev[starts[starts < len(action)]] = 0
    return prev


class SequenceData:
    """Per-frame tensors on one device and the window tables over them.

    ``feature`` may be None (training from images: the trainer encodes each batch's frames and
    passes the per-step features to :meth:`batch`).
    """

    def __init__(
        self,
        episode_ends: np.ndarray,
        action: np.ndarray,
        proprio: np.ndarray,
        history: int,
        chunk: int,
        feature: np.ndarray | Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.episode_ends = np.asarray(episode_ends, np.int64)
        self.n_frames = int(self.episode_ends[-1]) if self.episode_ends.size else 0
        self.history, self.chunk = int(history), int(chunk)
        self.device = torch.device(device)
        idx, valid = sequence_indices(self.episode_ends, self.history, self.chunk - 1)
        self.idx = torch.from_numpy(idx).to(self.device)
        self.valid = torch.from_numpy(valid).to(self.device)
        self.frame_episode = frame_episode(self.episode_ends)
        action = np.asarray(action, np.float32)
        self.action = torch.from_numpy(action).to(self.device)
        prev = previous_actions(action, self.episode_ends)
        self.prev_action = torch.from_numpy(prev).to(self.device)
        self.proprio = torch.from_numpy(np.asarray(proprio, np.float32)).to(self.device)
        self.feature: Tensor | None = None
        if feature is not None:
            self.feature = torch.as_tensor(feature, dtype=torch.float32).to(self.device)

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def proprio_dim(self) -> int:
        return int(self.proprio.shape[1])

    def frames(self, episodes: np.ndarray) -> np.ndarray:
        """Frame indices of ``episodes`` — also the window ids whose current step they are."""
        return np.flatnonzero(np.isin(self.frame_episode, np.asarray(episodes)))

    def history_frames(self, windows: Tensor) -> Tensor:
        """Frame indices ``(B, H)`` of the history steps of ``windows``."""
        return self.idx[windows.to(self.device), : self.history]

    def batch(self, windows: Tensor, feature: Tensor | None = None) -> dict[str, Tensor]:
        """The policy batch of ``windows`` (window ids = current frames, ``(B,)``).

        ``feature`` replaces the per-frame features: either ``(B, H, D)`` per-step features, or
        a per-frame table ``(n_frames, D)`` to gather from.
        """
        w = windows.to(self.device)
        h = self.history
        hist = self.idx[w, :h]
        future = self.idx[w, h - 1 :]
        out = {
            "proprio": self.proprio[hist],
            "prev_action": self.prev_action[hist],
            "valid": self.valid[w, :h],
            "action_chunk": self.action[future],
            "chunk_valid": self.valid[w, h - 1 :],
        }
        if feature is None:
            feature = self.feature
        if feature is not None:
            out["feature"] = feature[hist] if feature.dim() == 2 else feature
        return out


class FrameSource:
    """uint8 frames of a store by frame index: from memory when the array is small enough, else
    straight from the zarr array (one chunk per frame)."""

    def __init__(self, array: Any, max_bytes: float) -> None:
        self.array = array
        nbytes = int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize
        self.in_memory = nbytes <= max_bytes
        self._frames = np.asarray(array[:]) if self.in_memory else None

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames, np.int64)
        if self._frames is not None:
            return self._frames[frames]
        return np.asarray(self.array.oindex[frames])
