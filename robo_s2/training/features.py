"""Where a training run's per-frame features come from.

A frozen encoder's features are cached in the store (computed on first use unless
``data.encode=false``) and read into memory; the cache is consulted once per run. An encoder with
trainable parts trains from the store's frames: a batch carries its windows' distinct frames and
the rows they fill (:func:`image_batch`), and validation encodes each frame once
(:func:`encode_frame_table`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.data.store import DemoStore
from robo_s2.encoders.feature_cache import CacheStatus, feature_precision
from robo_s2.errors import UserError
from robo_s2.training import distributed as D
from robo_s2.training.data import FrameSource, SequenceData, check_finite


@dataclass
class Features:
    """A run's feature supply: cached features, or frames for an encoder that trains."""

    store: DemoStore  # the store, reopened after features were cached into it
    precision: str  # what the encoder computes in (fp32 | bf16), at evaluation too
    source: str  # said in the header line and the checkpoint's meta
    cached: np.ndarray | None = None  # (n_frames, D) of a frozen encoder
    frames: FrameSource | None = None  # the image array of a trainable one


def supply_features(
    store: DemoStore,
    encoder: Any,  # a VisionEncoder
    image_key: str,
    dcfg: Mapping[str, Any],
    device: torch.device,
    dist: D.DistInfo,
    progress: bool = False,
    encoder_name: str | None = None,
) -> Features:
    """The cached features of a frozen encoder (encoded now when missing), or the frames an
    encoder with trainable parts reads per batch."""
    from robo_s2.encoders.feature_cache import _check_image_key, check_store_frames

    precision = feature_precision(encoder, device, int(dcfg["batch_size"]))
    if not encoder.trainable:
        return _cached(
            store, encoder, image_key, precision, dcfg, device, dist, progress, encoder_name
        )
    _check_image_key(store, image_key)
    check_store_frames(store, encoder, image_key)
    gb = float(dcfg["images_in_memory_gb"])
    return Features(
        store,
        precision,
        f"images ({image_key}), encoder trained end to end in {precision}",
        frames=FrameSource(store.array(image_key), gb * 2**30),
    )


def _cached(
    store: DemoStore,
    encoder: Any,
    image_key: str,
    precision: str,
    dcfg: Mapping[str, Any],
    device: torch.device,
    dist: D.DistInfo,
    progress: bool,
    encoder_name: str | None,
) -> Features:
    from robo_s2.encoders.feature_cache import cache_status, encoder_label, read_features

    status = cache_status(store, encoder, image_key, precision)
    if not status.complete:
        if not dcfg["encode"]:
            name = encoder_name or encoder_label(encoder)
            raise UserError(
                f"{store.path} has no cached features of encoder {name} "
                f"({status.n_done}/{status.n_frames} frames of {status.key}) and "
                f"data.encode=false; run: robo-s2 encode store={store.path} encoder={name} "
                f"image_key={image_key} (with the same encoder overrides), or drop data.encode=false "
                "to encode now"
            )
        if dist.is_main:
            _encode_into_store(store, encoder, image_key, status, dcfg, device, progress)
        D.barrier(dist)
        store = DemoStore.open(store.path, mode="r")
    features = read_features(store, status.key, precision)
    check_finite(
        f"cached features {status.key} in {store.path}",
        features,
        store.episode_ends,
        f"delete {store.path}/features/{status.key} and encode again (robo-s2 encode)",
    )
    return Features(store, precision, f"cached features {status.key}", cached=features)


def _encode_into_store(
    store: DemoStore,
    encoder: Any,
    image_key: str,
    status: CacheStatus,
    dcfg: Mapping[str, Any],
    device: torch.device,
    progress: bool,
) -> None:
    """Rank 0: cache the features of the frames ``status`` finds missing, in the store."""
    from tqdm import tqdm

    from robo_s2.encoders.feature_cache import encode_store

    bar = tqdm(
        total=status.n_frames,
        initial=status.n_done,
        desc="encode",
        unit="frame",
        dynamic_ncols=True,
        delay=1.0,
        disable=not progress,
    )

    def on_batch(s: Any) -> None:
        bar.n = s.n_done
        bar.refresh()

    writable = DemoStore.open(store.path, mode="a", wait_s=float(dcfg["store_wait_s"] or 0))
    try:
        done = encode_store(
            writable,
            encoder,
            image_key=image_key,
            batch_size=int(dcfg["batch_size"]),
            device=str(device),
            on_batch=on_batch,
            status=status,
        )
    finally:
        bar.close()
        writable.close()
    print(
        f"train: cached features {done.key} for {done.n_encoded_now} frames of "
        f"{store.path} in {done.seconds:.1f} s"
    )


@torch.no_grad()
def encode_frame_table(
    encoder: nn.Module,
    frames: FrameSource,
    ids: np.ndarray,
    n_frames: int,
    batch_size: int,
    precision: str,
    device: torch.device,
) -> Tensor:
    """A per-frame feature table ``(n_frames, D)`` with the rows ``ids`` filled (in eval mode)."""
    from robo_s2.device import autocast
    from robo_s2.encoders.preprocess import frames_to_input

    was_training = encoder.training
    encoder.eval()
    table = torch.zeros(n_frames, int(encoder.feature_dim), device=device)  # type: ignore[arg-type]
    for lo in range(0, len(ids), batch_size):
        chunk = ids[lo : lo + batch_size]
        x = frames_to_input(frames(chunk), encoder.image_size, device)  # type: ignore[arg-type]
        with autocast(device, precision):
            table[torch.as_tensor(chunk, device=device)] = encoder(x).float()
    encoder.train(was_training)
    return table


def image_batch(
    data: SequenceData, frames: FrameSource, windows: Tensor, image_size: int, device: torch.device
) -> dict[str, Tensor]:
    """A batch that carries its windows' DISTINCT frames ``(U, 3, S, S)`` and, per step, the row
    of ``frames`` it reads (``inverse``, ``(B, H)``), for one encoder pass per frame."""
    from robo_s2.encoders.preprocess import frames_to_input

    hist = data.history_frames(windows)
    uniq, inverse = torch.unique(hist, return_inverse=True)
    batch = data.batch(windows, feature=None)
    batch["frames"] = frames_to_input(frames(uniq.cpu().numpy()), image_size, device)
    batch["inverse"] = inverse
    return batch
