"""Tile-selection rules for ``s2_select``: which high-resolution tiles are worth running.

A rule scores the ``n x n`` tiles of one larger scale from the low-resolution pass (PS3's
bottom-up, prompt-free selection): ``rule(grid, frames, n, scale) -> (B, n*n)`` scores, where
``grid`` is the first scale's channels-last patch-token map ``(B, h, w, C)`` and ``frames`` the
encoder's prepared input ``(B, 3, H, W)``. Higher scores are run first; ties go to the lower tile
index, so selection is deterministic for a given frame. Register more with
``@register_tile_rule("name")``.

* ``norm``    — mean L2 norm of the low-res patch tokens covering the tile.
* ``salient`` — mean distance of those tokens from the frame's mean token (what stands out).
* ``random``  — seeded by a hash of the frame's pixels and the scale: random, but the same frame
  always gets the same tiles (feature caches stay valid).
* ``centre``  — tiles nearest the image centre.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.errors import UserError

TileRule = Callable[[Tensor, Tensor, int, int], Tensor]
_RULES: dict[str, TileRule] = {}


def register_tile_rule(name: str) -> Callable[[TileRule], TileRule]:
    """Decorator: register ``rule(grid, frames, n, scale) -> (B, n*n)`` under ``name``."""

    def decorator(rule: TileRule) -> TileRule:
        _RULES[name] = rule
        return rule

    return decorator


def list_tile_rules() -> list[str]:
    return sorted(_RULES)


def get_tile_rule(name: str) -> TileRule:
    if name not in _RULES:
        raise UserError(
            f"unknown s2_select rule {name!r}; choose one of {', '.join(list_tile_rules())} "
            "(e.g. rule=salient)"
        )
    return _RULES[name]


def per_tile(value: Tensor, n: int) -> Tensor:
    """``(B, h, w)`` map -> ``(B, n*n)`` tile means (row-major), any ``h`` against ``n``."""
    v = value.to(torch.float32).unsqueeze(1)
    pooled = F.adaptive_avg_pool2d(v, n) if v.shape[-1] >= n else F.interpolate(v, size=n)
    return pooled.flatten(1)


@register_tile_rule("norm")
def norm_rule(grid: Tensor, frames: Tensor, n: int, scale: int) -> Tensor:
    return per_tile(grid.to(torch.float32).norm(dim=-1), n)


@register_tile_rule("salient")
def salient_rule(grid: Tensor, frames: Tensor, n: int, scale: int) -> Tensor:
    g = grid.to(torch.float32)
    centred = g - g.mean(dim=(1, 2), keepdim=True)
    return per_tile(centred.norm(dim=-1), n)


def frame_seed(frame: Tensor, scale: int) -> int:
    """A 63-bit seed from the frame's float32 pixels and the scale index."""
    data = frame.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.sha256(data + scale.to_bytes(4, "little")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@register_tile_rule("random")
def random_rule(grid: Tensor, frames: Tensor, n: int, scale: int) -> Tensor:
    rows = [
        torch.rand(n * n, generator=torch.Generator().manual_seed(frame_seed(f, scale)))
        for f in frames
    ]
    return torch.stack(rows).to(grid.device)


@register_tile_rule("centre")
def centre_rule(grid: Tensor, frames: Tensor, n: int, scale: int) -> Tensor:
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5
    dist = (c.view(n, 1) ** 2 + c.view(1, n) ** 2).flatten()
    return (-dist).expand(grid.shape[0], -1).to(grid.device)


def select_tiles(scores: Tensor, k: int) -> Tensor:
    """``(B, T)`` scores -> ``(B, k)`` tile indices, best first, ties to the lower index, then
    sorted ascending (tile order)."""
    order = torch.sort(scores.to(torch.float32), dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=1).values
