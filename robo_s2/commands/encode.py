"""``robo-s2 encode``: cache a frozen encoder's features for every frame of a demo store."""

from __future__ import annotations

from omegaconf import DictConfig
from tqdm import tqdm

from robo_s2.core.config import to_plain
from robo_s2.data.store import DemoStore
from robo_s2.encoders import create_encoder
from robo_s2.encoders.feature_cache import CacheStatus, encode_store
from robo_s2.errors import UserError


def encoder_choice() -> str | None:
    """The encoder config chosen on the command line (``encoder=vit_t_s2``), when run by Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get("encoder")


def run(cfg: DictConfig) -> CacheStatus:
    store = DemoStore.open(cfg.store, mode="a")
    if store.n_episodes == 0 or store.n_frames == 0:
        raise UserError(
            f"{cfg.store} has no episodes to encode; collect or import some first "
            f"(robo-s2 collect out={cfg.store})"
        )
    encoder = create_encoder(to_plain(cfg.encoder))
    encoder.label = encoder_choice() or encoder.label
    bar = tqdm(total=store.n_frames, desc="encode", unit="frame", dynamic_ncols=True, delay=1.0)

    def on_batch(status: CacheStatus) -> None:
        bar.n = status.n_done
        bar.refresh()

    try:
        status = encode_store(
            store, encoder, image_key=cfg.image_key, batch_size=cfg.batch_size,
            device=cfg.device, on_batch=on_batch,
        )  # fmt: skip
    finally:
        bar.close()
    if status.n_encoded_now == 0:
        print(
            f"encode: {cfg.store} already has features {status.key} "
            f"for all {status.n_frames} frames"
        )
    else:
        fps = status.n_encoded_now / max(status.seconds, 1e-9)
        print(
            f"encode: {status.n_encoded_now} frames of {cfg.store} -> features/{status.key} "
            f"(width {status.feature_dim}), {status.seconds:.1f} s, {fps:.1f} frames/s"
        )
    return status
