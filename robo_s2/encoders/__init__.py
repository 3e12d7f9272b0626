"""Frozen vision encoders: timm backbones, MVP checkpoints, S² multi-scale wrapper (and PIIP).

Build one with :func:`create_encoder` from a registered name, a config file of the Hydra ``encoder``
group (``configs/encoder/<name>.yaml``), a timm model name or a config mapping::

    from robo_s2.encoders import create_encoder
    enc = create_encoder("vit_t_s2")                   # configs/encoder/vit_t_s2.yaml
    enc = create_encoder("timm", model="vit_small_patch16_224", pretrained=False, pooling="grid:4")
    feats = enc(frames)                                # (B,3,H,W) in [0,1] or uint8 (B,H,W,3)
"""

from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD, VisionEncoder
from robo_s2.encoders.preprocess import to_float_images
from robo_s2.encoders.registry import (
    create_encoder,
    list_encoder_configs,
    list_encoders,
    load_encoder_config,
    register_encoder,
    resolve_encoder_config,
)

# heavier pieces (timm, the S² wrapper, profiling) load on first use
_LAZY = {
    "TokenEncoder": "robo_s2.encoders.backbone",
    "TimmEncoder": "robo_s2.encoders.backbone",
    "MVPEncoder": "robo_s2.encoders.mvp",
    "S2Encoder": "robo_s2.encoders.s2",
    "s2_forward": "robo_s2.encoders.s2",
    "Pooling": "robo_s2.encoders.pooling",
    "pool_tokens": "robo_s2.encoders.pooling",
    "EncoderProfile": "robo_s2.encoders.profile",
    "profile_encoder": "robo_s2.encoders.profile",
    "random_weights": "robo_s2.encoders.registry",
}


def __getattr__(name: str):  # noqa: ANN202 - module-level lazy attribute
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'robo_s2.encoders' has no attribute '{name}'")


__all__ = [
    *_LAZY,
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VisionEncoder",
    "create_encoder",
    "list_encoder_configs",
    "list_encoders",
    "load_encoder_config",
    "register_encoder",
    "resolve_encoder_config",
    "to_float_images",
]
