"""Tile-selection rules for ``s2_select``: which high-resolution tiles are worth running.

A rule scores the ``n x n`` tiles of one larger scale from the low-resolution pass (PS3's
bottom-up, prompt-free selection): ``rule(low, n, scale) -> (B, n*n)`` scores, where ``low``
(:class:`LowRes`) holds the first scale's channels-last patch-token map ``(B, h, w, C)``, the
encoder's prepared input ``(B, 3, H, W)`` and, for rules registered with
``needs_cls_attention=True``, the last block's CLS attention over those patches. Higher scores are
run first; ties go to the lower tile index, so selection is deterministic for a given frame.
Register more with ``@register_tile_rule("name")``.

* ``norm``    — mean L2 norm of the low-res patch tokens covering the tile.
* ``salient`` — mean distance of those tokens from the frame's mean token (what stands out).
* ``cls_attention`` — the CLS token's attention mass on the tile's patches in the backbone's last
  block (averaged over heads): what the model itself attends to.
* ``random``  — seeded by a hash of the frame's pixels and the scale: random, but the same frame
  always gets the same tiles (feature caches stay valid).
* ``centre``  — tiles nearest the image centre.

``learned`` is not a function here: it is a fitted head (:mod:`robo_s2.encoders.tile_scorer`)
that ``s2_select`` loads from its ``scorer`` file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.errors import UserError


@dataclass(frozen=True)
class LowRes:
    """What a rule sees of the first scale's pass."""

    tokens: Tensor  # (B, h, w, C) channels-last patch tokens
    frames: Tensor  # (B, 3, H, W) the encoder's prepared input
    cls_attention: Tensor | None = None  # (B, h, w); only for rules that need it


TileRule = Callable[[LowRes, int, int], Tensor]
_RULES: dict[str, TileRule] = {}
_NEEDS_CLS_ATTENTION: set[str] = set()


def register_tile_rule(
    name: str, needs_cls_attention: bool = False
) -> Callable[[TileRule], TileRule]:
    """Decorator: register ``rule(low, n, scale) -> (B, n*n)`` under ``name``."""

    def decorator(rule: TileRule) -> TileRule:
        _RULES[name] = rule
        if needs_cls_attention:
            _NEEDS_CLS_ATTENTION.add(name)
        return rule

    return decorator


def needs_cls_attention(name: str) -> bool:
    return name in _NEEDS_CLS_ATTENTION


def list_tile_rules() -> list[str]:
    return sorted(_RULES)


def get_tile_rule(name: str) -> TileRule:
    if name not in _RULES:
        raise UserError(
            f"unknown s2_select rule {name!r}; choose one of {', '.join(list_tile_rules())}, "
            "or learned with scorer=<file from robo-s2 analyze scorer> (e.g. rule=salient)"
        )
    return _RULES[name]


def per_tile(value: Tensor, n: int) -> Tensor:
    """``(B, h, w)`` map -> ``(B, n*n)`` tile means (row-major), any ``h`` against ``n``."""
    v = value.to(torch.float32).unsqueeze(1)
    pooled = F.adaptive_avg_pool2d(v, n) if v.shape[-1] >= n else F.interpolate(v, size=n)
    return pooled.flatten(1)


@register_tile_rule("norm")
def norm_rule(low: LowRes, n: int, scale: int) -> Tensor:
    return per_tile(low.tokens.to(torch.float32).norm(dim=-1), n)


@register_tile_rule("salient")
def salient_rule(low: LowRes, n: int, scale: int) -> Tensor:
    g = low.tokens.to(torch.float32)
    centred = g - g.mean(dim=(1, 2), keepdim=True)
    return per_tile(centred.norm(dim=-1), n)


@register_tile_rule("cls_attention", needs_cls_attention=True)
def cls_attention_rule(low: LowRes, n: int, scale: int) -> Tensor:
    if low.cls_attention is None:
        raise UserError("rule=cls_attention needs the low-res pass' CLS attention (none given)")
    return per_tile(low.cls_attention, n)


def frame_seed(frame: Tensor, scale: int) -> int:
    """A 63-bit seed from the frame's float32 pixels and the scale index."""
    data = frame.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.sha256(data + scale.to_bytes(4, "little")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@register_tile_rule("random")
def random_rule(low: LowRes, n: int, scale: int) -> Tensor:
    rows = [
        torch.rand(n * n, generator=torch.Generator().manual_seed(frame_seed(f, scale)))
        for f in low.frames
    ]
    return torch.stack(rows).to(low.tokens.device)


@register_tile_rule("centre")
def centre_rule(low: LowRes, n: int, scale: int) -> Tensor:
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5
    dist = (c.view(n, 1) ** 2 + c.view(1, n) ** 2).flatten()
    return (-dist).expand(low.tokens.shape[0], -1).to(low.tokens.device)


def select_tiles(scores: Tensor, k: int) -> Tensor:
    """``(B, T)`` scores -> ``(B, k)`` tile indices, best first, ties to the lower index, then
    sorted ascending (tile order)."""
    order = torch.sort(scores.to(torch.float32), dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=1).values
