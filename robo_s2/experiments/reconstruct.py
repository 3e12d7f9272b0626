"""The S² paper's Table 1 on our frames: how much of a larger encoder's features is a linear
function of a smaller encoder's, single-scale or multi-scale (``robo-s2 analyze reconstruct``).

S² §"can larger models be approximated by smaller models on multiple scales" trains a linear map
from the features of a small model (e.g. ViT-B, or ViT-B-S²: its channel-concatenated scales) to
those of a larger one (ViT-L) and reports the held-out reconstruction loss ``l``, against the loss
``l0`` of reconstructing by a constant vector; ``-log(l / l0)`` is their "information" (a mutual
information under Gaussian assumptions), and its ratio to that of an even larger source (ViT-H
reconstructing ViT-L, the upper bound ``I*``) their "ratio". Here, on the frames of a demo store:

* every encoder (each ``source`` and the ``target``) sees the same frames at the same
  ``image_size`` (for S² the base scale: 112² gives scales 112², 224²) with the same ``pooling``,
  so the features compared are like for like (``mean``: the patch-token mean, ``C`` wide per
  model, ``C x scales`` for S²; ``grid:k``: the ``k x k`` pooled token grid);
* ``per_token: true`` (with ``grid:k``) fits one map shared by all ``k*k`` token positions, from a
  source token to the target token at the same place, as the paper does (loss averaged over
  tokens); otherwise the map goes from the whole pooled vector to the whole pooled vector;
* frames are split by **episode** (:func:`robo_s2.pretraining.probe.episode_split_rows`): neighbouring frames
  of an episode are near-duplicates, a split by frame would score memorisation;
* the map is ridge regression (:func:`robo_s2.pretraining.probe.fit_ridge`) on the source features z-scored
  with training statistics; its strength is chosen among ``alphas`` by grouped K-fold over the
  training episodes only; the held-out episodes are touched once, to score;
* scores on the held-out frames: ``r2`` = ``1 - SSE/SST`` summed over all target dims (the
  explained variance of the target features; ``1 - l/l0``), ``r2_mean_dim`` = the mean of the
  per-dim R²s (every target dim counted equally), ``info`` = ``-log(1 - r2)`` = ``-log(l/l0)``
  and, with a ``reference`` source, ``info_ratio`` = ``info / info(reference)``;
* features come from the store's feature cache (:mod:`robo_s2.encoders.feature_cache`; ``cache: false``
  encodes in memory and writes nothing into the store), so a rerun only fits.

A source may concatenate several encoders (``concat: [...]``), e.g. two ViT-Ts of different random
seeds: a single-scale control as wide as ViT-T-S².
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from robo_s2.core.config import to_plain
from robo_s2.errors import UserError
from robo_s2.pretraining.probe import ALPHAS, episode_split_rows, fit_ridge, r2_per_dim, standardize

SPEC_KEYS = ("encoder", "concat", "label", "overrides", "store", "image_key")


# ------------------------------------------------------------------------------------ config
@dataclass
class EncoderPart:
    """One encoder: a config name (or mapping) plus overrides, as :func:`create_encoder` takes."""

    encoder: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureSpec:
    """A source or the target: one encoder, or several whose features are concatenated."""

    label: str
    parts: list[EncoderPart]
    store: str | None = None  # default: the analysis' store (same episodes, same frames needed)
    image_key: str | None = None  # default: the analysis' image_key


def _part(entry: Any, where: str) -> EncoderPart:
    entry = to_plain(entry)
    if isinstance(entry, str):
        return EncoderPart(entry)
    if isinstance(entry, Mapping) and "encoder" in entry:
        unknown = sorted(set(entry) - {"encoder", "overrides"})
        if unknown:
            raise UserError(
                f"{where} has unknown keys {unknown}; a part of a concat takes encoder, overrides"
            )
        overrides = entry.get("overrides") or {}
        if not isinstance(overrides, Mapping):
            raise UserError(f"{where}.overrides must be a mapping, got {overrides!r}")
        enc = entry["encoder"]
        if not isinstance(enc, str | Mapping):
            raise UserError(f"{where}.encoder must be an encoder config name or mapping")
        return EncoderPart(enc if isinstance(enc, str) else dict(enc), dict(overrides))
    if isinstance(entry, Mapping) and "name" in entry:  # an inline encoder config
        return EncoderPart(dict(entry))
    raise UserError(
        f"{where} must be an encoder config name (e.g. vit_t) or a mapping with 'encoder' "
        f"(and optionally 'overrides'), got {entry!r}"
    )


def _default_label(parts: list[EncoderPart]) -> str:
    def one(p: EncoderPart) -> str:
        name = p.encoder if isinstance(p.encoder, str) else str(p.encoder.get("name", "encoder"))
        if not p.overrides:
            return name
        opts = ",".join(
            f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in p.overrides.items()
        )
        return f"{name}({opts})"

    return "+".join(one(p) for p in parts)


def parse_spec(entry: Any, where: str) -> FeatureSpec:
    """A ``source`` / ``target`` entry: ``vit_t``; ``{encoder: vit_t_s2, overrides: {...},
    label: ...}``; ``{concat: [vit_t, {encoder: vit_t, overrides: {seed: 1}}], label: ...}``;
    each mapping may also name its own ``store`` and ``image_key``."""
    entry = to_plain(entry)
    if isinstance(entry, str):
        if not entry.strip():
            raise UserError(f"{where} is empty; name an encoder config, e.g. vit_t")
        return FeatureSpec(entry, [EncoderPart(entry)])
    if not isinstance(entry, Mapping):
        raise UserError(f"{where} must be an encoder config name or a mapping, got {entry!r}")
    if "concat" in entry:
        unknown = sorted(set(entry) - {"concat", "label", "store", "image_key"})
        if unknown:
            raise UserError(
                f"{where} has unknown keys {unknown}; with concat: label, store, image_key"
            )
        items = entry["concat"]
        if not isinstance(items, list | tuple) or not items:
            raise UserError(f"{where}.concat must be a non-empty list of encoders")
        parts = [_part(p, f"{where}.concat[{i}]") for i, p in enumerate(items)]
    elif "encoder" in entry:
        unknown = sorted(set(entry) - set(SPEC_KEYS) - {"concat"})
        if unknown:
            raise UserError(f"{where} has unknown keys {unknown}; known: {', '.join(SPEC_KEYS)}")
        parts = [_part({k: entry[k] for k in ("encoder", "overrides") if k in entry}, where)]
    else:
        raise UserError(f"{where} needs 'encoder' (or 'concat'), got keys {sorted(entry)}")
    label = entry.get("label") or _default_label(parts)
    store, key = entry.get("store"), entry.get("image_key")
    return FeatureSpec(str(label), parts, None if store is None else str(store), key and str(key))


@dataclass
class ReconstructConfig:
    """The settings of one analysis (``configs/analysis/reconstruct.yaml``), validated."""

    store: str
    source: list[FeatureSpec]
    target: FeatureSpec
    reference: str | None = None  # label of the source whose info is I* (the ratio's denominator)
    image_key: str = "image"
    image_size: int | None = 112  # every encoder's input (S²: its base scale); None: their own
    pooling: str | None = "mean"  # every encoder's pooling; None: their own
    per_token: bool = False
    test_fraction: float = 0.3
    seed: int = 0
    alphas: tuple[float, ...] = (*ALPHAS, 1e6)  # the probe's ridge grid and one decade more
    folds: int = 5
    cache: bool = True
    batch_size: int = 64
    device: str = "auto"
    precision: str | None = "fp32"
    threads: int | None = None

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ReconstructConfig:
        from robo_s2.device import check_precision
        from robo_s2.encoders.pooling import Pooling

        d = dict(to_plain(cfg))
        d.pop("analysis", None)
        d.pop("hydra", None)
        known = list(cls.__dataclass_fields__)
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UserError(f"unknown reconstruct settings {unknown}; known: {', '.join(known)}")
        absent = {f.name: f.default for f in fields(cls) if f.default is not MISSING}
        d = {**absent, **d}  # an absent key takes the default; an explicit null stays null
        if not d.get("store"):
            raise UserError("store= must name a demo store (e.g. store=demos/cube_pick.zarr)")
        sources = d.get("source")
        if isinstance(sources, str | Mapping):
            sources = [sources]
        if not isinstance(sources, list | tuple) or not sources:
            raise UserError("source= must list one or more encoders, e.g. source=[vit_t,vit_t_s2]")
        if d.get("target") in (None, "", []):
            raise UserError("target= must name the (larger) encoder to reconstruct, e.g. vit_s")
        out = cls(
            store=str(d["store"]),
            source=[parse_spec(s, f"source[{i}]") for i, s in enumerate(sources)],
            target=parse_spec(d["target"], "target"),
        )
        labels = [s.label for s in out.source]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise UserError(f"two sources are labelled {dup[0]}; give each a distinct label")
        out.reference = None if d.get("reference") in (None, "") else str(d["reference"])
        if out.reference is not None and out.reference not in labels:
            raise UserError(f"reference={out.reference} is not a source label; sources: {labels}")
        out.image_key = str(d["image_key"])
        size = d.get("image_size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise UserError(f"image_size={size!r} must be a positive integer (or null)")
        out.image_size = size
        pooling = d.get("pooling")
        out.pooling = None if pooling is None else str(Pooling.parse(pooling))
        out.per_token = bool(d["per_token"])
        if out.per_token and (out.pooling is None or not out.pooling.startswith("grid:")):
            raise UserError(
                "per_token=true fits one map shared by the token positions of a grid: set "
                "pooling=grid:k (e.g. grid:7 for all 7x7 patch tokens of a 112² ViT/16)"
            )
        tf = float(d["test_fraction"])
        if not 0.0 < tf < 1.0:
            raise UserError(f"test_fraction={tf} must be in (0, 1), e.g. 0.3")
        out.test_fraction = tf
        out.seed = int(d["seed"])
        alphas = d["alphas"]
        try:
            alphas = tuple(float(a) for a in alphas)
        except (TypeError, ValueError):
            raise UserError(f"alphas={alphas!r} must be a list of numbers > 0") from None
        if not alphas or min(alphas) <= 0:
            raise UserError(f"alphas={list(alphas)} must be a non-empty list of numbers > 0")
        out.alphas = tuple(sorted(alphas))
        out.folds = int(d["folds"])
        if out.folds < 2:
            raise UserError(f"folds={out.folds} must be >= 2 (grouped K-fold choice of alpha)")
        out.cache = bool(d["cache"])
        out.batch_size = int(d["batch_size"])
        if out.batch_size < 1:
            raise UserError(f"batch_size={out.batch_size} must be >= 1")
        out.device = str(d["device"])
        precision = d.get("precision")
        out.precision = None if precision in (None, "") else check_precision(str(precision))
        threads = d.get("threads")
        out.threads = None if threads in (None, 0) else int(threads)
        return out


# ------------------------------------------------------------------------------------- fitting
@dataclass
class Fit:
    """A ridge reconstruction of ``y`` from ``x``, scored on held-out rows."""

    r2: float  # held-out 1 - SSE/SST, sums over every target dim (explained variance)
    r2_mean_dim: float  # held-out mean over target dims of each dim's R²
    r2_train: float  # the same as r2 on the training rows (in-sample)
    mse: float  # held-out loss l: squared error per target dim and row
    mse_baseline: float  # l0: the same for predicting the training mean
    info: float  # -log(l / l0) = -log(1 - r2), the paper's "information"
    alpha: float
    alpha_at_edge: bool  # the chosen alpha is the grid's smallest or largest: widen alphas
    # per held-out group (episode): squared error and squared deviation from the training mean,
    # summed over its rows and the target dims (what the bootstrap over episodes resamples)
    group_sse: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    group_sst: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("group_")}


def bootstrap_r2(
    fits: Sequence[Fit], n_boot: int = 2000, seed: int = 0
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """95% intervals of each fit's held-out R², and of its difference to ``fits[0]``'s, from one
    bootstrap over the held-out episodes (the same resamples for every fit: paired). It measures
    how much the score depends on which episodes were held out, not the fit's own variance."""
    n = len(fits[0].group_sse)
    if n < 2 or any(len(f.group_sse) != n for f in fits):
        nan = (float("nan"), float("nan"))
        return [nan] * len(fits), [nan] * len(fits)
    idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    r2 = np.stack([1.0 - f.group_sse[idx].sum(1) / f.group_sst[idx].sum(1) for f in fits])

    def ci(v: np.ndarray) -> tuple[float, float]:
        lo, hi = np.percentile(v, [2.5, 97.5])
        return float(lo), float(hi)

    return [ci(r) for r in r2], [ci(r - r2[0]) for r in r2]


