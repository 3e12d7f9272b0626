"""Window indices over episodes concatenated in time (diffusion_policy's SequenceSampler).

For every frame ``t`` of every episode, a window covers frames ``t-history+1 .. t+future``:
``history`` steps ending at (and including) ``t``, then ``future`` steps after it. Positions outside
the episode are clamped to its first/last frame (edge padding) and flagged in a ``valid`` mask, so a
window never mixes two episodes. Pure numpy, vectorised. Also the seeded episode-level
train/validation split (:func:`split_episodes`) that training, pre-training and probes share.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robo_s2.errors import UserError


def _check_ends(episode_ends: np.ndarray) -> np.ndarray:
    ends = np.asarray(episode_ends)
    if ends.ndim != 1:
        raise UserError(f"episode_ends must be 1-D, got shape {ends.shape}; pass meta/episode_ends")
    if ends.size and not np.issubdtype(ends.dtype, np.integer):
        raise UserError(f"episode_ends must be integers, got {ends.dtype}; pass meta/episode_ends")
    ends = ends.astype(np.int64, copy=False)
    if ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0)):
        raise UserError(
            "episode_ends must be non-negative and non-decreasing (exclusive ends of consecutive "
            "episodes); pass meta/episode_ends of a valid store"
        )
    return ends


def episode_starts(episode_ends: np.ndarray) -> np.ndarray:
    """First frame of every episode (``int64 (E,)``) given exclusive ends."""
    ends = _check_ends(episode_ends)
    return np.concatenate([np.zeros(1, np.int64), ends[:-1]]) if ends.size else ends.copy()


def frame_episode(episode_ends: np.ndarray) -> np.ndarray:
    """Episode index of every frame (``int64 (N,)``) given exclusive ends."""
    ends = _check_ends(episode_ends)
    if not ends.size:
        return np.zeros(0, np.int64)
    return np.repeat(np.arange(ends.size, dtype=np.int64), np.diff(ends, prepend=0))


def sequence_indices(
    episode_ends: np.ndarray, history: int, future: int
) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices and validity mask of one window per frame.

    Returns ``idx`` ``int64 (N, history+future)`` and ``valid`` ``bool (N, history+future)``, where
    ``N = episode_ends[-1]``. Row ``t`` holds frames ``t-history+1 .. t+future``; positions outside
    ``t``'s episode are clamped to the episode's first/last frame and have ``valid`` False. Column
    ``history-1`` is always ``t`` itself.
    """
    if isinstance(history, bool) or not isinstance(history, int | np.integer) or history < 1:
        raise UserError(f"history={history!r} must be an integer >= 1 (1 = only the current step)")
    if isinstance(future, bool) or not isinstance(future, int | np.integer) or future < 0:
        raise UserError(f"future={future!r} must be an integer >= 0 (0 = no steps after t)")
    ends = _check_ends(episode_ends)
    width = int(history) + int(future)
    if not ends.size or ends[-1] == 0:
        return np.zeros((0, width), np.int64), np.zeros((0, width), bool)
    ep = frame_episode(ends)
    first = episode_starts(ends)[ep][:, None]
    last = ends[ep][:, None] - 1
    offsets = np.arange(1 - int(history), int(future) + 1, dtype=np.int64)
    raw = np.arange(ends[-1], dtype=np.int64)[:, None] + offsets[None, :]
    valid = (raw >= first) & (raw <= last)
    idx = np.minimum(np.maximum(raw, first), last)
    return idx, valid


@dataclass
class Split:
    """Episode indices of the training and validation sets (sorted, disjoint)."""

    train: np.ndarray
    val: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {"train": [int(i) for i in self.train], "val": [int(i) for i in self.val]}

    @classmethod
    def from_dict(cls, d: dict[str, Sequence[int]]) -> Split:
        return cls(np.asarray(d["train"], np.int64), np.asarray(d["val"], np.int64))


def split_episodes(n_episodes: int, val_fraction: float, seed: int) -> Split:
    """Seeded episode-level split: ``round(val_fraction * E)`` validation episodes (at least 1 and
    at most ``E - 1``); ``val_fraction = 0`` trains on every episode with no validation set."""
    try:
        val_fraction = float(val_fraction)
    except (TypeError, ValueError):
        raise UserError(f"data.val_fraction={val_fraction!r} must be a number in [0, 1)") from None
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(
            f"data.val_fraction={val_fraction} must be in [0, 1) (e.g. 0.1; 0 = no validation)"
        )
    if n_episodes < 1:
        raise UserError("the store has no episodes; collect some first (robo-s2 collect)")
    if val_fraction == 0.0:
        return Split(np.arange(n_episodes, dtype=np.int64), np.zeros(0, np.int64))
    if n_episodes < 2:
        raise UserError(
            f"too few episodes for a split: need ≥2, store has {n_episodes} (collect more, or set "
            "data.val_fraction=0 to train without validation)"
        )
    n_val = min(max(1, round(val_fraction * n_episodes)), n_episodes - 1)
    perm = np.random.default_rng(seed).permutation(n_episodes)
    return Split(train=np.sort(perm[n_val:]), val=np.sort(perm[:n_val]))


def store_split(attrs: Mapping[str, Any], n_episodes: int) -> Split | None:
    """The train/validation split a store carries, or ``None``: ``attrs["split"]`` (``train`` and
    ``valid`` episode indices, set with ``DemoStore.update_attrs`` and kept by robo_s2's own
    exports and their re-imports) or, for a store imported from robomimic, its ``train``/``valid``
    filter masks. Indices past
    the store's episodes (a partial import) are dropped; with no validation episode left there is
    no split to honour (``None``); one that leaves no training episode, or puts an episode on both
    sides, is refused."""
    masks: Any = attrs.get("split")
    if not isinstance(masks, Mapping):
        rm = attrs.get("robomimic")
        masks = rm.get("masks") if isinstance(rm, Mapping) else None
    if not isinstance(masks, Mapping) or "train" not in masks or "valid" not in masks:
        return None
    train, val = (np.unique([int(i) for i in masks[k] if 0 <= int(i) < n_episodes]).astype(np.int64)
                  for k in ("train", "valid"))  # fmt: skip
    if not val.size:  # e.g. a filter_key=train import: no held-out side to honour
        return None
    if not train.size or np.intersect1d(train, val).size:
        raise UserError(
            f"the store's own train/valid split is unusable ({train.size} train episodes, "
            f"{np.intersect1d(train, val).size} on both sides); train with data.split=random"
        )
    return Split(train=train, val=val)
