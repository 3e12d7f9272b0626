"""The learned tile rule of ``s2_select``: a tiny head that predicts, from the low-res pass, where
the high-resolution scales would change S²'s features most.

Target (self-supervised, :func:`change_targets`): for every tile of each larger scale, the mean
L2 distance between that scale's true patch-token map (every tile run, as S² does) and the
bilinearly upsampled map of the scale below — exactly the error ``s2_select`` makes by filling an
unselected tile from the lower scale. The head (:class:`TileScorer`: LayerNorm, linear, GELU,
3x3 conv, GELU, one 1x1 output channel per larger scale) reads the first scale's patch tokens
``(B, h, w, C)``; a tile's score is its mean over the tokens the tile covers.

``robo-s2 analyze scorer target=objects`` fits the same head to the simulator's labels instead
(the tiles holding the cube and the gripper). It is fitted by
:func:`robo_s2.pretraining.tile_scorer.fit_tile_scorer` (``robo-s2 analyze scorer``) and saved as one safetensors file whose metadata (JSON) names the backbone fingerprint
and tilings it was fitted for; ``s2_select`` with ``rule: learned, scorer: <file>`` loads it as a
frozen submodule, so its weights are part of the encoder's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from robo_s2.core.io import parse_json
from robo_s2.core.schema import validated
from robo_s2.encoders.tile_rules import LowRes, per_tile
from robo_s2.errors import UserError

FORMAT = "robo_s2.tile_scorer/1"
METADATA_KEY = "robo_s2_tile_scorer"


class TileScorer(nn.Module):
    """Per-tile scores of every larger scale from the first scale's token map."""

    def __init__(self, width: int, splits: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.width, self.splits, self.hidden = int(width), [int(n) for n in splits], int(hidden)
        self.norm = nn.LayerNorm(self.width)
        self.proj = nn.Linear(self.width, self.hidden)
        self.mix = nn.Conv2d(self.hidden, self.hidden, 3, padding=1)
        self.out = nn.Conv2d(self.hidden, len(self.splits), 1)

    def token_scores(self, grid: Tensor) -> Tensor:
        """``(B, h, w, C)`` -> ``(B, scales, h, w)``."""
        x = F.gelu(self.proj(self.norm(grid.to(self.proj.weight.dtype))))
        x = F.gelu(self.mix(x.permute(0, 3, 1, 2)))
        return self.out(x)

    def forward(self, grid: Tensor) -> list[Tensor]:
        """Per larger scale, ``(B, n*n)`` tile scores (row-major)."""
        maps = self.token_scores(grid)
        return [per_tile(maps[:, i], n) for i, n in enumerate(self.splits)]

    def rule(self, low: LowRes, n: int, scale: int) -> Tensor:
        """The :mod:`robo_s2.encoders.tile_rules` signature (``scale`` counts from 1)."""
        if not 1 <= scale <= len(self.splits) or self.splits[scale - 1] != n:
            raise UserError(
                f"the tile scorer was fitted for {self.splits} tiles per side at the larger "
                f"scales, not {n} at scale {scale}; fit one for these scales (robo-s2 analyze "
                "scorer)"
            )
        return per_tile(self.token_scores(low.tokens)[:, scale - 1], n)

    def architecture(self) -> dict[str, Any]:
        return {"width": self.width, "splits": list(self.splits), "hidden": self.hidden}


def change_targets(maps: Sequence[Tensor], splits: Sequence[int]) -> list[Tensor]:
    """Per larger scale ``i``, ``(B, n_i*n_i)``: the mean over each tile of
    ``|| map_i - upsample(map_{i-1}) ||`` (channels-last ``(B, g, g, C)`` maps, every scale's)."""
    targets = []
    for lower, upper, n in zip(maps[:-1], maps[1:], splits, strict=True):
        up = F.interpolate(
            lower.permute(0, 3, 1, 2).to(torch.float32), size=upper.shape[1], mode="bilinear",
            align_corners=False,
        ).permute(0, 2, 3, 1)  # fmt: skip
        targets.append(per_tile((upper.to(torch.float32) - up).norm(dim=-1), n))
    return targets


def save_tile_scorer(scorer: TileScorer, path: str | Path, info: dict[str, Any]) -> Path:
    """``scorer``'s weights and ``info`` (must hold ``backbone_fingerprint``) as safetensors."""
    from robo_s2.safe_io import write_safetensors

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, **scorer.architecture(), **info}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in
               scorer.state_dict().items()}  # fmt: skip
    return write_safetensors(p, tensors, {METADATA_KEY: json.dumps(meta, sort_keys=True)})


def read_scorer_metadata(path: str | Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(
            f"tile scorer {p} does not exist; fit one with robo-s2 analyze scorer store=... "
            "source=<s2_select encoder> (it writes tile_scorer.safetensors)"
        )
    try:
        with safe_open(str(p), "pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"tile scorer {p} is truncated or corrupt ({exc}); fit it again") from None
    fix = "give the tile_scorer.safetensors that robo-s2 analyze scorer wrote, or fit it again"
    meta = parse_json(raw, f"{p}'s tile scorer metadata", fix) if raw else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a robo-s2 tile scorer (no {FORMAT} metadata); {fix}")
    validated(ScorerMetadata, meta, f"{p}'s tile scorer metadata is corrupt", fix)
    return meta


Size = Annotated[int, Field(ge=1, le=2**20)]


class ScorerMetadata(BaseModel):
    """What :func:`load_tile_scorer` reads of a scorer file's metadata (other keys pass)."""

    model_config = ConfigDict(strict=True, extra="allow")
    format: str
    backbone_fingerprint: str
    width: Size
    splits: list[Size] = Field(min_length=1, max_length=16)
    hidden: Size


def load_tile_scorer(
    path: str | Path, backbone_fingerprint: str, width: int, splits: Sequence[int]
) -> TileScorer:
    """The scorer in ``path``, checked against the encoder it is loaded into (one-line errors)."""
    from robo_s2.safe_io import build_within_limits, read_safetensors

    meta = read_scorer_metadata(path)
    if meta.get("backbone_fingerprint") != backbone_fingerprint:
        raise UserError(
            f"tile scorer {path} was fitted on a backbone with fingerprint "
            f"{str(meta.get('backbone_fingerprint'))[:12]}, this encoder's is "
            f"{backbone_fingerprint[:12]} (other weights or config); fit it again for this "
            "encoder (robo-s2 analyze scorer)"
        )
    if int(meta["width"]) != int(width) or list(meta["splits"]) != [int(n) for n in splits]:
        raise UserError(
            f"tile scorer {path} is for width {meta['width']} and {meta['splits']} tiles per side, "
            f"this encoder has width {width} and {list(splits)}; fit one for these scales"
        )
    hidden = int(meta["hidden"])
    scorer = build_within_limits(
        lambda: TileScorer(int(meta["width"]), meta["splits"], hidden), f"tile scorer {path}"
    )
    state = read_safetensors(path, "tile scorer")
    try:
        scorer.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise UserError(f"tile scorer {path} does not fit its own metadata ({first})") from None
    return scorer.eval().requires_grad_(False)
