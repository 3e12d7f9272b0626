"""Masked autoencoder (MAE, He et al. 2022) around a timm ViT: the model ``robo-s2 pretrain`` trains.

The encoder is a plain timm ``VisionTransformer`` (class token, learned-shape absolute position
embedding, no register tokens): any timm ViT name (``vit_tiny_patch16_224``, ...) or one of MVP's
architectures (``vit_s16``, ``vit_b16``, ``vit_l16``; :func:`robo_s2.encoders.mvp.build_mvp_vit`).
Its state dict keeps timm's key names, so :func:`encoder_state` is directly an MVP checkpoint's
``model`` entry. As in MAE/MVP the position embeddings are fixed 2-D sin-cos tables, the decoder is
a few narrow transformer blocks (its keys ``decoder*`` and ``mask_token`` are what MVP's loader drops),
a random ``mask_ratio`` of the patches (75 %) is hidden from the encoder, and the loss is the mean
squared error on the hidden patches of per-patch normalised pixels (``norm_pix_loss``).
Inputs are ``[0, 1]`` pixels; the model applies ImageNet mean/std itself, as the frozen encoders do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from robo_s2.errors import ModelArgsRejected, UserError


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> Tensor:
    """MAE's fixed 2-D sin-cos position table ``(1, [1 +] grid*grid, dim)`` (zeros for the CLS)."""
    if dim % 4:
        raise UserError(f"embedding width {dim} must be divisible by 4 for a 2-D sin-cos table")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    parts = []
    for pos in (xs.reshape(-1), ys.reshape(-1)):  # MAE's order: w then h
        out = np.einsum("m,d->md", pos, omega)
        parts += [np.sin(out), np.cos(out)]
    table = np.concatenate(parts, axis=1)
    if cls_token:
        table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def build_vit(arch: str, img_size: int, seed: int = 0) -> Any:
    """The encoder: an MVP architecture name or any timm ViT name, random init from ``seed``."""
    from timm.models.vision_transformer import VisionTransformer

    from robo_s2.encoders.backbone import create_timm_model, seeded
    from robo_s2.encoders.mvp import _ARCH_ALIASES, ARCHS, build_mvp_vit

    if str(arch).lower() in ARCHS or str(arch).lower() in _ARCH_ALIASES:
        with seeded(seed):
            net = build_mvp_vit(arch, img_size)
    else:
        try:
            net = create_timm_model(str(arch), False, None, {"img_size": int(img_size)}, seed)
        except ModelArgsRejected:
            net = None  # a timm model without img_size: not a ViT
    ok = (
        isinstance(net, VisionTransformer)
        and getattr(net, "cls_token", None) is not None
        and int(getattr(net, "num_prefix_tokens", 1)) == 1
        and getattr(net, "pos_embed", None) is not None
        and not getattr(net, "no_embed_class", False)
    )
    if not ok:
        raise UserError(
            f"arch '{arch}' is not a plain ViT (class token, absolute position embedding, no "
            "register tokens) that MAE pre-training supports; use e.g. vit_tiny_patch16_224, "
            "vit_small_patch16_224, vit_base_patch16_224 or MVP's vit_s16 / vit_b16 / vit_l16"
        )
    return net


