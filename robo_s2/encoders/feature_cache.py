"""Frozen-encoder features cached inside a demo store, keyed by the encoder's fingerprint.

Layout: ``features/<key>/feature`` float32 ``(N, D)`` beside ``data/``, where ``key`` names the
encoder, the image key, the precision the encoder ran in (``fp32`` or ``bf16``, resolved once per
run by :func:`feature_precision`) and a fingerprint of the encoder's config and weights, so a changed
encoder never reads stale features and fp32 features are never taken for bf16 ones (or back).
Features are stored as float32 whatever the compute precision, so numpy readers work. The group's
``n_done`` attribute counts the frames already encoded (rows past it are ignored): encoding resumes
after any interruption and extends when the store grows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
import zarr

from robo_s2.data.store import DemoStore, check_chunk_bytes
from robo_s2.device import autocast, resolve_device, resolve_precision
from robo_s2.encoders.preprocess import check_frame_size, frames_to_input
from robo_s2.errors import UserError

FEATURES_GROUP = "features"
ROWS_PER_CHUNK = 1024


@dataclass
class CacheStatus:
    key: str
    n_done: int
    n_frames: int
    feature_dim: int
    precision: str = "fp32"
    n_encoded_now: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.n_done >= self.n_frames


def encoder_label(encoder) -> str:
    """The encoder's config name (e.g. ``vit_t_s2``), else its registry name."""
    return str(getattr(encoder, "label", None) or encoder.name)


def cache_key(encoder, image_key: str = "image", precision: str = "fp32") -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder_label(encoder))
    source = input_key(encoder, image_key)
    return f"{name}-{source}-{precision}-{encoder.fingerprint()[:16]}"


ENCODE_BATCH = 64  # frames per encoder pass when caching (configs/data/default.yaml's batch_size)


def feature_precision(
    encoder, device: torch.device | str, batch_size: int, precision: str | None = None
) -> str:
    """The precision (``fp32`` | ``bf16``) a run encoding ``batch_size`` frames per pass on
    ``device`` computes features in: ``precision`` (default: the encoder's own setting) resolved
    once, from the nominal batch, so that a short last batch is not computed differently."""
    device = resolve_device(str(device)) if isinstance(device, str) else device
    return resolve_precision(
        precision or encoder.precision, device, encoder.tokens_per_pass(batch_size, device)
    )


def input_key(encoder, image_key: str = "image") -> str:
    """The store array (and env observation) ``encoder`` reads: ``image_key`` for camera
    encoders, the encoder's own ``input_key`` otherwise (``state`` for the oracle)."""
    return getattr(encoder, "input_key", None) or image_key


def _check_image_key(store: DemoStore, image_key: str) -> None:
    if image_key == "state" and "state" not in store.keys():
        raise UserError(
            f"{store.path} has no data/state (the privileged sim state the oracle reads); collect "
            "the demos with robo-s2 collect, imported stores may not have it"
        )
    if image_key not in store.keys():
        images = [k for k in store.keys() if k.startswith("image")]
        raise UserError(
            f"{store.path} has no data/{image_key}; image keys there: {images or 'none'} "
            "(choose one with image_key=...)"
        )


def _cache_entry(store: DemoStore, key: str) -> zarr.Group | None:
    """The store's ``features/<key>`` group, or None when there is none."""
    if FEATURES_GROUP not in store.root:
        return None
    features = store.root[FEATURES_GROUP]
    if not isinstance(features, zarr.Group) or key not in features:
        return None
    entry = features[key]
    if not isinstance(entry, zarr.Group):
        return None
    where = f"{store.path}/{FEATURES_GROUP}/{key}"
    fix = f"delete {where} and encode again (robo-s2 encode)"
    n_done = entry.attrs.get("n_done", 0)
    if isinstance(n_done, bool) or not isinstance(n_done, int) or n_done < 0:
        raise UserError(f"{where}: n_done={n_done!r} is not a frame count; {fix}")
    if "feature" in entry:
        array = entry["feature"]
        if not isinstance(array, zarr.Array) or array.ndim != 2:
            raise UserError(f"{where}/feature is not a 2-D array of features; {fix}")
        check_chunk_bytes(array, f"{FEATURES_GROUP}/{key}/feature", store.path)
    return entry


def cache_status(
    store: DemoStore, encoder, image_key: str = "image", precision: str | None = None
) -> CacheStatus:
    """How much of ``encoder``'s cache entry in ``precision`` is written. ``precision`` None (or
    ``auto``): the entry :func:`encode_store` writes with its defaults (the encoder's own setting,
    batches of ``ENCODE_BATCH`` on the default device), so the two calls find one entry."""
    if precision in (None, "auto"):
        precision = feature_precision(encoder, "auto", ENCODE_BATCH, precision)
    key = cache_key(encoder, image_key, precision)
    entry = _cache_entry(store, key)
    n_done = 0 if entry is None else int(cast(int, entry.attrs.get("n_done", 0)))
    return CacheStatus(
        key, min(n_done, store.n_frames), store.n_frames, encoder.feature_dim, precision
    )


