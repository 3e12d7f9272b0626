"""Executing predicted action chunks in (vectorized) rollouts.

A chunked policy predicts the next ``chunk`` actions at every query; an *executor* decides when to
query and which action to send to the env:

* :class:`RecedingHorizon` (``mode: receding``) — query a new chunk every ``n_action_steps`` steps
  and execute its first ``n_action_steps`` actions open-loop (diffusion_policy, LeRobot's
  ``n_action_steps``). ``n_action_steps = 1`` re-plans every step; ``= chunk`` executes whole
  chunks.
* :class:`TemporalEnsemble` (``mode: ensemble``) — query every step and keep every past prediction
  of the current time step (up to ``chunk`` of them); execute their weighted average with
  ``w_i = exp(-k * i)``, where ``i = 0`` is the OLDEST prediction, normalized to sum to one. This is
  ACT's temporal ensembling (Zhao et al. 2023, ``exp_weights = np.exp(-k * np.arange(n))`` over
  predictions in order of query time); a positive ``k`` favours older predictions (smoother motion),
  a negative one newer (more reactive), ``k = 0`` is a plain mean.

Both are selected by a JSON-able ``execution`` dict, ``{"mode": "receding"|"ensemble",
"n_action_steps": 8, "k": 0.01}`` (see :func:`resolve_execution`), given to a policy's constructor
(and kept in its config) or changed later with ``policy.set_execution(...)`` without retraining.

:class:`Rollout` is the per-env state of a running policy: rolling windows of the last ``history``
steps' features, proprioception and previous actions with their ``valid`` flags, plus the executor.
Envs are independent: :meth:`Rollout.reset` with ``env_ids`` clears only those envs (for vectorized
rollouts where episodes end at different times), and an env's actions never depend on another env's.

Executors work on raw (unnormalized) actions as numpy arrays; averaging raw actions equals averaging
normalized ones because the normalization is affine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robo_s2.errors import UserError

EXECUTION_MODES = ("receding", "ensemble")
# what a policy built without an execution dict runs; configs/policy/*.yaml state the same values
# (tests/test_config_defaults.py holds the two together)
DEFAULT_MODE = "ensemble"
DEFAULT_N_ACTION_STEPS = 8
DEFAULT_K = 0.01


def resolve_execution(execution: Mapping[str, Any] | None, chunk: int) -> dict[str, Any]:
    """Validated, complete execution dict: ``{"mode", "n_action_steps", "k"}``.

    Missing entries take the defaults (``ensemble``, ``min(8, chunk)``, ``0.01``); bad values are
    :class:`UserError` s.
    """
    cfg = dict(execution or {})
    unknown = set(cfg) - {"mode", "n_action_steps", "k"}
    if unknown:
        raise UserError(
            f"unknown execution options {sorted(unknown)}; allowed: mode, n_action_steps, k"
        )
    mode = str(cfg.get("mode") or DEFAULT_MODE)
    if mode not in EXECUTION_MODES:
        raise UserError(
            f"unknown execution mode '{mode}'; choose one of: {', '.join(EXECUTION_MODES)}"
        )
    n = cfg.get("n_action_steps")
    n = min(DEFAULT_N_ACTION_STEPS, chunk) if n is None else n
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= chunk:
        raise UserError(
            f"execution n_action_steps={n!r} must be an integer in [1, chunk={chunk}] "
            "(how many actions of each predicted chunk to execute before re-planning)"
        )
    k = DEFAULT_K if cfg.get("k") is None else cfg["k"]
    try:
        k = float(k)
    except (TypeError, ValueError):
        raise UserError(f"execution k={k!r} must be a number (ACT's ensembling decay)") from None
    if not np.isfinite(k):
        raise UserError(f"execution k={k} must be finite")
    return {"mode": mode, "n_action_steps": int(n), "k": k}


def _env_ids(env_ids: int | Sequence[int] | np.ndarray | None, n_envs: int) -> np.ndarray:
    if env_ids is None:
        return np.arange(n_envs)
    ids = np.atleast_1d(np.asarray(env_ids))
    if ids.dtype == bool:
        if ids.shape != (n_envs,):
            raise ValueError(f"boolean env mask must have shape ({n_envs},), got {ids.shape}")
        return np.flatnonzero(ids)
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= n_envs):
        raise ValueError(f"env ids {ids.tolist()} out of range for {n_envs} envs")
    return ids


class Executor:
    """Turns chunk predictions into one action per env per step. Subclasses define the policy."""

    def __init__(self, chunk: int, action_dim: int) -> None:
        self.chunk, self.action_dim = int(chunk), int(action_dim)
        self.n_envs = 0

    def reset(self, n_envs: int, env_ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Forget all state (``env_ids=None``: resize to ``n_envs``) or only that of ``env_ids``."""
        raise NotImplementedError

    def needs_query(self) -> np.ndarray:
        """``bool (n_envs,)``: which envs need a fresh chunk before :meth:`step`."""
        raise NotImplementedError

    def add_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        """Hand over raw chunks ``(len(env_ids), chunk, Da)`` predicted at the current step."""
        raise NotImplementedError

    def step(self) -> np.ndarray:
        """The actions ``(n_envs, Da)`` to execute now; advances every env by one step."""
        raise NotImplementedError


