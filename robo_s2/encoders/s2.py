"""S² ("Scaling on Scales"): one frozen backbone run over several image scales (``name: s2``).

:func:`s2_forward` computes exactly what the official wrapper ``s2wrapper.forward`` computes —
resize the image to each scale (bicubic), split each scale into base-size tiles, run the model,
merge the tiles back into one map per scale, area-resize every scale's map to the size of the map
of scale ``resize_output_to_idx``, and concatenate the scales along channels; prefix (CLS) tokens
are averaged over a scale's tiles and concatenated over scales — but faster:

* all tiles of all scales go through the model as ONE batch (one per distinct tile size when
  scales below 1 make smaller tiles), not one pass per scale; ``max_tiles_per_pass`` may cut
  that batch into passes of a few tiles, which is faster on CPUs (cache-sized GEMMs) and never
  changes the result;
* a scale whose size equals the input size is not resized (bicubic to the same size is the identity,
  so this changes nothing but the time);
* tile split/merge and the area pooling are reshapes and means on the channels-last token map;
* ``base_size`` + ``downsample`` let the input be the *native* high-resolution render (e.g. 448²)
  from which the smaller scales are downsized, instead of upsampling a 224² image (the paper
  upsamples only to compare fairly with bigger models; a robot has the real pixels).

:class:`S2Encoder` wraps any :class:`~robo_s2.encoders.backbone.TokenEncoder` (timm ViT, MVP) and
pools the merged token map to one vector per time step (``cls`` is then the concatenation of the
per-scale CLS tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robo_s2.encoders.backbone import TokenEncoder
from robo_s2.encoders.base import VisionEncoder
from robo_s2.encoders.pooling import Pooling
from robo_s2.encoders.registry import create_encoder
from robo_s2.errors import UserError

SOURCES = ("upsample", "native")
# ViT-Ti/16 on one CPU thread, ms per 224² tile by tiles per pass: 1: 29.5, 2: 26.0, 4: 23.4,
# 8: 23.5, 40: 27.5 — big batches fall out of cache; GPUs want the single large batch instead.
CPU_TILES_PER_PASS = 4
DOWNSAMPLE_MODES = ("area", "bicubic", "bilinear")


@dataclass(frozen=True)
class ScalePlan:
    size: int  # side of the resized image for this scale
    num_split: int  # tiles per side
    tile: int  # side of one tile (size // num_split)


def plan_scales(
    input_size: int,
    scales: Sequence[float] | None = None,
    img_sizes: Sequence[int] | None = None,
    max_split_size: int | None = None,
    base_size: int | None = None,
    patch_size: int | None = None,
) -> list[ScalePlan]:
    """Per-scale image size, tiles per side and tile size, as ``s2wrapper.forward`` computes them.

    ``base_size`` is the size scale 1 stands for (default: the input size, the wrapper's meaning).
    Raises :class:`UserError` for scales that do not tile evenly and tiles not divisible by
    ``patch_size``.
    """
    if scales is None and img_sizes is None:
        raise UserError("S² needs scales (e.g. [1, 2]) or img_sizes (e.g. [224, 448])")
    base = int(base_size or input_size)
    if img_sizes is not None:
        sizes = [int(s) for s in img_sizes]
    else:
        assert scales is not None  # one of the two is given (checked above)
        if any(float(s) <= 0 for s in scales):
            raise UserError(f"S² scales must be positive, got {list(scales)}")
        sizes = [int(base * float(s)) for s in scales]
    if not sizes:
        raise UserError("S² needs at least one scale")
    if any(s < 1 for s in sizes):
        raise UserError(f"S² scales give empty images: sizes {sizes} from base {base}")
    split = int(max_split_size or base)
    plans = []
    for size in sizes:
        n = math.ceil(size / split)
        if size % n:
            raise UserError(
                f"S² scale of size {size}px does not tile evenly into {n}x{n} tiles of at most "
                f"{split}px; choose scales whose sizes are multiples of {split} "
                f"(or at most {split})"
            )
        tile = size // n
        if patch_size and tile % patch_size:
            raise UserError(
                f"S² tile size {tile}px (scale size {size}px) is not divisible by the patch size "
                f"{patch_size}; choose scales whose tiles are multiples of {patch_size}px"
            )
        plans.append(ScalePlan(size, n, tile))
    return plans


def _resize(x: Tensor, size: int, downsample: str | None) -> Tensor:
    in_size = x.shape[-1]
    if size == in_size:
        return x  # bicubic to the same size is the identity
    if size < in_size and downsample is not None:
        if downsample == "area":
            if in_size % size == 0:
                f = in_size // size
                return F.avg_pool2d(x.to(torch.float32), f).to(x.dtype)
            return F.interpolate(x.to(torch.float32), size=size, mode="area").to(x.dtype)
        return F.interpolate(
            x.to(torch.float32), size=size, mode=downsample, antialias=True, align_corners=False
        ).to(x.dtype)
    return F.interpolate(x.to(torch.float32), size=size, mode="bicubic").to(x.dtype)


def _split(x: Tensor, n: int) -> Tensor:
    """``(b,c,n*t,n*t)`` -> ``(n*n*b, c, t, t)`` in the wrapper's ``(nh nw b)`` order."""
    if n == 1:
        return x
    b, c, s, _ = x.shape
    t = s // n
    return x.reshape(b, c, n, t, n, t).permute(2, 4, 0, 1, 3, 5).reshape(n * n * b, c, t, t)


def _merge_channels_last(out: Tensor, n: int, b: int, output_shape: str) -> Tensor:
    """Model output of one scale's tiles -> merged ``(b, n*h, n*w, C)`` map (channels last)."""
    if output_shape == "bnc":
        nb, hw, c = out.shape
        h = int(hw**0.5)
        if h * h != hw:
            raise UserError(f"S² needs a square patch-token grid; the model returned {hw} tokens")
        return out.reshape(n, n, b, h, h, c).permute(2, 0, 3, 1, 4, 5).reshape(b, n * h, n * h, c)
    nb, c, h, w = out.shape
    return out.reshape(n, n, b, c, h, w).permute(2, 0, 4, 1, 5, 3).reshape(b, n * h, n * w, c)


def _area_channels_last(x: Tensor, size: int) -> Tensor:
    """``F.interpolate(mode='area')`` of a channels-last map, in float32 like the wrapper."""
    b, h, w, c = x.shape
    if h == size and w == size:
        return x
    if h % size == 0 and w % size == 0:
        fh, fw = h // size, w // size
        y = x.to(torch.float32).reshape(b, size, fh, size, fw, c).mean(dim=(2, 4))
        return y.to(x.dtype)
    y = F.interpolate(x.permute(0, 3, 1, 2).to(torch.float32), size=size, mode="area")
    return y.permute(0, 2, 3, 1).to(x.dtype)


def s2_forward(
    model: Callable[[Tensor], Tensor],
    input: Tensor,  # noqa: A002 - the wrapper's argument name
    scales: Sequence[float] | None = None,
    img_sizes: Sequence[int] | None = None,
    max_split_size: int | None = None,
    resize_output_to_idx: int = 0,
    num_prefix_token: int = 0,
    output_shape: str = "bnc",
    *,
    base_size: int | None = None,
    downsample: str | None = None,
    max_tiles_per_pass: int | None = None,
) -> Tensor:
    """``s2wrapper.forward`` semantics, one batched forward pass (see the module docstring).

    The first eight arguments mean what they mean for ``s2wrapper.forward``. ``base_size``
    (default: the input size) is the size that scale 1 stands for; with a native high-resolution
    input pass ``base_size=224`` and ``downsample`` (``area``, ``bicubic`` or ``bilinear``,
    antialiased) for how the smaller scales are made from it. ``downsample=None`` resizes every
    scale bicubically, as the wrapper does. ``max_tiles_per_pass`` splits the one batch of all
    tiles into passes of at most that many tiles (None: a single pass); on CPUs, cache-sized
    passes (~8 ViT tiles) run faster than one huge batch.
    """
    if input.dim() != 4:
        raise UserError(f"S² input must be (B,C,H,W), got shape {tuple(input.shape)}")
    if input.shape[2] != input.shape[3]:
        raise UserError(f"S² supports square images only, got {input.shape[2]}x{input.shape[3]}")
    if output_shape not in ("bnc", "bchw"):
        raise UserError(f"output_shape must be 'bnc' or 'bchw', got {output_shape!r}")
    if output_shape == "bchw" and num_prefix_token:
        raise UserError("a 'bchw' (ConvNet) output has no prefix tokens; set num_prefix_token=0")
    if downsample is not None and downsample not in DOWNSAMPLE_MODES:
        raise UserError(
            f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got {downsample!r}"
        )
    b = input.shape[0]
    plans = plan_scales(input.shape[-1], scales, img_sizes, max_split_size, base_size)
    if not -len(plans) <= resize_output_to_idx < len(plans):
        raise UserError(
            f"resize_output_to_idx={resize_output_to_idx} but there are {len(plans)} scales"
        )

    # all tiles of all scales, grouped by tile size (one group unless some scale is below 1)
    groups: dict[int, list[tuple[int, Tensor]]] = {}
    for i, plan in enumerate(plans):
        tiles = _split(_resize(input, plan.size, downsample), plan.num_split)
        groups.setdefault(plan.tile, []).append((i, tiles))
    outs: list[Tensor | None] = [None] * len(plans)
    for items in groups.values():
        batch = items[0][1] if len(items) == 1 else torch.cat([t for _, t in items], dim=0)
        if max_tiles_per_pass and batch.shape[0] > max_tiles_per_pass:
            out = torch.cat([model(chunk) for chunk in batch.split(max_tiles_per_pass)], dim=0)
        else:
            out = model(batch)
        for (i, _), o in zip(items, out.split([t.shape[0] for _, t in items], dim=0), strict=True):
            outs[i] = o

    p = num_prefix_token
    done = [o for o in outs if o is not None]
    assert len(done) == len(plans)  # every scale's tiles were in a pass
    maps = [
        _merge_channels_last(o[:, p:] if p else o, plan.num_split, b, output_shape)
        for o, plan in zip(done, plans, strict=True)
    ]
    size = maps[resize_output_to_idx].shape[1]
    merged = torch.cat([_area_channels_last(m, size) for m in maps], dim=-1)
    if output_shape == "bchw":
        return merged.permute(0, 3, 1, 2)
    merged = merged.reshape(b, -1, merged.shape[-1])
    if p:
        prefix = [
            o[:, :p].reshape(plan.num_split**2, b, p, o.shape[-1]).mean(dim=0)
            for o, plan in zip(done, plans, strict=True)
        ]
        merged = torch.cat([torch.cat(prefix, dim=-1), merged], dim=1)
    return merged


class S2Encoder(VisionEncoder):
    """A frozen backbone over several scales; token map and pooled per-time-step vector.

    ``backbone``: an encoder config name or mapping (e.g. ``{name: timm, model: ...}``), or a
    built token encoder; ``weights``, when given, goes to the backbone (``encoder.weights=
    /path/mvp.pth`` works the same for ``mvp_b`` and ``mvp_b_s2``). ``img_sizes``, when given,
    replace ``scales``.

    ``source: upsample`` takes the base-size render and makes the larger scales by bicubic
    upsampling (the paper's protocol); ``source: native`` takes the render at the largest scale's
    size (e.g. 448²) and makes the smaller scales by ``downsample`` (area by default).

    ``tiles_per_pass``: all tiles of all scales form one batch; ``auto`` runs it in one pass on
    CUDA and in passes of 4 tiles on CPU (faster there: cache-sized GEMMs), an int caps every
    pass, ``null`` forces one pass. It changes speed only, never the result.
    """

    backbone: Any  # a token encoder (TimmEncoder, MVPEncoder): duck-typed, nn.Module attributes
    num_prefix_tokens: int
    width: int

    def __init__(
        self,
        backbone: VisionEncoder | str | Mapping[str, Any] = "vit_t",
        scales: Sequence[float] | None = (1, 2),
        img_sizes: Sequence[int] | None = None,
        source: str = "upsample",
        pooling: str = "cls",
        max_split_size: int | None = None,
        resize_output_to_idx: int = 0,
        downsample: str = "area",
        weights: str | None = None,
        tiles_per_pass: int | str | None = "auto",
    ) -> None:
        super().__init__()
        built = _backbone(backbone, weights)
        if img_sizes is not None:  # explicit sizes replace the (default) scales
            scales = None
        self._check_args(built, source, downsample, scales, img_sizes, tiles_per_pass)
        self.tiles_per_pass = tiles_per_pass
        self.backbone = built
        self.source = source
        self.downsample = downsample
        self.base_size = int(built.image_size)
        self.max_split_size = int(max_split_size or self.base_size)
        self.plans = self._plan_scales(scales, img_sizes, resize_output_to_idx)
        self.img_sizes = [pl.size for pl in self.plans]
        self.scales = [pl.size / self.base_size for pl in self.plans]
        self.resize_output_to_idx = int(resize_output_to_idx)
        self.image_size = self.base_size if source == "upsample" else max(self.img_sizes)
        self.num_prefix_tokens = self.backbone.num_prefix_tokens
        self.width = self.backbone.width * len(self.plans)
        self.patch_size = built.patch_size
        self._set_pooling(pooling)
        self.trainable = bool(built.trainable)
        cfg: dict[str, Any] = dict(
            backbone=built.config,
            scales=list(scales) if scales is not None else None,
            img_sizes=list(img_sizes) if img_sizes is not None else None,
            source=source,
            pooling=str(self.pooling),
            max_split_size=max_split_size,
            resize_output_to_idx=self.resize_output_to_idx,
            downsample=downsample,
        )
        self.set_config("s2", **cfg)
        if not self.trainable:
            self.freeze()

    @staticmethod
    def _check_args(
        backbone: VisionEncoder,
        source: str,
        downsample: str,
        scales: Sequence[float] | None,
        img_sizes: Sequence[int] | None,
        tiles_per_pass: int | str | None,
    ) -> None:
        if not isinstance(backbone, TokenEncoder):
            raise UserError(
                "S² needs a token-map backbone (timm or mvp encoder), got "
                f"{type(backbone).__name__}"
            )
        if source not in SOURCES:
            raise UserError(f"S² source must be one of {', '.join(SOURCES)}, got {source!r}")
        if downsample not in DOWNSAMPLE_MODES:
            raise UserError(
                f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got {downsample!r}"
            )
        if not (
            tiles_per_pass in (None, "auto")
            or (isinstance(tiles_per_pass, int) and tiles_per_pass > 0)
        ):
            raise UserError(
                f"tiles_per_pass must be a positive int, auto or null, got {tiles_per_pass!r}"
            )

    def _plan_scales(
        self,
        scales: Sequence[float] | None,
        img_sizes: Sequence[int] | None,
        resize_output_to_idx: int,
    ) -> list[ScalePlan]:
        """The scale plans, checked against what the backbone can run."""
        backbone = self.backbone
        plans = plan_scales(
            self.base_size,
            scales,
            img_sizes,
            self.max_split_size,
            self.base_size,
            backbone.patch_size,
        )
        for plan in plans:
            if plan.tile != backbone.image_size and not backbone.dynamic_size:
                raise UserError(
                    f"S² scale of size {plan.size}px makes {plan.tile}px tiles but the backbone "
                    f"runs on {backbone.image_size}px inputs only; use scales that are whole "
                    "multiples of 1 (or a backbone with dynamic_img_size=true)"
                )
        if not -len(plans) <= resize_output_to_idx < len(plans):
            raise UserError(
                f"resize_output_to_idx={resize_output_to_idx} but there are {len(plans)} scales"
            )
        return plans

    def _set_pooling(self, pooling: str) -> None:
        """``pooling`` (checked against the output grid) and ``feature_dim``."""
        self.pooling = Pooling.parse(pooling)
        out_tiles = self.plans[self.resize_output_to_idx]
        patch = self.backbone.patch_size
        grid = out_tiles.size // patch if patch > 1 else None
        self.pooling.check(self.num_prefix_tokens, grid, what="this S² backbone")
        self.feature_dim = self.pooling.out_dim(self.width)

    @property
    def feature_shape(self) -> tuple[int, int]:
        return (self.pooling.num_tokens, self.width)

    def forward_tokens(self, images: Tensor) -> Tensor:
        """Merged multi-scale token map ``(B, P + h*w, C * n_scales)``.

        The ``h x w`` grid is that of scale ``resize_output_to_idx`` (the first by default).
        """
        x = self.prepare(images)
        return s2_forward(
            self.backbone.pixel_tokens,
            x,
            img_sizes=self.img_sizes,
            max_split_size=self.max_split_size,
            resize_output_to_idx=self.resize_output_to_idx,
            num_prefix_token=self.num_prefix_tokens,
            base_size=self.base_size,
            downsample=self.downsample if self.source == "native" else None,
            max_tiles_per_pass=self._tiles_per_pass(x.device),
        )

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        """Tiles of all scales run in passes of ``tiles_per_pass``: one pass's tile tokens."""
        tiles = int(batch) * sum(plan.num_split**2 for plan in self.plans)
        per_pass = self._tiles_per_pass(device or torch.device("cpu"))
        if per_pass:
            tiles = min(tiles, per_pass)
        return tiles * self.backbone.tokens_per_pass(1, device)

    def _tiles_per_pass(self, device: torch.device) -> int | None:
        if self.tiles_per_pass == "auto":
            return None if device.type == "cuda" else CPU_TILES_PER_PASS
        return None if self.tiles_per_pass is None else int(self.tiles_per_pass)

    def forward(self, images: Tensor) -> Tensor:
        return self.pooling(self.forward_tokens(images), self.num_prefix_tokens)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            pooling=str(self.pooling),
            feature_shape=list(self.feature_shape),
            token_width=self.width,
            num_prefix_tokens=self.num_prefix_tokens,
            scales=self.scales,
            img_sizes=self.img_sizes,
            source=self.source,
            backbone=self.backbone.describe(),
        )
        return d


def _backbone(backbone: VisionEncoder | str | Mapping[str, Any], weights: str | None) -> Any:
    """The backbone encoder: built from a config name or mapping (``weights``, when given, passed
    on to it, so that ``encoder.weights=/path/mvp.pth`` works the same for ``mvp_b`` and
    ``mvp_b_s2``), or an encoder already built."""
    if isinstance(backbone, VisionEncoder):
        if weights is not None:
            raise UserError("weights= goes with a backbone config, not with a built backbone")
        return backbone
    return create_encoder(backbone, **({} if weights is None else {"weights": weights}))