class MaskedAutoencoder(nn.Module):
    """MAE: ``forward(images, generator)`` -> ``(loss, pred, mask)``; see the module docstring."""

    encoder: Any  # a timm VisionTransformer (checked by build_vit), used duck-typed
    pixel_mean: Tensor  # registered buffers
    decoder_pos_embed: Tensor
    pixel_std: Tensor
    mask_token: nn.Parameter

    def __init__(
        self,
        arch: str = "vit_tiny_patch16_224",
        img_size: int = 224,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        from robo_s2.encoders.backbone import seeded

        if not 0.0 < float(mask_ratio) < 1.0:
            raise UserError(f"mask_ratio={mask_ratio} must be between 0 and 1 (MAE uses 0.75)")
        self.arch = str(arch)
        self.encoder = build_vit(arch, img_size, seed)
        enc = self.encoder
        ps = enc.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, tuple | list) else ps)
        if int(img_size) % self.patch_size:
            raise UserError(
                f"image_size={img_size} is not divisible by the patch size {self.patch_size} of "
                f"{arch}; use a multiple of {self.patch_size}"
            )
        self.img_size = int(img_size)
        self.grid = self.img_size // self.patch_size
        self.mask_ratio = float(mask_ratio)
        self.norm_pix_loss = bool(norm_pix_loss)
        dim = int(enc.embed_dim)
        with torch.no_grad():  # MAE/MVP: fixed sin-cos position tables
            enc.pos_embed.copy_(sincos_pos_embed(dim, self.grid))
        enc.pos_embed.requires_grad_(False)
        with seeded(seed + 1):
            self.decoder_embed = nn.Linear(dim, decoder_dim)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
            self.decoder_blocks = nn.ModuleList(
                Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True)
                for _ in range(int(decoder_depth))
            )
            self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
            self.decoder_pred = nn.Linear(decoder_dim, self.patch_size**2 * 3)
            nn.init.normal_(self.mask_token, std=0.02)
            for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        self.register_buffer(
            "decoder_pos_embed", sincos_pos_embed(decoder_dim, self.grid), persistent=False
        )
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.config = dict(
            arch=self.arch, img_size=self.img_size, decoder_dim=int(decoder_dim),
            decoder_depth=int(decoder_depth), decoder_heads=int(decoder_heads),
            mask_ratio=self.mask_ratio, norm_pix_loss=self.norm_pix_loss, seed=int(seed),
        )  # fmt: skip

    # ------------------------------------------------------------------------------------------
    def patchify(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, L, p*p*3)`` (MAE's channel-last patch layout)."""
        p, g = self.patch_size, self.grid
        x = x.reshape(x.shape[0], 3, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(x.shape[0], g * g, p * p * 3)

    def unpatchify(self, x: Tensor) -> Tensor:
        p, g = self.patch_size, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, 3)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], 3, g * p, g * p)

    def random_mask(self, batch: int, generator: torch.Generator | None) -> Tensor:
        """Indices ``(B, L)`` of a random permutation of the patches (first ``keep`` are shown)."""
        noise = torch.rand(batch, self.grid**2, generator=generator)
        return torch.argsort(noise, dim=1).to(self.pixel_mean.device)

    def encode(self, x: Tensor, ids_shuffle: Tensor) -> Tensor:
        """Tokens ``(B, 1 + keep, D)`` of the visible patches after the final norm."""
        enc = self.encoder
        keep = int(self.grid**2 * (1 - self.mask_ratio))
        x = enc.patch_embed((x - self.pixel_mean) / self.pixel_std)
        if x.dim() == 4:  # dynamic_img_size models: (B, h, w, D) patch grid
            x = x.flatten(1, 2)
        x = x + enc.pos_embed[:, 1:]
        ids_keep = ids_shuffle[:, :keep]
        x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.norm_pre(torch.cat([cls, x], dim=1))
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x)

    def decode(self, tokens: Tensor, ids_shuffle: Tensor) -> Tensor:
        """Predicted pixels of every patch ``(B, L, p*p*3)`` from the visible tokens."""
        x = self.decoder_embed(tokens)
        n, length = x.shape[0], self.grid**2
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], masked], dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, images: Tensor) -> Tensor:
        t = self.patchify((images - self.pixel_mean) / self.pixel_std)
        if self.norm_pix_loss:
            mean = t.mean(dim=-1, keepdim=True)
            var = t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def forward(
        self, images: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``[0,1]`` images ``(B,3,S,S)`` -> loss, predicted patches ``(B,L,p*p*3)``, mask ``(B,L)``
        (1 = hidden). ``generator`` (a CPU generator) draws the masks reproducibly."""
        if images.shape[-1] != self.img_size or images.shape[-2] != self.img_size:
            raise UserError(
                f"MAE input is {tuple(images.shape[-2:])}, the model was built for "
                f"{self.img_size}x{self.img_size}"
            )
        ids = self.random_mask(images.shape[0], generator)
        pred = self.decode(self.encode(images, ids), ids)
        keep = int(self.grid**2 * (1 - self.mask_ratio))
        mask = torch.ones(images.shape[0], self.grid**2, device=images.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, torch.argsort(ids, dim=1))
        err = (pred.float() - self.target(images)).pow(2).mean(dim=-1)
        loss = (err * mask).sum() / mask.sum()
        return loss, pred, mask

    def reconstruct(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Pixels ``[0,1]`` of the reconstruction: visible patches as given, hidden ones predicted
        (per-patch statistics of the originals undo the pixel normalisation, as in MAE's demo)."""
        target = self.patchify((images - self.pixel_mean) / self.pixel_std)
        pred = pred.float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        merged = target * (1 - mask[..., None]) + pred * mask[..., None]
        return (self.unpatchify(merged) * self.pixel_std + self.pixel_mean).clamp(0, 1)

    def encoder_state(self) -> dict[str, Tensor]:
        """The encoder's state dict with timm key names, on the CPU (an MVP ``model`` entry)."""
        return {k: v.detach().float().cpu().clone() for k, v in self.encoder.state_dict().items()}


def save_mvp_checkpoint(
    model: MaskedAutoencoder, path: str, extra: dict[str, Any] | None = None
) -> None:
    """Write ``{"model": encoder state dict, "robo_s2": extra}`` atomically (MVP's ``.pth``)."""
    from robo_s2.core.io import atomic_file

    with atomic_file(path) as tmp:
        torch.save({"model": model.encoder_state(), "robo_s2": dict(extra or {})}, tmp)