class RecedingHorizon(Executor):
    """Query every ``n_action_steps`` steps; execute the first ``n_action_steps`` of each chunk."""

    def __init__(self, chunk: int, action_dim: int, n_action_steps: int) -> None:
        super().__init__(chunk, action_dim)
        self.n_action_steps = int(n_action_steps)
        self.reset(0)

    def reset(self, n_envs: int, env_ids: Sequence[int] | np.ndarray | None = None) -> None:
        if env_ids is None:
            self.n_envs = int(n_envs)
            self.plan = np.zeros((self.n_envs, self.n_action_steps, self.action_dim), np.float32)
            self.cursor = np.full(self.n_envs, self.n_action_steps, np.int64)
        else:
            self.cursor[_env_ids(env_ids, self.n_envs)] = self.n_action_steps

    def needs_query(self) -> np.ndarray:
        return self.cursor >= self.n_action_steps

    def add_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        self.plan[env_ids] = chunks[:, : self.n_action_steps]
        self.cursor[env_ids] = 0

    def step(self) -> np.ndarray:
        if np.any(self.cursor >= self.n_action_steps):
            raise RuntimeError("receding-horizon executor stepped with no plan; query first")
        actions = self.plan[np.arange(self.n_envs), self.cursor].copy()
        self.cursor += 1
        return actions


class TemporalEnsemble(Executor):
    """ACT temporal ensembling: query every step; weighted mean of all predictions for now.

    The weights of the ``m`` predictions available for the current step, ordered from the oldest
    (``i = 0``) to the newest (``i = m-1``), are ``exp(-k * i) / sum_j exp(-k * j)``.
    """

    def __init__(self, chunk: int, action_dim: int, k: float = DEFAULT_K) -> None:
        super().__init__(chunk, action_dim)
        self.k = float(k)
        self.reset(0)

    def reset(self, n_envs: int, env_ids: Sequence[int] | np.ndarray | None = None) -> None:
        if env_ids is None:
            self.n_envs = int(n_envs)
            c = self.chunk
            # ring buffer of the last `chunk` queries per env: slot = query time % chunk
            self.preds = np.zeros((self.n_envs, c, c, self.action_dim), np.float32)
            self.query_time = np.full((self.n_envs, c), -1, np.int64)  # -1 = empty slot
            self.time = np.zeros(self.n_envs, np.int64)
        else:
            ids = _env_ids(env_ids, self.n_envs)
            self.query_time[ids] = -1
            self.time[ids] = 0

    def needs_query(self) -> np.ndarray:
        return np.ones(self.n_envs, bool)

    def add_chunks(self, env_ids: np.ndarray, chunks: np.ndarray) -> None:
        t = self.time[env_ids]
        slot = t % self.chunk
        self.preds[env_ids, slot] = chunks
        self.query_time[env_ids, slot] = t

    def weights(self, n_predictions: int) -> np.ndarray:
        """Normalized weights of ``n`` predictions, oldest first (ACT's ``exp(-k * arange(n))``)."""
        w = np.exp(-self.k * np.arange(n_predictions, dtype=np.float64))
        return w / w.sum()

    def step(self) -> np.ndarray:
        out = np.zeros((self.n_envs, self.action_dim), np.float32)
        for e in range(self.n_envs):
            qt = self.query_time[e]
            age = self.time[e] - qt
            avail = np.flatnonzero((qt >= 0) & (age >= 0) & (age < self.chunk))
            if avail.size == 0:
                raise RuntimeError(
                    "temporal-ensemble executor stepped with no prediction; query first"
                )
            avail = avail[np.argsort(qt[avail], kind="stable")]  # oldest query first
            cands = self.preds[e, avail, age[avail]].astype(np.float64)  # (m, Da)
            out[e] = (self.weights(avail.size)[:, None] * cands).sum(axis=0)
        self.time += 1
        return out


