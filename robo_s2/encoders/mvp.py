"""MVP (Masked Visual Pre-training for motor control) checkpoints as frozen encoders (``mvp``).

A checkpoint is a ``.pth`` file holding the ViT encoder's state dict under the key ``model``, with
timm/MAE key names (``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ``norm.weight``).
The architectures are MVP's (``mvp/backbones/vit.py``): patch 16, MLP ratio 4, qkv bias, LayerNorm
eps 1e-6, and

* ``vit_s16``: width 384, depth 12, **12 heads** (timm's ViT-S has 6: same weight shapes, different
  attention, so loading MVP-S into timm's ViT-S silently computes something else),
* ``vit_b16``: width 768, depth 12, 12 heads,
* ``vit_l16``: width 1024, depth 24, 16 heads. MVP's released ViT-L (``vitl-256-mae-egosoup``) was
  trained at 256², and MVP's code builds it with ``img_size=256``.

The feature is the CLS token after the final LayerNorm (MVP: ``norm(x[:, 0])``), on ImageNet
mean/std-normalised pixels. ``image_size: null`` runs the model at the checkpoint's native size
(read off its ``pos_embed``: 224 for S/B, 256 for L); another ``image_size`` resamples
``pos_embed`` (bicubic, as timm does for a changed ``img_size``) — e.g. the S² paper's Table 8
runs MVP-L at 224².

Loading is strict: missing or unexpected keys and shape mismatches are :class:`UserError` s that
name them. Keys that belong to pre-training only and not to the encoder's feature are dropped:
the MAE decoder (``decoder*``), ``mask_token``, and a classifier ``head.*`` / ``pre_logits.*``.
Wrapper prefixes (``module.`` of DistributedDataParallel, ``encoder.``, ``model.``) are stripped.
The file is read as data (:func:`robo_s2.safe_io.read_weights`): a ``.pth`` that pickles Python
objects beyond tensors is refused unless the user passes ``encoder.trust_weights=true``.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from robo_s2.encoders.backbone import TokenEncoder, seeded
from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from robo_s2.errors import UserError
from robo_s2.safe_io import name_list, read_weights, strip_known_prefixes, unused_ok

PATCH_SIZE = 16
ARCHS: dict[str, dict[str, int]] = {
    "vit_s16": dict(embed_dim=384, depth=12, num_heads=12),
    "vit_b16": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_l16": dict(embed_dim=1024, depth=24, num_heads=16),
}
_ARCH_ALIASES = {
    "vits": "vit_s16",
    "vitb": "vit_b16",
    "vitl": "vit_l16",
    "s": "vit_s16",
    "b": "vit_b16",
}
_ARCH_ALIASES.update({"l": "vit_l16", "vit_s": "vit_s16", "vit_b": "vit_b16", "vit_l": "vit_l16"})


def build_mvp_vit(arch: str, img_size: int = 224) -> nn.Module:
    """MVP's ViT as a timm ``VisionTransformer`` (no classifier head)."""
    from timm.models.vision_transformer import VisionTransformer

    spec: dict[str, Any] = dict(ARCHS[_resolve_arch(arch)])
    return VisionTransformer(
        img_size=img_size,
        patch_size=PATCH_SIZE,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_classes=0,
        global_pool="token",
        **spec,
    )


def _resolve_arch(arch: str) -> str:
    a = str(arch).lower()
    a = _ARCH_ALIASES.get(a, a)
    if a not in ARCHS:
        raise UserError(f"unknown MVP arch '{arch}'; choose one of: {', '.join(ARCHS)}")
    return a


def _guess_arch(state: dict[str, Tensor]) -> str | None:
    w = state.get("patch_embed.proj.weight")
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    for name, spec in ARCHS.items():
        if w is not None and w.shape[0] == spec["embed_dim"] and depth == spec["depth"]:
            return name
    return None


