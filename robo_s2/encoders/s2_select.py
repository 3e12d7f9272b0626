"""Scale-selective S² (``name: s2_select``): run only the salient high-resolution tiles.

PS3's idea (``../shared/papers/002_*``) on top of S²: the first scale runs in full; a tile rule
(:mod:`robo_s2.encoders.tile_rules`) scores every tile of each larger scale from that low-res pass
and only the best ``k`` tiles of the scale go through the backbone. Each selected tile's tokens
are put back at its place in the scale's token map; the other places are filled from the
bilinearly upsampled map of the scale below (itself filled the same way), and unselected tiles'
prefix (CLS) tokens are the lower scale's. The result has exactly S²'s shape — area-resized to the
first scale's grid, channels concatenated over scales — so pooling works unchanged, and with
every tile selected it *is* S² (:func:`robo_s2.encoders.s2.s2_forward`).

How many tiles: ``k`` (an int: the top scale; middle scales run in full; a list: one entry per
larger scale, ``null`` = all) or ``budget`` (tiles over all larger scales, shared in proportion to
their tile counts, at least one each). Rule and counts are part of the config, so of the
fingerprint that keys feature caches. ``rule: learned`` reads a fitted
:class:`robo_s2.encoders.tile_scorer.TileScorer` from ``scorer`` (a frozen submodule: its weights
are fingerprinted too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.encoders.cls_attention import ClsAttentionCapture, last_attention
from robo_s2.encoders.s2 import (
    S2Encoder,
    ScalePlan,
    _area_channels_last,
    _merge_channels_last,
    _resize,
    _split,
    s2_forward,
)
from robo_s2.encoders.tile_rules import (
    LowRes,
    TileRule,
    get_tile_rule,
    needs_cls_attention,
    select_tiles,
)
from robo_s2.errors import UserError

LEARNED = "learned"  # the fitted rule (robo_s2.encoders.tile_scorer), not a tile_rules function


def plan_keep(
    plans: Sequence[ScalePlan], k: int | Sequence[int | None] | None, budget: int | None
) -> list[int]:
    """Tiles to run at each scale after the first (checked; :class:`UserError` when impossible)."""
    tiles = [pl.num_split**2 for pl in plans[1:]]
    if not tiles:
        raise UserError("s2_select needs at least two scales, e.g. scales=[1, 2, 4]")
    if k is not None and budget is not None:
        raise UserError("give s2_select either k or budget, not both (set the other to null)")
    if budget is not None:
        if not len(tiles) <= int(budget) <= sum(tiles):
            raise UserError(
                f"s2_select budget={budget} tiles must lie in [{len(tiles)}, {sum(tiles)}] for "
                f"scales with {tiles} tiles; one tile per larger scale at least"
            )
        keep = [max(1, int(int(budget) * t / sum(tiles))) for t in tiles]
        keep[-1] = int(budget) - sum(keep[:-1])
        return keep
    if k is None or isinstance(k, int):
        ks: list[int | None] = [*([None] * (len(tiles) - 1)), k]
    else:
        ks = list(k)
    if len(ks) != len(tiles):
        raise UserError(
            f"s2_select k={list(ks)} has {len(ks)} entries but there are {len(tiles)} larger "
            "scales; give one per scale after the first (null = all tiles) or one int"
        )
    keep = []
    for n, want, plan in zip(tiles, ks, plans[1:], strict=True):
        want = n if want is None else int(want)
        if not 1 <= want <= n:
            side = plan.num_split
            raise UserError(
                f"s2_select k={want} at the {plan.size}px scale but it has {n} tiles "
                f"({side}x{side}); use 1 <= k <= {n}, or null for all"
            )
        keep.append(want)
    return keep


def _run(model: Callable[[Tensor], Tensor], batch: Tensor, per_pass: int | None) -> Tensor:
    if per_pass and batch.shape[0] > per_pass:
        return torch.cat([model(chunk) for chunk in batch.split(per_pass)], dim=0)
    return model(batch)


def _fill(prev: Tensor, prefix: Tensor, n: int, side: int) -> Tensor:
    """Lower scale's map upsampled to ``n*side`` and cut into tiles, prefix prepended:
    ``(n*n*B, P + side², C)`` in the wrapper's ``(nh nw b)`` tile order."""
    up = F.interpolate(
        prev.permute(0, 3, 1, 2).to(torch.float32), size=n * side, mode="bilinear",
        align_corners=False,
    )  # fmt: skip
    tiles = _split(up, n).flatten(2).transpose(1, 2).to(prev.dtype)
    return torch.cat([prefix.repeat(n * n, 1, 1).to(prev.dtype), tiles], dim=1)