def token_rows(rows: np.ndarray, tokens: int) -> np.ndarray:
    """Row indices of a ``(N, T, C) -> (N*T, C)`` reshape for the frame ``rows``."""
    rows = np.asarray(rows, np.int64)
    return (rows[:, None] * tokens + np.arange(tokens)[None, :]).ravel()


def fit_reconstruction(
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    groups: np.ndarray,
    alphas: Sequence[float] = ALPHAS,
    folds: int = 5,
) -> Fit:
    """Ridge ``y ~ standardise(x)`` fitted on ``train`` rows (alpha by grouped K-fold over
    ``groups[train]``), scored on ``test`` rows."""
    z = standardize(x, train, what="the reconstruction")
    y = np.asarray(y, np.float64)
    if not np.all(np.isfinite(y)):
        raise UserError("the target encoder's features contain NaN or inf; nothing to reconstruct")
    alphas = tuple(alphas)
    w, b, alpha = fit_ridge(z[train], y[train], alphas, np.asarray(groups)[train], folds)
    mean = y[train].mean(0)
    scores = {}
    for name, rows in (("test", test), ("train", train)):
        pred = z[rows] @ w + b
        sse = float(((pred - y[rows]) ** 2).sum())
        sst = float(((y[rows] - mean) ** 2).sum())
        scores[name] = (pred, sse, sst)
    pred, sse, sst = scores["test"]
    per_dim = r2_per_dim(pred, y[test], mean)
    var = ((y[test] - mean) ** 2).sum(0)
    live = var > 1e-12 * max(float(var.max()), 1e-300)  # constant dims have no R² to speak of
    r2 = 1.0 - sse / max(sst, 1e-300)
    n_cells = max(len(test) * y.shape[1], 1)
    mse, mse0 = sse / n_cells, sst / n_cells
    _, sse_tr, sst_tr = scores["train"]
    g_test = np.asarray(groups)[test]
    uniq, inv = np.unique(g_test, return_inverse=True)
    row_sse = ((pred - y[test]) ** 2).sum(1)
    row_sst = ((y[test] - mean) ** 2).sum(1)
    return Fit(
        group_sse=np.bincount(inv, row_sse, minlength=len(uniq)),
        group_sst=np.bincount(inv, row_sst, minlength=len(uniq)),
        r2=float(r2),
        r2_mean_dim=float(per_dim[live].mean()) if live.any() else float("nan"),
        r2_train=float(1.0 - sse_tr / max(sst_tr, 1e-300)),
        mse=float(mse),
        mse_baseline=float(mse0),
        info=float(-math.log(max(mse, 1e-12 * mse0) / mse0)) if mse0 > 0 else float("nan"),
        alpha=float(alpha),
        alpha_at_edge=len(alphas) > 1 and alpha in (min(alphas), max(alphas)),
    )


