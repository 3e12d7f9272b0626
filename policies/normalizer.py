"""Per-dimension normalization of policy inputs and outputs, stored inside the policy.

A :class:`Normalizer` holds, for each key (``feature``, ``proprio``, ``action``), an affine map
``normalize(x) = (x - loc) / scale`` as registered buffers, so the statistics live in the policy's
``state_dict`` and travel with every checkpoint. Two modes, chosen per key:

* ``gaussian`` — ``loc = mean``, ``scale = std`` (ACT, LeRobot's ``MEAN_STD``).
* ``limits``   — ``[min, max]`` mapped to ``[-1, 1]``: ``loc = (max+min)/2``,
  ``scale = (max-min)/2`` (diffusion_policy's ``LinearNormalizer``, LeRobot's ``MIN_MAX``).

Constant (or nearly constant) dimensions — a spread below ``eps`` — get ``scale = 1`` and are only
centred, as diffusion_policy does: the training values map to exactly 0, and a deviation at test
time passes through unamplified instead of being blown up by a tiny divisor. Nothing is ever
divided by zero, so no NaN or inf can appear.

Statistics are computed in float64 over chunks of rows (:func:`compute_stats`), so a feature cache
bigger than memory (a zarr array) can be fitted without loading it whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.errors import UserError

NORM_MODES = ("gaussian", "limits")
STAT_NAMES = ("mean", "std", "min", "max")


def compute_stats(array: Any, dim: int | None = None, rows_per_chunk: int = 16384) -> dict:
    """Per-dimension ``mean``, ``std``, ``min``, ``max`` and ``count`` of ``array``.

    ``array`` is anything sliceable along its first axis with a ``shape`` (numpy, torch, zarr), of
    shape ``(N, ..., D)``; all leading axes are pooled. When ``dim`` is given and the trailing axes
    multiply to it (a ``(N, K, Dt)`` token grid with ``dim = K*Dt``), they are flattened to ``dim``.
    Computed in float64 chunk by chunk, combined with Chan et al.'s parallel-variance formula.
    """
    shape = tuple(array.shape)
    if len(shape) < 2:
        raise UserError(f"statistics need an array of shape (N, D), got shape {shape}")
    width = dim if dim is not None else shape[-1]
    n_total, mean, m2 = 0, np.zeros(width), np.zeros(width)
    lo, hi = np.full(width, np.inf), np.full(width, -np.inf)
    for start in range(0, shape[0], rows_per_chunk):
        block = array[start : start + rows_per_chunk]
        if isinstance(block, Tensor):
            block = block.detach().cpu().numpy()
        block = np.asarray(block, dtype=np.float64)
        try:
            block = block.reshape(-1, width)
        except ValueError:
            raise UserError(
                f"statistics for {width}-wide vectors got an array of shape {shape}; "
                "check the policy's feature_dim/proprio_dim/action_dim against the data"
            ) from None
        if not np.all(np.isfinite(block)):
            raise UserError("statistics got NaN or inf values; clean the data before fitting")
        n = block.shape[0]
        if n == 0:
            continue
        b_mean = block.mean(axis=0)
        b_m2 = ((block - b_mean) ** 2).sum(axis=0)
        delta = b_mean - mean
        total = n_total + n
        mean = mean + delta * (n / total)
        m2 = m2 + b_m2 + delta**2 * (n_total * n / total)
        n_total = total
        lo, hi = np.minimum(lo, block.min(axis=0)), np.maximum(hi, block.max(axis=0))
    if n_total == 0:
        raise UserError(f"statistics need at least one row, got an array of shape {shape}")
    std = np.sqrt(m2 / n_total)
    return {"mean": mean, "std": std, "min": lo, "max": hi, "count": n_total}


def _is_stats(value: Any) -> bool:
    return isinstance(value, Mapping) and any(k in value for k in STAT_NAMES)


class Normalizer(nn.Module):
    """Per-key, per-dimension affine normalization with its statistics in buffers.

    ``dims`` maps each key to its width (a width of 0 is allowed: nothing to normalize). ``mode`` is
    one of :data:`NORM_MODES` for every key, or a mapping key -> mode (missing keys: ``gaussian``).
    Until :meth:`fit` runs the map is the identity and :attr:`is_fitted` is False.
    """

    fitted: Tensor  # a registered buffer (mypy reads nn.Module attributes as Tensor | Module)

    def __init__(
        self, dims: Mapping[str, int], mode: str | Mapping[str, str] = "gaussian", eps: float = 1e-4
    ) -> None:
        super().__init__()
        self.dims = {str(k): int(v) for k, v in dims.items()}
        modes = dict(mode) if isinstance(mode, Mapping) else dict.fromkeys(self.dims, mode)
        unknown = set(modes) - set(self.dims)
        if unknown:
            raise UserError(
                f"normalization modes given for unknown keys {sorted(unknown)}; "
                f"keys: {list(self.dims)}"
            )
        self.modes = {k: str(modes.get(k, "gaussian")) for k in self.dims}
        for key, m in self.modes.items():
            if m not in NORM_MODES:
                raise UserError(
                    f"unknown normalization mode '{m}' for '{key}'; choose one of {NORM_MODES}"
                )
        if not eps > 0:
            raise UserError(f"normalizer eps={eps} must be > 0")
        self.eps = float(eps)
        for key, d in self.dims.items():
            if d < 0:
                raise UserError(f"dimension of '{key}' must be >= 0, got {d}")
            self.register_buffer(f"{key}_loc", torch.zeros(d))
            self.register_buffer(f"{key}_scale", torch.ones(d))
            for stat in STAT_NAMES:  # kept for inspection and for re-fitting in another mode
                self.register_buffer(f"{key}_{stat}", torch.zeros(d))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.is_fitted = False

    # ------------------------------------------------------------------ fitting
    def fit(self, data: Mapping[str, Any]) -> Normalizer:
        """Fit from ``{key: array (N, ..., D)}`` and/or ``{key: {"mean","std","min","max"}}``.

        Every key with a non-zero width must be present; extra keys are ignored.
        """
        missing = [k for k, d in self.dims.items() if d > 0 and k not in data]
        if missing:
            raise UserError(
                f"normalizer fit is missing {missing}; give arrays or stats for {list(self.dims)}"
            )
        for key, d in self.dims.items():
            if d == 0:
                continue
            value = data[key]
            stats = dict(value) if _is_stats(value) else compute_stats(value, dim=d)
            self._set_stats(key, stats)
        self.fitted.fill_(True)
        self.is_fitted = True
        return self

    def _set_stats(self, key: str, stats: Mapping[str, Any]) -> None:
        d = self.dims[key]
        need = ("mean", "std") if self.modes[key] == "gaussian" else ("min", "max")
        missing = [s for s in need if s not in stats]
        if missing:
            raise UserError(f"stats for '{key}' lack {missing} needed by mode '{self.modes[key]}'")
        arr = {}
        for s in STAT_NAMES:
            if s in stats:
                v = np.asarray(
                    stats[s].detach().cpu() if isinstance(stats[s], Tensor) else stats[s],
                    np.float64,
                ).reshape(-1)
                if v.size != d:
                    raise UserError(f"stats '{s}' for '{key}' have {v.size} values, expected {d}")
                if not np.all(np.isfinite(v)):
                    raise UserError(f"stats '{s}' for '{key}' contain NaN or inf")
                arr[s] = v
        if self.modes[key] == "gaussian":
            loc, spread = arr["mean"], arr["std"]
        else:
            loc, spread = (arr["max"] + arr["min"]) / 2.0, (arr["max"] - arr["min"]) / 2.0
        scale = np.where(spread < self.eps, 1.0, spread)
        with torch.no_grad():
            getattr(self, f"{key}_loc").copy_(torch.from_numpy(loc))
            getattr(self, f"{key}_scale").copy_(torch.from_numpy(scale))
            for s in STAT_NAMES:
                getattr(self, f"{key}_{s}").copy_(torch.from_numpy(arr.get(s, np.zeros(d))))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.is_fitted = bool(self.fitted)

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The fitted statistics as numpy arrays (``{key: {mean,std,min,max}}``)."""
        return {
            k: {s: getattr(self, f"{k}_{s}").cpu().numpy().copy() for s in STAT_NAMES}
            for k in self.dims
        }

    # ------------------------------------------------------------------ mapping
    def _params(self, key: str, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...] | None]:
        if key not in self.dims:
            raise KeyError(f"normalizer has no key '{key}'; keys: {list(self.dims)}")
        d = self.dims[key]
        loc, scale = getattr(self, f"{key}_loc"), getattr(self, f"{key}_scale")
        if x.shape[-1] == d:
            return loc, scale, None
        if x.dim() >= 2 and x.shape[-2] * x.shape[-1] == d:  # a (..., K, Dt) token grid
            return loc, scale, tuple(x.shape[-2:])
        raise ValueError(f"'{key}' has trailing shape {tuple(x.shape[-2:])}, expected width {d}")

    def normalize(self, x: Tensor, key: str) -> Tensor:
        """``(x - loc) / scale`` along the last axis (or the last two, for a token grid)."""
        loc, scale, grid = self._params(key, x)
        y = x.flatten(-2) if grid else x
        y = (y.float() - loc) / scale
        return y.unflatten(-1, grid) if grid else y

    def unnormalize(self, x: Tensor, key: str) -> Tensor:
        """Inverse of :meth:`normalize`."""
        loc, scale, grid = self._params(key, x)
        y = x.flatten(-2) if grid else x
        y = y.float() * scale + loc
        return y.unflatten(-1, grid) if grid else y

    def extra_repr(self) -> str:
        return f"dims={self.dims}, modes={self.modes}, eps={self.eps}, fitted={self.is_fitted}"