def check_store_frames(store: DemoStore, encoder, image_key: str) -> None:
    """The store's frames must suit the encoder (:mod:`robo_s2.encoders.preprocess`'s policy)."""
    height, width = store.array(image_key).shape[1:3]
    check_frame_size(
        int(height), int(width), encoder.image_size,
        f"{store.path} data/{image_key} (encoder {encoder_label(encoder)})",
        f"collect with env.image_size={encoder.image_size} (or larger)",
    )  # fmt: skip


@torch.no_grad()
def encode_frames(
    encoder, images: np.ndarray, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """Features (float32 numpy) of uint8 frames (or of states, for an encoder whose
    ``input_key`` is ``state``), computed in a resolved ``precision``."""
    if getattr(encoder, "input_key", None) is not None:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32), device=device)
    else:
        x = frames_to_input(images, encoder.image_size, device)
    with autocast(device, precision):
        feats = encoder(x)
    return feats.float().cpu().numpy()


def encode_store(
    store: DemoStore,
    encoder,
    image_key: str = "image",
    batch_size: int = ENCODE_BATCH,
    device: str = "auto",
    on_batch: Callable[[CacheStatus], None] | None = None,
    precision: str | None = None,
    status: CacheStatus | None = None,
) -> CacheStatus:
    """Encode every frame not yet in the cache; a no-op when the cache is complete.

    ``precision`` (default: the encoder's own, usually ``auto``) is resolved once for the run
    (:func:`feature_precision`) and names the cache entry written. ``status``: the caller's
    :func:`cache_status` of this store, encoder and precision (then neither is looked up again)."""
    import time

    if encoder.trainable:
        raise UserError(
            f"encoder {encoder_label(encoder)} has trainable parts; its features change during "
            "training and cannot be cached (train from images instead)"
        )
    image_key = input_key(encoder, image_key)
    _check_image_key(store, image_key)
    if getattr(encoder, "input_key", None) is None:
        check_store_frames(store, encoder, image_key)
    torch_device = resolve_device(device)
    if status is None:
        precision = feature_precision(encoder, torch_device, batch_size, precision)
        status = cache_status(store, encoder, image_key, precision)
    precision = status.precision
    if status.complete:
        return status
    encoder = encoder.to(torch_device).eval()
    group = store.root.require_group(f"{FEATURES_GROUP}/{status.key}")
    if "feature" not in group:
        group.create_array(
            "feature",
            shape=(store.n_frames, encoder.feature_dim),
            chunks=(ROWS_PER_CHUNK, encoder.feature_dim),
            dtype="float32",
        )
        group.attrs.update(
            {
                "encoder": encoder.describe(),
                "image_key": image_key,
                "precision": precision,
                "n_done": 0,
            }
        )
    array = group["feature"]
    assert isinstance(array, zarr.Array)  # written just above, or by an earlier run
    if array.shape[1] != encoder.feature_dim:
        raise UserError(
            f"cached features {status.key} have width {array.shape[1]}, the encoder gives "
            f"{encoder.feature_dim}; delete {store.path}/{FEATURES_GROUP}/{status.key}, re-encode"
        )
    if array.shape[0] < store.n_frames:
        array.resize((store.n_frames, encoder.feature_dim))
    images = store.array(image_key)
    start = time.perf_counter()
    for lo in range(status.n_done, store.n_frames, batch_size):
        hi = min(lo + batch_size, store.n_frames)
        array[lo:hi] = encode_frames(encoder, images[lo:hi], torch_device, precision)
        group.attrs["n_done"] = hi  # the commit point: rows below n_done are final
        status.n_encoded_now += hi - lo
        status.n_done = hi
        status.seconds = time.perf_counter() - start
        if on_batch is not None:
            on_batch(status)
    return status


def load_features(
    store: DemoStore, encoder, image_key: str = "image", precision: str | None = None
) -> np.ndarray:
    """All cached features ``(n_frames, D)`` computed in ``precision`` (None: as
    :func:`cache_status` resolves it); an error says how to compute them when incomplete."""
    status = cache_status(store, encoder, image_key, precision)
    return read_features(store, status.key, status.precision)


def read_features(store: DemoStore, key: str, precision: str) -> np.ndarray:
    """The features ``(n_frames, D)`` of cache entry ``key`` (a :class:`CacheStatus`'s), read
    after checking that every frame is written."""
    entry = _cache_entry(store, key)
    n_done = 0 if entry is None else int(cast(int, entry.attrs.get("n_done", 0)))
    if entry is None or n_done < store.n_frames:
        raise UserError(
            f"{store.path} has features for {min(n_done, store.n_frames)}/{store.n_frames} frames "
            f"of encoder {key}; run: robo-s2 encode store={store.path} encoder=<that encoder "
            f"config> encoder.precision={precision}"
        )
    features = entry["feature"]
    assert isinstance(features, zarr.Array)
    return np.asarray(features[: store.n_frames])