# ------------------------------------------------------------------------------------ features
@dataclass
class Features:
    label: str
    values: np.ndarray  # (N, D) float32
    tokens: int  # D = tokens * width
    encoders: list[dict[str, Any]]  # per part: label, weights, image size, pooling, dims, time
    n_encoded_now: int = 0
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])


def part_config(part: EncoderPart, image_size: int | None, pooling: str | None) -> dict[str, Any]:
    """The encoder config of ``part`` with the analysis' ``image_size`` / ``pooling`` applied
    (below the part's own overrides, which win): the input of :func:`create_encoder`."""
    from robo_s2.encoders.registry import resolve_encoder_config

    cfg = resolve_encoder_config(part.encoder)
    label = cfg.pop("_label", None)
    if pooling is not None and "pooling" in cfg:
        cfg["pooling"] = pooling
    if image_size is not None:
        if cfg["name"] == "s2":
            backbone = resolve_encoder_config(cfg["backbone"])
            backbone.pop("_label", None)
            backbone["image_size"] = image_size
            cfg["backbone"] = backbone
        elif "image_size" in cfg or cfg["name"] == "timm":
            cfg["image_size"] = image_size
    cfg = resolve_encoder_config(cfg, **part.overrides)
    cfg["_label"] = label or (part.encoder if isinstance(part.encoder, str) else cfg["name"])
    return cfg


