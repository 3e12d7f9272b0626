"""Linear probe: how well a frozen encoder's features locate the cube (a cheap proxy for Table 8).

A ridge regression from a frame's feature to the cube's ``(x, y)`` (the ``cube_x, cube_y`` columns
of the store's privileged ``state``; see ``envs/cube_pick.py``), fitted on the frames of some
episodes and scored on the frames of held-out episodes (:func:`robo_s2.data.windows.split_episodes`),
so a probe cannot win by recognising frames it was fitted on. Features are standardised with the
training statistics; the ridge strength is chosen among ``alphas`` by cross-validation over the
training episodes (grouped K-fold; no peeking at the held-out ones). Scores: R² over both
coordinates (0 = predicting the training mean, 1 = perfect) and the RMSE in centimetres.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from robo_s2.errors import UserError

ALPHAS = tuple(10.0**k for k in range(-3, 6))


@dataclass
class ProbeResult:
    r2: float  # held-out R² averaged over x and y
    rmse_cm: float  # held-out RMSE of the position (cm)
    baseline_rmse_cm: float  # held-out RMSE of predicting the training mean (cm)
    alpha: float
    feature_dim: int
    n_train: int
    n_test: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ridge_path(
    x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One SVD of the centred ``x`` serving every alpha: ``(xm, ym, s, vt, u.T @ yc)``."""
    xm, ym = x.mean(0), y.mean(0)
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    return xm, ym, s, vt, u.T @ (y - ym)


def _weights(s: np.ndarray, vt: np.ndarray, uty: np.ndarray, a: float) -> np.ndarray:
    return vt.T @ ((s / (s**2 + a))[:, None] * uty)