def load_mvp_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The encoder state dict of an MVP ``.pth`` (key ``model``), with UserErrors for bad files.

    Read as data (``weights_only=True``); a file that needs pickle loads only when the user passed
    ``encoder.trust_weights=true`` (:func:`robo_s2.safe_io.trusted_weights`)."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise UserError(f"MVP checkpoint {p} does not exist (set weights=/path/to/mvp.pth)")
    ckpt = read_weights(p, "MVP checkpoint")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(
            f"MVP checkpoint {p} has no 'model' entry (found {keys}); MVP/MAE checkpoints keep the "
            "encoder state dict under 'model'"
        )
    state = ckpt["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"'model' in MVP checkpoint {p} is not a state dict of tensors")
    state, _ = strip_known_prefixes(state)
    return state


class MVPEncoder(TokenEncoder):
    """An MVP ViT checkpoint: CLS token after the final LayerNorm (or another pooling)."""

    model: Any  # timm's VisionTransformer in MVP's layout: duck-typed

    def __init__(
        self,
        weights: str,
        arch: str = "vit_b16",
        image_size: int | None = None,
        pooling: str = "cls",
        trainable: bool = False,
        seed: int = 0,
        upsample_from: int | None = None,
    ) -> None:
        super().__init__()
        arch = _resolve_arch(arch)
        random_init = weights is None or str(weights).lower() == "none"
        state = None if random_init else load_mvp_state_dict(weights)
        native = 224
        if state is not None and "pos_embed" in state:
            n = state["pos_embed"].shape[1] - 1
            g = int(round(n**0.5))
            if g * g == n:
                native = g * PATCH_SIZE
        size = int(image_size or native)
        if size % PATCH_SIZE:
            raise UserError(
                f"MVP image_size {size} is not divisible by the patch size {PATCH_SIZE}"
            )
        self.set_config(
            "mvp",
            weights=None if random_init else str(weights),
            arch=arch,
            image_size=size,
            pooling=pooling,
            trainable=bool(trainable),
            **({"seed": int(seed)} if state is None else {}),
            **({} if upsample_from is None else {"upsample_from": int(upsample_from)}),
        )
        if state is None:
            with seeded(seed):  # random init, asked for with weights=none; same in every process
                self.model = build_mvp_vit(arch, size)
        else:
            with torch.device(
                "meta"
            ):  # no wasted random init: the checkpoint's tensors are assigned
                self.model = build_mvp_vit(arch, size)
            self._load(state, arch, str(weights), size)
        self.image_size = size
        self.native_size = native
        self.patch_size = PATCH_SIZE
        self.num_prefix_tokens = 1
        self.width = ARCHS[arch]["embed_dim"]
        self._upsample_from(upsample_from)
        self._setup(pooling, IMAGENET_MEAN, IMAGENET_STD)
        self.trainable = bool(trainable)
        if not self.trainable:
            self.freeze()

    def _load(self, state: dict[str, Tensor], arch: str, path: str, size: int) -> None:
        state = {k: v for k, v in state.items() if not unused_ok(k)}
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {name_list(missing)}")
            if unexpected:
                parts.append(f"unexpected keys {name_list(unexpected)}")
            guess = _guess_arch(state)
            hint = (
                f" (it looks like a {guess} checkpoint; set arch={guess})"
                if guess and guess != arch
                else ""
            )
            raise UserError(
                f"MVP checkpoint {path} does not fit arch {arch}: {'; '.join(parts)}{hint}"
            )
        pos = state["pos_embed"]
        if pos.shape != own["pos_embed"].shape and pos.shape[-1] == own["pos_embed"].shape[-1]:
            from timm.layers import resample_abs_pos_embed

            g = size // PATCH_SIZE
            state = dict(state)
            state["pos_embed"] = resample_abs_pos_embed(pos, new_size=(g, g), num_prefix_tokens=1)
        bad = [
            f"{k}: file {tuple(state[k].shape)} vs {arch} {tuple(v.shape)}"
            for k, v in own.items()
            if tuple(state[k].shape) != tuple(v.shape)
        ]
        if bad:
            guess = _guess_arch(state)
            hint = (
                f"; it looks like a {guess} checkpoint, set arch={guess}"
                if guess and guess != arch
                else ""
            )
            more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
            raise UserError(
                f"MVP checkpoint {path} does not fit arch {arch} (wrong architecture): "
                f"{'; '.join(bad[:3])}{more}{hint}"
            )
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        self.model.load_state_dict(state, strict=True, assign=True)
        left = [
            n for n, t in [*self.model.named_parameters(), *self.model.named_buffers()] if t.is_meta
        ]
        if left:  # pragma: no cover - every tensor of MVP's ViT is in its state dict
            raise RuntimeError(f"MVP encoder tensors not loaded from {path}: {left}")
        logging.getLogger("robo_s2.weights").info(
            f"loaded {len(own)}/{len(own)} tensors of MVP {arch} from {path}"
        )

    def _tokens(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)  # all tokens after the final LayerNorm

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(arch=self._config["arch"], native_size=self.native_size)
        return d
