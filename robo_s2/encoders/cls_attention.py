"""The CLS token's attention over the patch tokens in a ViT's last block, captured as it runs.

A forward pre-hook on the last block's attention module (timm's ``Attention``: ``qkv``,
``num_heads``, ``q_norm``/``k_norm``, ``scale``) recomputes the CLS query's softmax attention
from the block's input — the fused kernel the block itself uses never materialises it — and
keeps it, averaged over heads, for every pass while the capture is open. ``s2_select``'s
``cls_attention`` rule reads it off the first scale's pass; the hook is removed before the
high-resolution tiles run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robo_s2.encoders.s2 import _merge_channels_last
from robo_s2.errors import UserError


def last_attention(backbone: Any) -> Any:
    """The last transformer block's attention module of ``backbone`` (a timm ViT encoder)."""
    blocks = getattr(getattr(backbone, "model", None), "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if blocks is not None and len(blocks) else None
    if attn is None or not hasattr(attn, "qkv") or not hasattr(attn, "num_heads"):
        raise UserError(
            f"rule=cls_attention needs a ViT backbone with attention blocks; "
            f"{getattr(backbone, 'name', type(backbone).__name__)} has none (use rule=salient)"
        )
    if not getattr(backbone, "has_class_token", False):
        raise UserError("rule=cls_attention needs a backbone with a CLS token (use rule=salient)")
    return attn


class ClsAttentionCapture:
    """Open on a backbone; every pass adds ``(tiles, patches)`` CLS-attention rows."""

    def __init__(self, backbone: Any) -> None:
        self.prefix = int(backbone.num_prefix_tokens)
        self.rows: list[Tensor] = []
        self._handle = last_attention(backbone).register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: tuple[Any, ...]) -> None:
        x = args[0]
        b, n, c = x.shape
        heads = int(module.num_heads)
        qkv = module.qkv(x).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k = module.q_norm(qkv[0][:, :, :1]), module.k_norm(qkv[1])
        logits = (q.to(torch.float32) * float(module.scale)) @ k.to(torch.float32).transpose(-2, -1)
        self.rows.append(logits.softmax(dim=-1).mean(dim=1)[:, 0, self.prefix :])

    def close(self) -> None:
        self._handle.remove()

    def grid(self, batch: int, num_split: int) -> Tensor:
        """The passes so far (one scale's ``num_split**2 * batch`` tiles, in S²'s tile order) as
        one ``(batch, h, w)`` map of the whole image; then closes the capture."""
        self.close()
        rows = torch.cat(self.rows)
        self.rows = []
        merged = _merge_channels_last(rows.unsqueeze(-1), num_split, batch, "bnc")
        return merged[..., 0]