def fit_ridge(
    x: np.ndarray,
    y: np.ndarray,
    alphas: tuple[float, ...] = ALPHAS,
    groups: np.ndarray | None = None,
    folds: int = 5,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge ``y ~ x @ w + b`` with the alpha of least cross-validated error -> ``(w, b, alpha)``.

    ``groups`` (e.g. episode ids): the alpha is chosen by grouped K-fold, so that frames of one
    episode never sit on both sides of a fold (consecutive frames are near-duplicates, and a
    leave-one-frame-out choice would reward memorising them); without groups, by leave-one-out."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    errors = np.zeros(len(alphas))
    uniq = np.unique(groups) if groups is not None else np.zeros(0)
    if len(uniq) >= 2:
        fold_of = {g: i % min(folds, len(uniq)) for i, g in enumerate(uniq)}
        fold = np.array([fold_of[g] for g in np.asarray(groups)])
        for k in np.unique(fold):
            tr, te = fold != k, fold == k
            xm, ym, s, vt, uty = _ridge_path(x[tr], y[tr])
            for i, a in enumerate(alphas):
                w = _weights(s, vt, uty, a)
                errors[i] += (((x[te] - xm) @ w + ym - y[te]) ** 2).sum()
    else:
        xm, ym, s, vt, uty = _ridge_path(x, y)
        u = (x - xm) @ vt.T / np.where(s > 1e-12, s, np.inf)
        for i, a in enumerate(alphas):
            shrink = s**2 / (s**2 + a)
            resid = (y - ym) - u @ (shrink[:, None] * uty)
            hat = (u**2 * shrink).sum(1) + 1.0 / len(x)  # leverage (with the intercept)
            errors[i] = ((resid / np.maximum(1.0 - hat, 1e-9)[:, None]) ** 2).sum()
    a = float(alphas[int(np.argmin(errors))])
    xm, ym, s, vt, uty = _ridge_path(x, y)
    w = _weights(s, vt, uty, a)
    return w, ym - xm @ w, a


def standardize(features: np.ndarray, train: np.ndarray, what: str = "the probe") -> np.ndarray:
    """Float64 ``features`` z-scored with the statistics of the ``train`` rows only (so nothing of
    the held-out rows leaks into the fit); NaN or inf is a :class:`UserError`."""
    f = np.asarray(features, np.float64)
    if not np.all(np.isfinite(f)):
        raise UserError(f"the encoder's features contain NaN or inf; {what} cannot be fitted")
    mu, sd = f[train].mean(0), f[train].std(0) + 1e-6
    return (f - mu) / sd


def r2_per_dim(pred: np.ndarray, y: np.ndarray, train_mean: np.ndarray) -> np.ndarray:
    """R² of every target column: ``1 - SSE / SST`` with SST about the *training* mean (predicting
    the training mean scores 0; worse than that is negative)."""
    ss_res = ((pred - y) ** 2).sum(0)
    ss_tot = ((y - train_mean) ** 2).sum(0)
    return 1.0 - ss_res / np.maximum(ss_tot, 1e-12)


def episode_split_rows(
    episode_ends: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame rows of the training and held-out episodes of a seeded episode-level split
    (:func:`robo_s2.data.windows.split_episodes`), and the episode of every frame: frames of one
    episode are never on both sides (neighbouring frames are near-duplicates)."""
    from robo_s2.data.windows import episode_starts, frame_episode, split_episodes

    ends = np.asarray(episode_ends, np.int64)
    starts = episode_starts(ends)
    split = split_episodes(len(ends), test_fraction, seed)
    if len(split.val) == 0 or len(split.train) == 0:
        raise UserError(
            f"{len(ends)} episode(s): at least 2 are needed to fit on some and score on held-out ones"
        )

    def rows(eps: np.ndarray) -> np.ndarray:
        return np.concatenate([np.arange(starts[e], ends[e]) for e in eps]).astype(np.int64)

    return rows(split.train), rows(split.val), frame_episode(ends)


def ridge_probe(
    features: np.ndarray,
    targets: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    alphas: tuple[float, ...] = ALPHAS,
    groups: np.ndarray | None = None,
) -> ProbeResult:
    """Fit on the ``train`` rows, score on the ``test`` rows (targets in metres); ``groups``
    (one id per row, e.g. the episode) make the choice of alpha a grouped cross-validation."""
    z = standardize(features, train)
    g = None if groups is None else np.asarray(groups)[train]
    w, b, alpha = fit_ridge(z[train], targets[train], alphas, g)
    pred = z[test] @ w + b
    err = pred - targets[test]
    base = targets[test] - targets[train].mean(0)
    r2 = float(np.mean(r2_per_dim(pred, targets[test], targets[train].mean(0))))
    return ProbeResult(
        r2=r2,
        rmse_cm=float(np.sqrt((err**2).sum(1).mean()) * 100),
        baseline_rmse_cm=float(np.sqrt((base**2).sum(1).mean()) * 100),
        alpha=alpha,
        feature_dim=int(z.shape[1]),
        n_train=int(len(train)),
        n_test=int(len(test)),
    )


def cube_targets(store: Any) -> np.ndarray:
    """``(frames, 2)`` cube ``(x, y)`` in metres from the store's privileged ``state``."""
    if "state" not in store.keys():
        raise UserError(
            f"{store.path} has no data/state (privileged cube position); probe a store made by "
            "robo-s2 collect"
        )
    names = list(store.attrs.get("state_semantics") or [])
    cols = [names.index("cube_x"), names.index("cube_y")] if "cube_x" in names else [0, 1]
    state = np.asarray(store.array("state")[: store.n_frames], np.float64)
    return state[:, cols]


def probe_encoder(
    encoder: Any,
    store: Any,
    image_key: str = "image",
    test_fraction: float = 0.3,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
    precision: str | None = None,
) -> ProbeResult:
    """Encode every frame of ``store`` with ``encoder`` (in ``precision``, default the encoder's
    own, resolved as a feature cache would) and probe the cube position."""
    import torch

    from robo_s2.device import resolve_device
    from robo_s2.encoders.feature_cache import encode_frames, feature_precision

    if image_key not in store.keys():
        raise UserError(f"{store.path} has no data/{image_key}; its arrays: {store.keys()}")
    dev = resolve_device(device)
    encoder = encoder.to(dev).eval()
    precision = feature_precision(encoder, dev, batch_size, precision)
    frames = store.array(image_key)
    n = store.n_frames
    feats = np.concatenate(
        [
            encode_frames(encoder, frames[lo : lo + batch_size], dev, precision)
            for lo in range(0, n, batch_size)
        ]
    )
    targets = cube_targets(store)
    if store.n_episodes < 2:
        raise UserError(f"{store.path} needs at least 2 episodes to probe on held-out episodes")
    train, test, episode = episode_split_rows(store.episode_ends, test_fraction, seed)
    with torch.no_grad():
        return ridge_probe(feats, targets, train, test, groups=episode)