def _weights_of(config: Mapping[str, Any]) -> str:
    """``random init`` or the weights file an encoder config loads."""
    if config.get("name") == "s2":
        return _weights_of(config.get("backbone") or {})
    w = config.get("weights")
    if config.get("name") == "mvp":
        return "random init" if w in (None, "none") else str(w)
    if w:
        return str(w)
    return "timm pretrained" if config.get("pretrained") else "random init"


def _open_store(path: str, writable: bool) -> Any:
    from robo_s2.data.store import DemoStore

    p = Path(path)
    if not p.exists():
        raise UserError(
            f"no demo store at {path}; collect one (robo-s2 collect out={path}) or pass store="
        )
    try:
        return DemoStore.open(p, mode="a" if writable else "r")
    except PermissionError:
        raise UserError(
            f"cannot write the feature cache into {path} (read-only); set cache=false to encode "
            "in memory, or copy the store"
        ) from None


def encode_spec(
    spec: FeatureSpec,
    store: Any,
    image_key: str,
    rc: ReconstructConfig,
    bar: Callable[[str, int], Any] | None = None,
) -> Features:
    """The features of ``spec`` over every frame of ``store``, from (and into) its feature cache
    when ``rc.cache``, else encoded in memory."""
    from robo_s2.device import resolve_device
    from robo_s2.encoders.feature_cache import _check_image_key, check_store_frames

    blocks, tokens, parts = [], None, []
    n_now, seconds = 0, 0.0
    dev = resolve_device(rc.device)
    for i, part in enumerate(spec.parts):
        where = spec.label if len(spec.parts) == 1 else f"{spec.label} (part {i})"
        encoder = _part_encoder(part, where, rc)
        _check_image_key(store, image_key)
        check_store_frames(store, encoder, image_key)
        progress = bar(f"{spec.label}", store.n_frames) if bar is not None else None
        start = time.perf_counter()
        if rc.cache:
            feats, precision, encoded = _encode_cached(encoder, store, image_key, rc, dev, progress)
        else:
            feats, precision, encoded = _encode_in_memory(
                encoder, store, image_key, rc, dev, progress
            )
        took = time.perf_counter() - start
        if progress is not None:
            progress.close()
        t = int(encoder.feature_shape[0])
        if rc.per_token and tokens is not None and t != tokens:
            raise UserError(
                f"{spec.label}: its parts pool to {tokens} and {t} tokens; per_token needs one grid"
            )
        tokens = t
        blocks.append(np.asarray(feats, np.float32))
        parts.append(_part_record(encoder, part, precision, encoded, took))
        n_now, seconds = n_now + encoded, seconds + took
        del encoder
    values = _join_blocks(blocks, tokens, rc.per_token)
    return Features(spec.label, values, int(tokens or 1), parts, n_now, seconds)


