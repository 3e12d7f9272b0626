"""One vector per time step from a token map: ``cls``, ``mean``, ``cls+mean``, ``grid:k``.

A token map is ``(B, P + h*w, C)``: ``P`` prefix tokens (CLS, registers; for S² each prefix token is
the concatenation over scales) followed by the row-major ``h x w`` patch-token grid.

* ``cls``      — the first prefix token, ``C`` wide.
* ``mean``     — the mean of the patch tokens, ``C`` wide.
* ``cls+mean`` — both, concatenated, ``2C`` wide.
* ``grid:k``   — the patch-token map adaptive-average-pooled to ``k x k`` cells, flattened
  cell-major with channels last, ``k*k*C`` wide: ``feature.view(B, k*k, C)`` gives one token per
  cell in row-major order, which a policy can attend over (``feature_shape`` says so).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.errors import UserError

POOLING_CHOICES = ("cls", "mean", "cls+mean", "grid:k")
_GRID = re.compile(r"^grid:(\d+)$")


@dataclass(frozen=True)
class Pooling:
    """A parsed pooling spec; call it on a token map."""

    kind: str  # "cls" | "mean" | "cls+mean" | "grid"
    k: int = 0

    @classmethod
    def parse(cls, spec: str | Pooling) -> Pooling:
        if isinstance(spec, Pooling):
            return spec
        s = str(spec).strip().lower().replace(" ", "")
        if s in ("cls", "mean", "cls+mean"):
            return cls(s)
        m = _GRID.match(s)
        if m and int(m.group(1)) >= 1:
            return cls("grid", int(m.group(1)))
        raise UserError(f"unknown pooling '{spec}'; choose one of: {', '.join(POOLING_CHOICES)}")

    def __str__(self) -> str:
        return f"grid:{self.k}" if self.kind == "grid" else self.kind

    @property
    def needs_prefix(self) -> bool:
        return self.kind in ("cls", "cls+mean")

    def check(
        self, num_prefix_tokens: int, grid_size: int | None = None, what: str = "encoder"
    ) -> None:
        """UserError when this pooling cannot apply to ``what``'s token map."""
        if self.needs_prefix and num_prefix_tokens < 1:
            raise UserError(
                f"pooling '{self}' needs a CLS token but {what} has none; "
                "use pooling=mean or grid:k"
            )
        if self.kind == "grid" and grid_size is not None and self.k > grid_size:
            raise UserError(
                f"pooling '{self}' asks for a {self.k}x{self.k} grid but {what} has only a "
                f"{grid_size}x{grid_size} token map; use k <= {grid_size}"
            )

    def out_dim(self, width: int) -> int:
        """Width of the pooled vector for tokens ``width`` channels wide."""
        return self.num_tokens * width

    @property
    def num_tokens(self) -> int:
        """How many ``C``-wide tokens the pooled vector is made of (``feature_shape[0]``)."""
        return {"cls": 1, "mean": 1, "cls+mean": 2}.get(self.kind, self.k * self.k)

    def __call__(self, tokens: Tensor, num_prefix_tokens: int) -> Tensor:
        return pool_tokens(tokens, self, num_prefix_tokens)


def grid_side(num_patch_tokens: int) -> int:
    side = math.isqrt(num_patch_tokens)
    if side * side != num_patch_tokens:
        raise UserError(f"{num_patch_tokens} patch tokens do not form a square grid")
    return side


def pool_tokens(tokens: Tensor, pooling: str | Pooling, num_prefix_tokens: int) -> Tensor:
    """``(B, P + h*w, C)`` token map -> ``(B, D)`` per-time-step vector (see module doc)."""
    p = Pooling.parse(pooling)
    if tokens.dim() != 3:
        raise ValueError(f"expected a (B, N, C) token map, got shape {tuple(tokens.shape)}")
    b, n, c = tokens.shape
    patches = tokens[:, num_prefix_tokens:]
    if p.kind == "grid" or p.kind in ("mean", "cls+mean"):
        if patches.shape[1] == 0:
            raise UserError(f"pooling '{p}' needs patch tokens but the token map has none")
    p.check(num_prefix_tokens)
    if p.kind == "cls":
        return tokens[:, 0]
    if p.kind == "mean":
        return patches.mean(dim=1)
    if p.kind == "cls+mean":
        return torch.cat([tokens[:, 0], patches.mean(dim=1)], dim=-1)
    side = grid_side(patches.shape[1])
    p.check(num_prefix_tokens, side)
    fmap = patches.transpose(1, 2).reshape(b, c, side, side)
    if side % p.k == 0:
        f = side // p.k
        pooled = fmap.reshape(b, c, p.k, f, p.k, f).mean(dim=(3, 5))
    else:
        pooled = F.adaptive_avg_pool2d(fmap, p.k)
    return pooled.permute(0, 2, 3, 1).reshape(b, p.k * p.k * c)