def make_executor(execution: Mapping[str, Any] | None, chunk: int, action_dim: int) -> Executor:
    """The executor an ``execution`` dict (see :func:`resolve_execution`) describes."""
    cfg = resolve_execution(execution, chunk)
    if cfg["mode"] == "receding":
        return RecedingHorizon(chunk, action_dim, cfg["n_action_steps"])
    return TemporalEnsemble(chunk, action_dim, cfg["k"])


PredictFn = Callable[[dict[str, Tensor]], Tensor]


class Rollout:
    """Per-env rolling windows of the last ``history`` steps, plus the executor.

    Windows hold, per env and step: the (flattened) visual feature ``(Df,)``, proprioception
    ``(Dp,)``, the previous action ``(Da,)`` — the action executed at the step before (zeros at an
    episode's first step, as in training windows) — and a ``valid`` flag (False for steps before the
    episode start, whose values are zeros). Index ``history-1`` is the current step.
    """

    def __init__(
        self,
        n_envs: int,
        *,
        history: int,
        feature_dim: int,
        proprio_dim: int,
        action_dim: int,
        executor: Executor,
        device: torch.device | str = "cpu",
    ) -> None:
        if isinstance(n_envs, bool) or not isinstance(n_envs, int | np.integer) or n_envs < 1:
            raise UserError(f"n_envs={n_envs!r} must be an integer >= 1")
        self.n_envs, self.history = int(n_envs), int(history)
        self.feature_dim, self.proprio_dim, self.action_dim = feature_dim, proprio_dim, action_dim
        self.executor, self.device = executor, torch.device(device)
        n, h = self.n_envs, self.history
        self.feature = torch.zeros(n, h, feature_dim, device=self.device)
        self.proprio = torch.zeros(n, h, proprio_dim, device=self.device)
        self.prev_action = torch.zeros(n, h, action_dim, device=self.device)
        self.valid = torch.zeros(n, h, dtype=torch.bool, device=self.device)
        self.last_action = torch.zeros(n, action_dim, device=self.device)
        self.executor.reset(n)

    def reset(self, env_ids: int | Sequence[int] | np.ndarray | None = None) -> None:
        """Start new episodes in ``env_ids`` (all envs when None)."""
        ids = _env_ids(env_ids, self.n_envs)
        t = torch.as_tensor(ids, device=self.device, dtype=torch.long)
        for buf in (self.feature, self.proprio, self.prev_action, self.valid, self.last_action):
            buf[t] = 0
        self.executor.reset(self.n_envs, ids)

    def _to_tensor(self, x: Any, key: str, width: int) -> Tensor:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        x = x.to(self.device, torch.float32)
        if x.shape[0] != self.n_envs:
            raise ValueError(
                f"obs '{key}' has {x.shape[0]} rows but the rollout has {self.n_envs} envs"
            )
        x = x.reshape(self.n_envs, -1)
        if x.shape[1] != width:
            raise ValueError(f"obs '{key}' is {x.shape[1]} wide per env, expected {width}")
        return x

    def push(self, obs: Mapping[str, Any]) -> None:
        """Append the current step's observation to every env's window."""
        feat = self._to_tensor(obs["feature"], "feature", self.feature_dim)
        if self.proprio_dim:
            prop = self._to_tensor(obs["proprio"], "proprio", self.proprio_dim)
        else:
            prop = torch.zeros(self.n_envs, 0, device=self.device)
        for name, new in (("feature", feat), ("proprio", prop), ("prev_action", self.last_action)):
            buf = getattr(self, name)
            buf[:, :-1] = buf[:, 1:].clone()
            buf[:, -1] = new
        self.valid[:, :-1] = self.valid[:, 1:].clone()
        self.valid[:, -1] = True

    def window(self, env_ids: np.ndarray | None = None) -> dict[str, Tensor]:
        """The policy-input batch of ``env_ids``' windows (all envs when None)."""
        sel = slice(None) if env_ids is None else torch.as_tensor(env_ids, device=self.device)
        return {
            "feature": self.feature[sel],
            "proprio": self.proprio[sel],
            "prev_action": self.prev_action[sel],
            "valid": self.valid[sel],
        }

    def step(self, predict_chunk: PredictFn, obs: Mapping[str, Any]) -> np.ndarray:
        """Push ``obs``, query ``predict_chunk`` for the envs that need it, return ``(n, Da)``."""
        self.push(obs)
        need = np.flatnonzero(self.executor.needs_query())
        if need.size:
            chunks = predict_chunk(self.window(need))
            self.executor.add_chunks(need, chunks.detach().float().cpu().numpy())
        actions = self.executor.step()
        self.last_action = torch.tensor(actions, dtype=torch.float32, device=self.device)
        return actions