def _part_encoder(part: EncoderPart, where: str, rc: ReconstructConfig) -> Any:
    """The encoder of ``part`` under the analysis' settings; it must read camera frames."""
    from robo_s2.encoders import create_encoder

    try:
        cfg = part_config(part, rc.image_size, rc.pooling)
        if rc.precision is not None:
            cfg["precision"] = rc.precision
        encoder = create_encoder(cfg)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    if getattr(encoder, "input_key", None) is not None:
        raise UserError(f"{where}: encoder {encoder.label} does not read camera frames")
    return encoder


def _encode_cached(
    encoder: Any, store: Any, image_key: str, rc: ReconstructConfig, dev: Any, progress: Any
) -> tuple[np.ndarray, str, int]:
    """Features, precision and frames encoded now, through the store's feature cache."""
    from robo_s2.encoders.feature_cache import encode_store, load_features

    def on_batch(status: Any) -> None:
        if progress is not None:
            progress.n = status.n_done
            progress.refresh()

    status = encode_store(
        store, encoder, image_key=image_key, batch_size=rc.batch_size,
        device=str(dev), on_batch=on_batch, precision=rc.precision,
    )  # fmt: skip
    feats = load_features(store, encoder, image_key, status.precision)
    return feats, status.precision, status.n_encoded_now


def _encode_in_memory(
    encoder: Any, store: Any, image_key: str, rc: ReconstructConfig, dev: Any, progress: Any
) -> tuple[np.ndarray, str, int]:
    """Features, precision and frames encoded now, without writing into the store."""
    from robo_s2.encoders.feature_cache import encode_frames, feature_precision

    precision = feature_precision(encoder, dev, rc.batch_size, rc.precision)
    encoder = encoder.to(dev).eval()
    frames, chunks = store.array(image_key), []
    for lo in range(0, store.n_frames, rc.batch_size):
        hi = min(lo + rc.batch_size, store.n_frames)
        chunks.append(encode_frames(encoder, frames[lo:hi], dev, precision))
        if progress is not None:
            progress.update(hi - lo)
    return np.concatenate(chunks), precision, store.n_frames


def _part_record(
    encoder: Any, part: EncoderPart, precision: str, encoded: int, took: float
) -> dict[str, Any]:
    """What ``Features.encoders`` reports about one encoded part."""
    return {
        "encoder": encoder.label,
        "overrides": dict(part.overrides),
        "weights": _weights_of(encoder.config),
        "image_size": int(encoder.image_size),
        "img_sizes": list(getattr(encoder, "img_sizes", [encoder.image_size])),
        "pooling": str(getattr(encoder, "pooling", "")),
        "feature_dim": int(encoder.feature_dim),
        "precision": precision,
        "fingerprint": encoder.fingerprint()[:16],
        "frames_encoded_now": int(encoded),
        "seconds": round(took, 2),
    }


def _join_blocks(blocks: list[np.ndarray], tokens: int | None, per_token: bool) -> np.ndarray:
    """The parts' features side by side (per token: each token's channels concatenate)."""
    n = len(blocks[0])
    if per_token and len(blocks) > 1:
        assert tokens is not None  # per_token needs a grid pooling (checked in the config)
        return np.concatenate([b.reshape(n, tokens, -1) for b in blocks], axis=2).reshape(n, -1)
    return np.concatenate(blocks, axis=1) if len(blocks) > 1 else blocks[0]


