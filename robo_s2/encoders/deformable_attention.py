"""Cross-attention for PIIP interaction units: regular (dense) and deformable, in pure PyTorch.

Deformable attention follows Deformable DETR (Zhu et al., ICLR 2021) with one feature level, as PIIP
uses it between two branches: every query predicts, per head, ``num_points`` sampling offsets
around its *reference point* (the query token's normalised position in its own token map, which
covers the same image as the key/value map) and a softmax over those points; the value map is
sampled bilinearly at the offset locations with :func:`torch.nn.functional.grid_sample` and the
samples are summed with the attention weights. No compiled extension: the same code runs on CPU
and CUDA.

Coordinates: a location ``(x, y)`` in ``[0, 1]^2`` is normalised by the map's width/height with
pixel-centre convention (``align_corners=False``): the centre of token ``(row i, col j)`` of an
``H x W`` map is ``((j + 0.5) / W, (i + 0.5) / H)``; outside the map the value is zero-padded.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CrossAttention",
    "DeformableCrossAttention",
    "deformable_attention_core",
    "reference_points",
]


def reference_points(
    height: int, width: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Normalised ``(x, y)`` centres of an ``height x width`` token map, row-major: ``(H*W, 2)``."""
    dtype = dtype or torch.float32
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), dim=-1)


def deformable_attention_core(
    value: Tensor,
    value_hw: tuple[int, int],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Single-level multi-head deformable attention (the ``ms_deform_attn`` op, in PyTorch).

    Args:
        value: ``(B, H*W, heads, head_dim)`` value tokens of an ``H x W`` map (row-major).
        value_hw: ``(H, W)``.
        sampling_locations: ``(B, Nq, heads, points, 2)`` normalised ``(x, y)`` in ``[0, 1]``
            (pixel-centre convention; outside the map samples are zero).
        attention_weights: ``(B, Nq, heads, points)`` (already normalised over points).

    Returns:
        ``(B, Nq, heads * head_dim)``.
    """
    b, n_v, heads, head_dim = value.shape
    h, w = value_hw
    if n_v != h * w:
        raise ValueError(f"value has {n_v} tokens but value_hw={value_hw} implies {h * w}")
    _, n_q, _, points, _ = sampling_locations.shape
    # (B, HW, heads, Dh) -> (B*heads, Dh, H, W)
    value_map = value.permute(0, 2, 3, 1).reshape(b * heads, head_dim, h, w)
    # [0,1] -> [-1,1] for grid_sample; (B, Nq, heads, P, 2) -> (B*heads, Nq, P, 2)
    grid = (2.0 * sampling_locations - 1.0).transpose(1, 2).reshape(b * heads, n_q, points, 2)
    grid = grid.to(value_map.dtype)
    sampled = F.grid_sample(
        value_map, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B*heads, Dh, Nq, P)
    weights = attention_weights.transpose(1, 2).reshape(b * heads, 1, n_q, points)
    out = (sampled * weights.to(sampled.dtype)).sum(dim=-1)  # (B*heads, Dh, Nq)
    return out.reshape(b, heads * head_dim, n_q).transpose(1, 2)


class DeformableCrossAttention(nn.Module):
    """One-level deformable cross-attention: queries on one map attend to a value map.

    ``sampling_offsets`` and ``attention_weights`` are linear layers of the query; offsets are in
    value-map token units (divided by the value map's width/height), so offset ``(1, 0)`` moves one
    token to the right whatever the map sizes. ``value_ratio`` scales the value width (PIIP's
    ``deform_ratio``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 6,
        num_points: int = 4,
        kv_dim: int | None = None,
        value_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        value_dim = int(dim * value_ratio)
        if dim % num_heads or value_dim % num_heads:
            raise ValueError(
                f"width {dim} (value width {value_dim}) is not divisible by num_heads={num_heads}"
            )
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.dim = dim
        self.num_heads = num_heads
        self.num_points = num_points
        self.value_dim = value_dim
        self.sampling_offsets = nn.Linear(dim, num_heads * num_points * 2)
        self.attention_weights = nn.Linear(dim, num_heads * num_points)
        self.value_proj = nn.Linear(kv_dim or dim, value_dim)
        self.output_proj = nn.Linear(value_dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's init: offsets start on a ring of directions, one per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (
            2.0 * math.pi / self.num_heads
        )
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid[:, None, :].repeat(1, self.num_points, 1)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32)[None, :, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling(
        self, query: Tensor, query_hw: tuple[int, int], value_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Sampling locations ``(B, Nq, heads, P, 2)`` and weights ``(B, Nq, heads, P)``."""
        b, n_q, _ = query.shape
        if n_q != query_hw[0] * query_hw[1]:
            raise ValueError(f"query has {n_q} tokens but query_hw={query_hw}")
        ref = reference_points(*query_hw, device=query.device, dtype=torch.float32)
        offsets = self.sampling_offsets(query).view(b, n_q, self.num_heads, self.num_points, 2)
        normaliser = torch.tensor(
            [value_hw[1], value_hw[0]], device=query.device, dtype=torch.float32
        )
        locations = ref[None, :, None, None, :] + offsets.float() / normaliser
        logits = self.attention_weights(query).view(b, n_q, self.num_heads, self.num_points)
        weights = logits.float().softmax(dim=-1)
        return locations, weights

    def forward(
        self, query: Tensor, query_hw: tuple[int, int], value: Tensor, value_hw: tuple[int, int]
    ) -> Tensor:
        """``query (B, Hq*Wq, dim)``, ``value (B, Hv*Wv, kv_dim)`` -> ``(B, Hq*Wq, dim)``."""
        b, n_v, _ = value.shape
        v = self.value_proj(value).view(b, n_v, self.num_heads, self.value_dim // self.num_heads)
        locations, weights = self.sampling(query, query_hw, value_hw)
        out = deformable_attention_core(v, value_hw, locations, weights)
        return self.output_proj(out.to(query.dtype))


class CrossAttention(nn.Module):
    """Regular multi-head cross-attention (queries attend to every key/value token)."""

    def __init__(
        self, dim: int, num_heads: int = 6, kv_dim: int | None = None, qkv_bias: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        kv_dim = kv_dim or dim
        self.wq = nn.Linear(dim, dim, bias=qkv_bias)
        self.wk = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.wv = nn.Linear(kv_dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        query: Tensor,
        query_hw: tuple[int, int] | None = None,
        value: Tensor | None = None,
        value_hw: tuple[int, int] | None = None,
    ) -> Tensor:
        """``query (B, Nq, dim)``, ``value (B, Nv, kv_dim)`` -> ``(B, Nq, dim)``; sizes unused."""
        if value is None:
            raise ValueError("CrossAttention needs a key/value token map")
        b, n_q, c = query.shape
        n_v = value.shape[1]
        h = self.num_heads
        q = self.wq(query).view(b, n_q, h, c // h).transpose(1, 2)
        k = self.wk(value).view(b, n_v, h, c // h).transpose(1, 2)
        v = self.wv(value).view(b, n_v, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n_q, c))
