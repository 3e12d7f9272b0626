"""BasePolicy, the policy registry and save/load: the batch contract every policy follows.

Every policy is a :class:`BasePolicy` (an ``nn.Module``) registered by name::

    from policies import create_policy
    policy = create_policy("chunk_transformer", feature_dim=768, proprio_dim=10, action_dim=4)
    policy.fit_normalizer({"feature": F, "proprio": P, "action": A})  # arrays (N, D) or stats
    loss, metrics = policy.compute_loss(batch)                     # training, raw inputs
    policy.save_pretrained("ckpt/")                                # model.safetensors + config.json
    policy = BasePolicy.from_pretrained("ckpt/")                   # any registered policy
    policy.reset(n_envs=8); action = policy.act({"feature": f, "proprio": p})   # rollouts

The shared interface (one trainer and one evaluator for every policy):

* Batches are dicts of tensors of RAW (unnormalized) values; every policy normalizes inside with its
  own :class:`~policies.normalizer.Normalizer` (saved in its ``state_dict``). Windows cover the last
  ``H <= policy.history`` steps, index ``H-1`` being the current step:

  - ``feature`` ``(B, H, Df)`` per-step visual feature vectors, or ``(B, H, K, Dt)`` per-step token
    grids (``K = feature_tokens``, ``K * Dt = Df``; a cached ``grid:k`` feature is the flat form);
  - ``proprio`` ``(B, H, Dp)``;
  - ``prev_action`` ``(B, H, Da)``: at each step, the action executed at the step BEFORE it
    (zeros at an episode's first step), so the current step never holds the action to predict;
  - ``valid`` ``(B, H)`` bool, False for padded steps before the episode start (optional: all True);
    the current (last) step must be valid;
  - for training, ``action_chunk`` ``(B, chunk, Da)``: the actions executed at the current step and
    the ``chunk-1`` steps after it, and ``chunk_valid`` ``(B, chunk)`` bool, False past the episode
    end (optional: all True).

* ``forward(batch)`` returns the predicted chunk in normalized action space;
  ``predict_chunk(batch)`` the raw chunk; ``compute_loss(batch)`` a masked loss in normalized
  space and detached metrics.
* ``config`` is a JSON-able dict with a ``name`` key: ``create_policy(**policy.config)`` followed by
  ``load_state_dict`` rebuilds the policy exactly.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policies.execution import Rollout, make_executor, resolve_execution
from policies.normalizer import Normalizer
from robo_s2.errors import UserError
from robo_s2.safe_io import build_within_limits

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LOSSES = ("l1", "smooth_l1", "mse")

# name -> policy class; the built-in ones are registered by policies/__init__.py
_REGISTRY: dict[str, type[BasePolicy]] = {}


def register_policy(name: str, cls: type[BasePolicy]) -> None:
    """Make ``create_policy(name, ...)`` build ``cls`` (a :class:`BasePolicy` subclass)."""
    existing = _REGISTRY.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"policy '{name}' is already registered by {existing.__qualname__}")
    cls.name = name
    _REGISTRY[name] = cls


def available_policies() -> list[str]:
    """Names of the registered policies."""
    return sorted(_REGISTRY)


def create_policy(name: str, **kwargs: Any) -> BasePolicy:
    """Build the policy registered as ``name``; ``create_policy(**policy.config)`` rebuilds one."""
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        raise UserError(
            f"unknown policy '{name}'; known policies: {', '.join(available_policies()) or 'none'}"
        )
    try:
        inspect.signature(cls).bind(**kwargs)
    except TypeError as e:  # unknown / missing options
        raise UserError(f"bad options for policy '{name}': {e}") from None
    try:
        return build_within_limits(lambda: cls(**kwargs), f"policy '{name}' config")
    except (TypeError, ValueError) as e:  # a value of the wrong type or out of range
        raise UserError(f"bad options for policy '{name}': {' '.join(str(e).split())}") from None


def load_policy(
    path: str | Path, device: torch.device | str = "cpu", **overrides: Any
) -> BasePolicy:
    """A policy saved with :meth:`BasePolicy.save_pretrained` (any registered type)."""
    return BasePolicy.from_pretrained(path, device=device, **overrides)


def loss_elements(pred: Tensor, target: Tensor, loss_type: str) -> Tensor:
    """Per-element loss of a ``LOSSES`` type (normalized action space; smooth L1 turns linear at
    0.1, a tenth of a standard deviation), for training and for validation sums alike."""
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if loss_type == "smooth_l1":
        return F.smooth_l1_loss(pred, target, reduction="none", beta=0.1)
    return F.mse_loss(pred, target, reduction="none")


def _check_dim(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise UserError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


class BasePolicy(nn.Module):
    """Shared machinery: normalization, loss, config, save/load and rollouts (``reset``/``act``).

    Subclasses implement :meth:`forward` (raw batch -> normalized chunk ``(B, chunk, Da)``) and
    :meth:`_model_config` (their own constructor options, JSON-able).
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        *,
        feature_dim: int,
        proprio_dim: int,
        action_dim: int,
        history: int,
        chunk: int,
        feature_tokens: int = 1,
        normalization: str | Mapping[str, str] = "gaussian",
        norm_eps: float = 1e-4,
        loss: str = "l1",
        execution: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim = _check_dim("feature_dim", feature_dim, 1)
        self.proprio_dim = _check_dim("proprio_dim", proprio_dim, 0)
        self.action_dim = _check_dim("action_dim", action_dim, 1)
        self.history = _check_dim("history", history, 1)
        self.chunk = _check_dim("chunk", chunk, 1)
        self.feature_tokens = _check_dim("feature_tokens", feature_tokens, 1)
        if self.feature_dim % self.feature_tokens:
            raise UserError(
                f"feature_dim={feature_dim} is not divisible by feature_tokens={feature_tokens} "
                "(a k x k grid feature is k*k tokens of feature_dim/(k*k) channels)"
            )
        self.token_dim = self.feature_dim // self.feature_tokens
        if loss not in LOSSES:
            raise UserError(f"unknown loss '{loss}'; choose one of: {', '.join(LOSSES)}")
        self.loss_type = loss
        self.normalization = (
            dict(normalization) if isinstance(normalization, Mapping) else normalization
        )
        self.norm_eps = float(norm_eps)
        dims = {"feature": self.feature_dim, "proprio": self.proprio_dim, "action": self.action_dim}
        self.normalizer = Normalizer(dims, self.normalization, self.norm_eps)
        self.execution = resolve_execution(execution, self.chunk)
        self._rollout: Rollout | None = None

    # ------------------------------------------------------------------ config
    def _model_config(self) -> dict[str, Any]:
        return {}

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor options with ``name``: ``create_policy(**config)`` rebuilds."""
        cfg = {
            "name": self.name,
            "feature_dim": self.feature_dim,
            "proprio_dim": self.proprio_dim,
            "action_dim": self.action_dim,
            "history": self.history,
            "chunk": self.chunk,
            "feature_tokens": self.feature_tokens,
            "normalization": self.normalization,
            "norm_eps": self.norm_eps,
            "loss": self.loss_type,
            "execution": dict(self.execution),
        }
        cfg.update(self._model_config())
        return json.loads(json.dumps(cfg))  # plain lists/dicts, and proof that it is JSON-able

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (buffers such as the normalizer's statistics not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        """Where the policy's parameters (or, for a parameterless stub, its buffers) live."""
        for t in self.parameters():
            return t.device
        return next(self.normalizer.buffers()).device

    # ------------------------------------------------------------------ normalization
    def fit_normalizer(self, stats_or_arrays: Mapping[str, Any]) -> None:
        """Fit the normalizer from ``{feature, proprio, action}`` arrays ``(N, D)`` or stats."""
        self.normalizer.fit(stats_or_arrays)

    def _normalized_inputs(self, batch: Mapping[str, Tensor]) -> dict[str, Any]:
        """Normalized ``feature (B,H,K,Dt)``, ``proprio (B,H,Dp)``, ``prev_action (B,H,Da)``, and
        ``valid (B,H)``; padded steps' inputs are zeroed so their raw values can never leak."""
        if not self.normalizer.is_fitted:
            raise RuntimeError(
                "the policy's normalizer is not fitted; call policy.fit_normalizer()"
            )
        feat = batch["feature"]
        b, h = feat.shape[:2]
        if feat.dim() == 4:
            if tuple(feat.shape[2:]) != (self.feature_tokens, self.token_dim):
                raise ValueError(
                    f"feature grid has shape {tuple(feat.shape[2:])} per step, expected "
                    f"({self.feature_tokens}, {self.token_dim})"
                )
        elif feat.dim() != 3 or feat.shape[-1] != self.feature_dim:
            raise ValueError(
                f"feature must be (B, H, {self.feature_dim}) or (B, H, {self.feature_tokens}, "
                f"{self.token_dim}), got {tuple(feat.shape)}"
            )
        if not 1 <= h <= self.history:
            raise ValueError(f"window of {h} steps; this policy takes 1..{self.history}")
        valid = batch.get("valid")
        if valid is None:
            valid = torch.ones(b, h, dtype=torch.bool, device=feat.device)
        valid = valid.to(torch.bool)
        if valid.shape != (b, h):
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {(b, h)}")
        if not bool(valid[:, -1].all()):
            raise ValueError("the last (current) step of every window must be valid")
        feat = self.normalizer.normalize(feat.reshape(b, h, self.feature_dim), "feature")
        out: dict[str, Any] = {  # tensors; prev_action None when the batch has none
            "feature": feat.reshape(b, h, self.feature_tokens, self.token_dim),
            "valid": valid,
        }
        if self.proprio_dim:
            out["proprio"] = self.normalizer.normalize(batch["proprio"], "proprio")
        else:
            out["proprio"] = feat.new_zeros(b, h, 0)
        prev = batch.get("prev_action")
        out["prev_action"] = self.normalizer.normalize(prev, "action") if prev is not None else None
        for key in ("feature", "proprio", "prev_action"):
            x = out[key]
            if x is None:
                continue
            if x.shape[:2] != (b, h):
                raise ValueError(
                    f"{key} has shape {tuple(x.shape)}, expected leading dims {(b, h)}"
                )
            m = valid.reshape(b, h, *([1] * (x.dim() - 2)))
            out[key] = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return out

    # ------------------------------------------------------------------ prediction and loss
    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Raw input batch -> predicted action chunk ``(B, chunk, Da)`` in normalized space."""
        raise NotImplementedError

    def predict_chunk(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Raw input batch -> raw predicted action chunk ``(B, chunk, Da)`` (float32)."""
        return self.normalizer.unnormalize(self(batch).float(), "action")

    def compute_loss(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Masked loss in normalized action space, and detached scalar metrics.

        ``l1`` (the default) as in ACT, whose authors report that L1 models action sequences more
        precisely than L2. It fits the conditional median rather than the mean, so an occasional
        outlier or a bimodal choice in the demos pulls predictions less toward an average of modes
        than L2 does, and on normalized targets it weighs every action dimension alike.
        ``smooth_l1`` (beta 0.1) and ``mse`` are available for ablations. Masked entries
        (``chunk_valid`` False) contribute nothing; the mean is over valid entries. Metrics
        (``loss``, ``l1``, ``mse``) are detached 0-d tensors left on the device (``.item()`` them
        only when logging).
        """
        pred = self(batch).float()
        target = batch["action_chunk"]
        if target.shape[1:] != (self.chunk, self.action_dim):
            raise ValueError(
                f"action_chunk has shape {tuple(target.shape)}, expected (B, {self.chunk}, "
                f"{self.action_dim})"
            )
        target = self.normalizer.normalize(target, "action")
        mask = batch.get("chunk_valid")
        if mask is None:
            mask = torch.ones(target.shape[:2], dtype=torch.bool, device=target.device)
        mask = mask.to(torch.bool)[..., None]
        target = torch.where(mask, target, pred.detach())  # no NaN can leak from padded targets
        w = mask.to(pred.dtype)
        denom = (w.sum() * self.action_dim).clamp_min(1.0)
        err = loss_elements(pred, target, self.loss_type)
        loss = (err * w).sum() / denom
        with torch.no_grad():
            diff = (pred - target) * w
            metrics = {
                "loss": loss.detach(),
                "l1": diff.abs().sum() / denom,
                "mse": diff.pow(2).sum() / denom,
            }
        return loss, metrics

    # ------------------------------------------------------------------ rollouts
    def set_execution(self, execution: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Change how chunks are executed (``mode``, ``n_action_steps``, ``k``); drops the running
        rollout (the next ``act`` or ``reset(n)`` starts fresh ones)."""
        self.execution = resolve_execution({**(execution or {}), **kwargs}, self.chunk)
        self._rollout = None

    def reset(
        self,
        n_envs: int | None = None,
        *,
        env_ids: int | Sequence[int] | np.ndarray | None = None,
    ) -> None:
        """Start rollouts: ``reset(n_envs)`` clears every env (fresh state for ``n_envs`` envs);
        ``reset(env_ids=[...])`` clears only those envs' histories and pending actions."""
        if env_ids is not None:
            if self._rollout is None:
                raise RuntimeError("reset(env_ids=...) before reset(n_envs): no rollout to reset")
            if n_envs is not None and n_envs != self._rollout.n_envs:
                raise ValueError(f"n_envs={n_envs} differs from the running {self._rollout.n_envs}")
            self._rollout.reset(env_ids)
            return
        if n_envs is None:
            if self._rollout is None:
                raise RuntimeError("the first reset() needs n_envs")
            n_envs = self._rollout.n_envs
        self._rollout = Rollout(
            n_envs,
            history=self.history,
            feature_dim=self.feature_dim,
            proprio_dim=self.proprio_dim,
            action_dim=self.action_dim,
            executor=make_executor(self.execution, self.chunk, self.action_dim),
            device=self.device,
        )

    def act(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One step of every env: ``obs = {"feature": (n, Df) or (n, K, Dt), "proprio": (n, Dp)}``
        for the CURRENT step (numpy or torch) -> raw actions ``(n, Da)`` float32 numpy.

        Runs in eval mode without gradients (the training mode is restored afterwards); wrap it in
        an autocast context for bf16 inference. Calls ``reset(n)`` itself on first use.
        """
        if self._rollout is None:
            self.reset(int(np.shape(obs["feature"])[0]))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                assert self._rollout is not None  # reset above when there was none
                return self._rollout.step(self.predict_chunk, obs)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` (weights, normalizer) and ``config.json`` to a directory."""
        from robo_s2.safe_io import write_safetensors

        out = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        write_safetensors(out / WEIGHTS_NAME, state, {"format": "pt", "policy": self.name})
        (out / CONFIG_NAME).write_text(json.dumps(self.config, indent=2) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: torch.device | str = "cpu", **overrides: Any
    ) -> BasePolicy:
        """Rebuild a saved policy; ``overrides`` replace config entries that do not change weights
        (e.g. ``execution``). Called on a subclass, the saved type must match it."""
        from robo_s2.safe_io import fit_state_dict, read_safetensors

        src = Path(directory)
        if not (src / CONFIG_NAME).is_file() or not (src / WEIGHTS_NAME).is_file():
            raise UserError(
                f"{src} is not a saved policy (needs {CONFIG_NAME} and {WEIGHTS_NAME}); "
                "point to a directory written by save_pretrained"
            )
        try:
            config = json.loads((src / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{src / CONFIG_NAME} is not valid JSON ({e}); re-save or delete it"
            ) from None
        if not isinstance(config, dict):
            raise UserError(f"{src / CONFIG_NAME} is not a policy config; re-save or delete it")
        config.update(overrides)
        name = config.pop("name", None)
        if cls is not BasePolicy and name != cls.name:
            raise UserError(f"{src} holds a '{name}' policy, not a '{cls.name}' one")
        policy = create_policy(name, **config)
        weights = src / WEIGHTS_NAME
        state = fit_state_dict(
            read_safetensors(weights, "policy weights"),
            policy.state_dict(),
            source=str(weights),
            target=f"the '{name}' policy of {src / CONFIG_NAME}",
            fix="the two files do not belong together: restore them or retrain",
            exact=True,
        )
        policy.load_state_dict(state, strict=True)
        return policy.to(device)