# -------------------------------------------------------------------------------------- result
@dataclass
class SourceResult:
    label: str
    feature_dim: int
    tokens: int
    encoders: list[dict[str, Any]]
    fit: Fit
    info_ratio: float | None = None
    r2_ci95: tuple[float, float] | None = None  # bootstrap over held-out episodes
    r2_diff: float | None = None  # r2 minus the first source's
    r2_diff_ci95: tuple[float, float] | None = None  # its interval (the same resamples: paired)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "fit"}
        d.update(self.fit.as_dict())
        return d


@dataclass
class ReconstructResult:
    out_dir: Path
    target: dict[str, Any]
    sources: list[SourceResult]
    data: dict[str, Any]
    settings: dict[str, Any]
    provenance: dict[str, Any]
    json_path: Path
    md_path: Path

    def as_dict(self) -> dict[str, Any]:
        return {
            "analysis": "reconstruct",
            "target": self.target,
            "sources": [s.as_dict() for s in self.sources],
            "data": self.data,
            "settings": self.settings,
            "provenance": self.provenance,
        }

    def summary(self) -> str:
        scores = ", ".join(f"{s.label} R² {s.fit.r2:.3f}" for s in self.sources)
        return (
            f"reconstruct: {self.target['label']} ({self.target['feature_dim']} dims) from "
            f"{scores} on {self.data['test_frames']} held-out frames of "
            f"{self.data['test_episodes']} episodes; {self.json_path.name} and "
            f"{self.md_path.name} in {self.out_dir}"
        )


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _opts(part: Mapping[str, Any]) -> str:
    o = part.get("overrides") or {}
    return f" ({', '.join(f'{k}={v}' for k, v in o.items())})" if o else ""


def _ci(v: tuple[float, float] | None, sign: bool = False) -> str:
    if v is None or not all(math.isfinite(x) for x in v):
        return ""
    return f" [{v[0]:+.3f}, {v[1]:+.3f}]" if sign else f" [{v[0]:.3f}, {v[1]:.3f}]"


def _sizes(encoder: Mapping[str, Any]) -> str:
    return "+".join(f"{x}²" for x in encoder["img_sizes"])


def _table_head(first: str, ratio: str | None) -> list[str]:
    """The header row and separator of the table (``ratio``: the reference source, if any)."""
    head = (
        f"| source | weights | dims | held-out R² [95% CI] | ΔR² vs {first} [95% CI] | "
        "mean per-dim R² | train R² | info −log(l/l0) |"
        + (f" I/I* ({ratio}) |" if ratio else "")
        + " ridge λ |"
    )
    return [head, "|---" * (head.count("|") - 1) + "|"]


def _table_row(i: int, r: SourceResult, ratio: str | None) -> str:
    f = r.fit
    weights = ", ".join(sorted({e["weights"] for e in r.encoders}))
    lam = f"{f.alpha:g}" + (" (grid edge)" if f.alpha_at_edge else "")
    diff = "–" if i == 0 or r.r2_diff is None else f"{r.r2_diff:+.3f}{_ci(r.r2_diff_ci95, True)}"
    info_ratio = None if r.info_ratio is None else r.info_ratio * 100
    return (
        f"| {r.label} | {weights} | {r.feature_dim} | {_fmt(f.r2)}{_ci(r.r2_ci95)} | {diff} | "
        f"{_fmt(f.r2_mean_dim)} | {_fmt(f.r2_train)} | {_fmt(f.info)} |"
        + (f" {_fmt(info_ratio, 1)}% |" if ratio else "")
        + f" {lam} |"
    )


def _source_line(r: SourceResult) -> str:
    return f"- {r.label}: " + "; ".join(
        f"{e['encoder']}{_opts(e)} at {_sizes(e)}, pooling {e['pooling']}, "
        f"{e['feature_dim']} dims, "
        f"{e['weights']}"
        for e in r.encoders
    )


def _method_note(s: Mapping[str, Any], ratio: str | None) -> str:
    """The paragraph under the table: what the scores are and how the map was fitted."""
    return (
        "R² = 1 − SSE/SST summed over all target dims on the held-out frames (the explained "
        "variance of the target features, 1 − l/l0 with l0 the loss of predicting the training "
        "mean); mean per-dim R² counts every target dim equally; info = −log(l/l0) as in the "
        "paper" + (f", I/I* its ratio to that of {ratio}" if ratio else "") + ". Intervals: "
        "2000 bootstrap resamples of the held-out episodes (paired across sources for ΔR²): how "
        "much the score depends on which episodes were held out, not the fit's variance. Ridge on "
        f"z-scored source features, λ from {list(s['alphas'])} by {s['folds']}-fold grouped "
        "(by episode) cross-validation on the training episodes"
        + (
            "; one map shared by every token position (per token), as in the paper."
            if s["per_token"]
            else "; one map from the whole pooled vector to the whole pooled vector."
        )
    )