def low_res_pass(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    plan: ScalePlan,
    num_prefix_token: int = 1,
    downsample: str | None = None,
    max_tiles_per_pass: int | None = None,
    attention: ClsAttentionCapture | None = None,
) -> tuple[LowRes, Tensor]:
    """The first scale's pass: what the rules see (:class:`LowRes`) and its prefix tokens."""
    b, p = x.shape[0], num_prefix_token
    first = s2_forward(
        model, x, img_sizes=[plan.size], max_split_size=plan.tile, num_prefix_token=p,
        base_size=plan.size, downsample=downsample, max_tiles_per_pass=max_tiles_per_pass,
    )  # fmt: skip
    side = int((first.shape[1] - p) ** 0.5)
    cls = None if attention is None else attention.grid(b, plan.num_split)
    return LowRes(first[:, p:].reshape(b, side, side, -1), x, cls), first[:, :p]


def s2_select_forward(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    plans: Sequence[ScalePlan],
    keep: Sequence[int],
    rule: TileRule,
    num_prefix_token: int = 1,
    downsample: str | None = None,
    max_tiles_per_pass: int | None = None,
    attention: ClsAttentionCapture | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Token map ``(B, P + h*w, C * scales)`` and, per larger scale, the ``(B, k)`` tile indices run.

    ``plans`` as :func:`robo_s2.encoders.s2.plan_scales` makes them for ``x`` (its first scale
    is the base), ``downsample`` as for :func:`s2_forward` (None: bicubic, the wrapper's way).
    ``attention``: an open capture on ``model``'s backbone, for rules that read CLS attention
    (closed after the first scale's pass).
    """
    b, p = x.shape[0], num_prefix_token
    low, first_prefix = low_res_pass(
        model, x, plans[0], p, downsample, max_tiles_per_pass, attention
    )
    grid, side0 = low.tokens, low.tokens.shape[1]
    frame = torch.arange(b, device=x.device).view(b, 1)
    chosen, rows, batches = [], [], []
    for i, (plan, k) in enumerate(zip(plans[1:], keep, strict=True), start=1):
        idx = select_tiles(rule(low, plan.num_split, i), k).to(x.device)
        chosen.append(idx)
        rows.append((idx * b + frame).flatten())
        batches.append(_split(_resize(x, plan.size, downsample), plan.num_split)[rows[-1]])
    same = len({t.shape[-1] for t in batches}) == 1
    if same:
        outs = _run(model, torch.cat(batches), max_tiles_per_pass).split(
            [t.shape[0] for t in batches]
        )
    else:
        outs = [_run(model, t, max_tiles_per_pass) for t in batches]
    prev, prefix = grid, first_prefix
    maps, prefixes = [grid], [prefix]
    for plan, row, out in zip(plans[1:], rows, outs, strict=True):
        full = _fill(prev, prefix, plan.num_split, int((out.shape[1] - p) ** 0.5)).to(out.dtype)
        full[row] = out
        prev = _merge_channels_last(full[:, p:], plan.num_split, b, "bnc")
        prefix = full[:, :p].reshape(plan.num_split**2, b, p, -1).mean(dim=0)
        maps.append(prev)
        prefixes.append(prefix)
    merged = torch.cat([_area_channels_last(m, side0) for m in maps], dim=-1)
    merged = merged.reshape(b, -1, merged.shape[-1])
    if p:
        merged = torch.cat([torch.cat(prefixes, dim=-1), merged], dim=1)
    return merged, chosen


class S2SelectEncoder(S2Encoder):
    """:class:`S2Encoder` that runs only ``keep[i]`` tiles of each larger scale (see module); every
    other option (``s2_kwargs``) means what it means for :class:`S2Encoder`. ``keep``: the tiles
    per larger scale as the encoder's config records them, checked against k/budget (so a
    checkpoint's config rebuilds the encoder it was trained with). Three scales by default: the
    selection has a top scale to choose from and a middle one to run whole."""

    def __init__(
        self,
        backbone: Any = "vit_t",
        scales: Sequence[float] | None = (1, 2, 4),
        rule: str = "salient",
        k: int | Sequence[int | None] | None = None,
        budget: int | None = None,
        scorer: str | None = None,
        keep: Sequence[int] | None = None,
        **s2_kwargs: Any,
    ) -> None:
        super().__init__(backbone, scales=scales, **s2_kwargs)
        if self.resize_output_to_idx != 0:
            raise UserError(
                "s2_select merges onto the first scale's grid; set resize_output_to_idx=0"
            )
        self.rule_name = str(rule)
        self.keep = plan_keep(self.plans, k, budget)
        if keep is not None and [int(n) for n in keep] != self.keep:
            raise UserError(
                f"s2_select keep={list(keep)} (recorded tiles per larger scale) does not match "
                f"k={k}, budget={budget}, which give {self.keep}; drop keep or fix k/budget"
            )
        self.rule = self._make_rule(scorer)
        cfg = self.config
        cfg.pop("name")
        cfg.update(rule=self.rule_name, k=k if not isinstance(k, Sequence) else list(k))
        cfg.update(budget=budget, keep=list(self.keep), scorer=scorer)
        self.set_config("s2_select", **cfg)

    def _make_rule(self, scorer: str | None) -> TileRule:
        if self.rule_name != LEARNED:
            if scorer is not None:
                raise UserError(
                    f"scorer={scorer} is read only by rule=learned (rule is {self.rule_name}); "
                    "set rule=learned or scorer=null"
                )
            rule = get_tile_rule(self.rule_name)
            if needs_cls_attention(self.rule_name):
                last_attention(self.backbone)  # a one-line error now, not at the first frame
            return rule
        if scorer is None:
            raise UserError(
                "rule=learned needs scorer=<tile_scorer.safetensors>; fit one with robo-s2 "
                "analyze scorer store=<demos> source=<this encoder config>"
            )
        from robo_s2.encoders.tile_scorer import load_tile_scorer

        self.scorer = load_tile_scorer(
            scorer, self.backbone.fingerprint(), self.backbone.width, self.splits
        )
        return self.scorer.rule

    @property
    def splits(self) -> list[int]:
        """Tiles per side of every scale after the first."""
        return [pl.num_split for pl in self.plans[1:]]

    def _downsample_mode(self) -> str | None:
        return self.downsample if self.source == "native" else None

    @contextlib.contextmanager
    def _capture(self, wanted: bool) -> Iterator[ClsAttentionCapture | None]:
        capture = ClsAttentionCapture(self.backbone) if wanted else None
        try:
            yield capture
        finally:
            if capture is not None:
                capture.close()

    @torch.no_grad()
    def scale_pass(
        self, images: Tensor, cls_attention: bool = False
    ) -> tuple[LowRes, list[Tensor]]:
        """The first scale's pass as the rules see it (with the CLS attention when asked) and
        every scale's true patch-token map, channels last ``(B, g, g, C)`` (all tiles run, as in
        S²): what the learned rule's targets are computed from."""
        x = self.prepare(images)
        p, tiles_per_pass = self.num_prefix_tokens, self._tiles_per_pass(x.device)
        with self._capture(cls_attention) as capture:
            low, _ = low_res_pass(
                self.backbone.pixel_tokens, x, self.plans[0], p, self._downsample_mode(),
                tiles_per_pass, capture,
            )  # fmt: skip
        maps = [low.tokens]
        for plan in self.plans[1:]:
            out = s2_forward(
                self.backbone.pixel_tokens, x, img_sizes=[plan.size], max_split_size=plan.tile,
                num_prefix_token=p, base_size=plan.size, downsample=self._downsample_mode(),
                max_tiles_per_pass=tiles_per_pass,
            )[:, p:]  # fmt: skip
            side = int(out.shape[1] ** 0.5)
            maps.append(out.reshape(out.shape[0], side, side, -1))
        return low, maps

    def select_tokens(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Token map and the ``(B, k)`` tile indices run at each larger scale."""
        x = self.prepare(images)
        with self._capture(needs_cls_attention(self.rule_name)) as capture:
            return s2_select_forward(
                self.backbone.pixel_tokens,
                x,
                self.plans,
                self.keep,
                self.rule,
                num_prefix_token=self.num_prefix_tokens,
                downsample=self._downsample_mode(),
                max_tiles_per_pass=self._tiles_per_pass(x.device),
                attention=capture,
            )

    def forward_tokens(self, images: Tensor) -> Tensor:
        return self.select_tokens(images)[0]

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        tiles = int(batch) * (self.plans[0].num_split ** 2 + sum(self.keep))
        per_pass = self._tiles_per_pass(device or torch.device("cpu"))
        return (min(tiles, per_pass) if per_pass else tiles) * self.backbone.tokens_per_pass(1)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(rule=self.rule_name, keep=list(self.keep))
        return d