def format_table(result: ReconstructResult) -> str:
    """``reconstruct.md``: the table, what was compared and how."""
    t, d, s = result.target, result.data, result.settings
    ratio = s.get("reference")
    te = t["encoders"][0]
    lines = [
        f"# Reconstructing {t['label']} features from smaller encoders (S² Table 1)",
        "",
        f"Target: **{t['label']}** ({te['encoder']} at {_sizes(te)}, pooling {te['pooling']}, "
        f"{t['feature_dim']} dims, {te['weights']}). Store `{d['store']}` (`{d['image_key']}`): "
        f"{d['n_frames']} frames of {d['n_episodes']} episodes; split by episode "
        f"(seed {s['seed']}): fitted on {d['train_frames']} frames of {d['train_episodes']} "
        f"episodes, scored on {d['test_frames']} frames of {d['test_episodes']} held-out episodes.",
        "",
        *_table_head(result.sources[0].label, ratio),
        *(_table_row(i, r, ratio) for i, r in enumerate(result.sources)),
        "",
        "Sources:",
        *(_source_line(r) for r in result.sources),
        "",
        _method_note(s, ratio),
    ]
    if any(e["weights"] == "random init" for r in result.sources for e in r.encoders) or (
        te["weights"] == "random init"
    ):
        lines += [
            "",
            "Random-init encoders: these numbers say how much of a randomly initialised larger "
            "network's features is a linear function of the smaller random network's (multi-scale) "
            "features on these frames — a property of the architectures and the inputs, not of "
            "anything learnt; the paper's Table 1 compares pretrained models.",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class _Frames:
    """The frame layout of the analysis' store, which every source and the target must share."""

    ends: np.ndarray
    n_frames: int
    n_episodes: int
    frame_shape: list[int] | None


class _Stores:
    """Open demo stores by resolved path: one handle (one lock) per store."""

    def __init__(self, writable: bool) -> None:
        self.writable = writable
        self.handles: dict[str, Any] = {}

    def __call__(self, path: str) -> Any:
        key = str(Path(path).expanduser().resolve())
        if key not in self.handles:
            self.handles[key] = _open_store(path, self.writable)
        return self.handles[key]

    def close(self) -> None:
        for s in self.handles.values():
            s.close()


def _make_bar(desc: str, total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True, delay=1.0)


def run_reconstruct(
    rc: ReconstructConfig, out_dir: str | Path, progress: bool = True
) -> ReconstructResult:
    """Encode (or read from the cache) every source and the target, fit, score, write
    ``reconstruct.json`` and ``reconstruct.md`` in ``out_dir``."""
    import torch

    from robo_s2.experiments.runner import provenance

    if rc.threads:
        torch.set_num_threads(int(rc.threads))
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    specs = [("target", rc.target), *(("source", s) for s in rc.source)]
    stores = _Stores(rc.cache)
    try:
        frames = _main_frames(rc, stores(rc.store))
        _check_specs(rc, specs, stores, frames)  # before anything is encoded
        encoded = _encode_specs(rc, specs, stores, frames.n_frames, progress)
    finally:
        stores.close()
    target, sources = encoded[0], encoded[1:]
    train, test, episode = episode_split_rows(frames.ends, rc.test_fraction, rc.seed)
    results = [_fit_source(rc, feats, target, train, test, episode) for feats in sources]
    _add_intervals(results, rc)
    prov = provenance(time.perf_counter() - t0)
    prov["encode_seconds"] = round(target.seconds + sum(f.seconds for f in sources), 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = ReconstructResult(
        out_dir=out_dir,
        target={"label": target.label, "feature_dim": target.dim, "tokens": target.tokens,
                "encoders": target.encoders},
        sources=results,
        data=_data_summary(rc, frames, train, test, episode),
        settings=_settings_summary(rc),
        provenance=prov,
        json_path=out_dir / "reconstruct.json",
        md_path=out_dir / "reconstruct.md",
    )  # fmt: skip
    result.json_path.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    result.md_path.write_text(format_table(result))
    return result


def _main_frames(rc: ReconstructConfig, main: Any) -> _Frames:
    if main.n_episodes < 2:
        raise UserError(
            f"{rc.store} has {main.n_episodes} episode(s); at least 2 are needed to fit on "
            "some and score on held-out ones (collect more)"
        )
    ends = np.asarray(main.episode_ends, np.int64)
    keys = main.keys()
    frame_shape = list(main.array(rc.image_key).shape[1:]) if rc.image_key in keys else None
    return _Frames(ends, int(main.n_frames), int(main.n_episodes), frame_shape)


def _check_specs(
    rc: ReconstructConfig,
    specs: Sequence[tuple[str, FeatureSpec]],
    stores: _Stores,
    frames: _Frames,
) -> None:
    """Everything that can be checked without encoding: each part's config, and that every
    spec's store has the analysis store's frames."""
    for role, spec in specs:
        for i, part in enumerate(spec.parts):
            where = f"{role} {spec.label}" + (f" (part {i})" if len(spec.parts) > 1 else "")
            try:
                part_config(part, rc.image_size, rc.pooling)
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
        path = spec.store or rc.store
        store = stores(path)
        if store.n_frames != frames.n_frames or not np.array_equal(
            np.asarray(store.episode_ends, np.int64), frames.ends
        ):
            raise UserError(
                f"{role} {spec.label} reads {path} ({store.n_frames} frames, "
                f"{store.n_episodes} episodes) but {rc.store} has {frames.n_frames} frames, "
                f"{frames.n_episodes} episodes: source and target must see the same frames "
                "(collect both with the same seeds and episode count)"
            )


def _encode_specs(
    rc: ReconstructConfig,
    specs: Sequence[tuple[str, FeatureSpec]],
    stores: _Stores,
    n_frames: int,
    progress: bool,
) -> list[Features]:
    encoded = []
    for role, spec in specs:
        store = stores(spec.store or rc.store)
        feats = encode_spec(
            spec, store, spec.image_key or rc.image_key, rc, _make_bar if progress else None
        )
        if feats.values.shape[0] != n_frames:
            raise UserError(
                f"{role} {spec.label} has features for {feats.values.shape[0]} frames, "
                f"{rc.store} has {n_frames}"
            )
        encoded.append(feats)
    return encoded


def _fit_source(
    rc: ReconstructConfig,
    feats: Features,
    target: Features,
    train: np.ndarray,
    test: np.ndarray,
    episode: np.ndarray,
) -> SourceResult:
    """The reconstruction of ``target`` from one source (token by token with ``per_token``)."""
    if rc.per_token:
        if feats.tokens != target.tokens:
            raise UserError(
                f"per_token: source {feats.label} pools to {feats.tokens} tokens, the target "
                f"to {target.tokens}; give both the same pooling"
            )
        tk = target.tokens
        x = feats.values.reshape(len(feats.values) * tk, -1)
        y = target.values.reshape(len(target.values) * tk, -1)
        rows_tr, rows_te = token_rows(train, tk), token_rows(test, tk)
        groups = np.repeat(episode, tk)
    else:
        x, y, rows_tr, rows_te, groups = feats.values, target.values, train, test, episode
    fit = fit_reconstruction(x, y, rows_tr, rows_te, groups, rc.alphas, rc.folds)
    return SourceResult(feats.label, feats.dim, feats.tokens, feats.encoders, fit)


def _add_intervals(results: list[SourceResult], rc: ReconstructConfig) -> None:
    """Bootstrap intervals, differences to the first source and, with a reference, info ratios."""
    cis, diffs = bootstrap_r2([r.fit for r in results], seed=rc.seed)
    for r, ci, diff in zip(results, cis, diffs, strict=True):
        r.r2_ci95, r.r2_diff, r.r2_diff_ci95 = ci, r.fit.r2 - results[0].fit.r2, diff
    if rc.reference is not None:
        ref = next(r for r in results if r.label == rc.reference)
        for r in results:
            r.info_ratio = r.fit.info / ref.fit.info if ref.fit.info > 0 else None


def _data_summary(
    rc: ReconstructConfig,
    frames: _Frames,
    train: np.ndarray,
    test: np.ndarray,
    episode: np.ndarray,
) -> dict[str, Any]:
    return {
        "store": rc.store,
        "image_key": rc.image_key,
        "n_frames": frames.n_frames,
        "n_episodes": frames.n_episodes,
        "train_frames": int(len(train)),
        "test_frames": int(len(test)),
        "train_episodes": int(len(np.unique(episode[train]))),
        "test_episodes": int(len(np.unique(episode[test]))),
        "test_episode_ids": [int(e) for e in np.unique(episode[test])],
        "frame_shape": frames.frame_shape,
    }


def _settings_summary(rc: ReconstructConfig) -> dict[str, Any]:
    return {
        "image_size": rc.image_size,
        "pooling": rc.pooling,
        "per_token": rc.per_token,
        "test_fraction": rc.test_fraction,
        "seed": rc.seed,
        "alphas": list(rc.alphas),
        "folds": rc.folds,
        "cache": rc.cache,
        "precision": rc.precision,
        "reference": rc.reference,
    }
