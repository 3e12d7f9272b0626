"""PIIP: parameter-inverted image pyramid encoder (Zhu et al., "Parameter-Inverted Image Pyramid
Networks", ``shared/papers/003_*.txt``), in pure PyTorch on timm ViTs (``name: piip``).

Branches are frozen timm ViTs on the image at decreasing resolutions, listed **from the largest
resolution (smallest model) to the smallest resolution (largest model)** — e.g. ViT-T on 448², ViT-S
on 336², ViT-B on 224² (``piip_tsb``). The encoder takes one image, the largest-resolution render
(``image_size`` = the first branch's resolution), and makes the smaller inputs by antialiased
bilinear (or area/bicubic) downsizing.

The branches run side by side in ``N`` *interactions* (Sec. III-B): interaction ``i`` runs a block
range of every branch (``interaction_indexes``, by default each branch's depth split evenly into
``N`` ranges, so a 12-block ViT-S and a 24-block ViT-L align at every 1 and 2 blocks), then one
bidirectional *interaction unit* per pair of adjacent branches updates both branches' patch tokens
(prefix tokens such as CLS only pass through the blocks)::

    F1^ = F1 + gamma1 * Attn(LN(F1), LN(FC(F2)))          (1)   # query branch 1, keys branch 2
    F1~ = F1^ + tau1 * FFN(LN(F1^))                       (2)   # FFN hidden ratio 0.25
    (and the same with 1 and 2 swapped, both from the unit's inputs)

``Attn`` is deformable (default, as the paper; :class:`DeformableCrossAttention`, pure PyTorch) or
regular cross-attention. The gates ``gamma``/``tau`` start at zero, so at init every branch computes
exactly what it computes alone. ``ffn: conv`` is the official ConvFFN (fc1, 3x3 depthwise conv on
the token map, GELU, fc2, dropout ``ffn_drop``); ``ffn: mlp`` drops the conv. With ``branch_norm:
true`` each branch applies its own final norm after its last block (ours before); the official
PIIP (``false``) merges the raw tokens, the merge's GroupNorms normalising each branch.

The configs use the official settings (16 heads, ``value_ratio`` 0.5, ``ffn: conv``,
``merge_init: one``, ``branch_norm: false``); the code defaults stay ours (6 heads, 1.0, ``mlp``,
``mean``, ``true``) so a resolved config written before these options rebuilds unchanged.

Branch merging (Sec. III-C): each branch's patch map is projected to a common width (GroupNorm,
1x1 projection, GroupNorm; default: the widest branch), resized bilinearly to a common grid
(default: the largest token map), weighted by learned scalars ``w_j`` (init 1 with
``merge_init: one`` as the official code, ``1/M`` with ``mean``) and summed; the branches' CLS tokens go through the same projections and weights. A final LayerNorm gives the
merged token map ``(B, 1 + S*S, merge_dim)`` that ``forward_tokens`` returns; ``forward`` pools it
(``mean`` by default, ``cls``, ``cls+mean``, ``grid:k``; :mod:`robo_s2.encoders.pooling`). Prefer
``mean`` or ``grid:k``: interactions update patch tokens only, so with ``cls`` pooling the last
interaction does not reach the feature (its parameters get no gradient).

The ViT branches are frozen (no grads, eval mode even in ``train()``); interactions and merging are
trainable (``trainable=True``; such an encoder is trained from images, its features are not cached).
With ``trainable: false`` everything is frozen (e.g. a trained PIIP loaded from a checkpoint).
``weights`` loads a trained PIIP, every tensor (branches, interactions, merge), from the
``encoder.safetensors`` that ``robo-s2 train`` writes beside a checkpoint whose PIIP trained (or
from that checkpoint's directory): with ``trainable: false`` its features can then be cached like
any frozen encoder's (train the interactions once with a policy, then freeze them). The file
records the options it was trained with, and another architecture is refused; ``pooling`` may
differ (it reads the merged map, it does not change it).
``seed`` (default 0) seeds the random init of the interactions and the merge, so that every process
builds the same encoder (the branches are seeded by their own ``seed``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robo_s2.encoders.backbone import TokenEncoder, seeded
from robo_s2.encoders.base import (
    TRAINED_CONFIG_KEY,
    TRAINED_WEIGHTS_FILE,
    trained_weights_path,
)
from robo_s2.encoders.deformable_attention import CrossAttention, DeformableCrossAttention
from robo_s2.encoders.pooling import Pooling
from robo_s2.encoders.registry import create_encoder
from robo_s2.errors import UserError
from robo_s2.safe_io import fit_state_dict, read_safetensors, read_safetensors_metadata

ATTN_CHOICES = ("deformable", "regular")
FFN_CHOICES = ("conv", "mlp")  # conv: the official ConvFFN (fc1, 3x3 depthwise conv, GELU, fc2)
MERGE_INIT_CHOICES = ("one", "mean")  # branch weights w_j start at 1 (official) or 1/M
RESIZE_CHOICES = ("bilinear", "area", "bicubic")
_ATTN_ALIASES = {"deformable": "deformable", "deform": "deformable", "regular": "regular"}
_ATTN_ALIASES |= {"normal": "regular", "dense": "regular"}
_BRANCH_OWN_KEYS = ("resolution", "interaction_indexes")
# options that trained weights do not depend on (or that loading them replaces): the rest must
# match the options the weights were trained with
_NOT_ARCHITECTURE = frozenset({"pooling", "trainable", "weights", "seed", "pretrained"})


# --------------------------------------------------------------------------------------------
# interaction units
# --------------------------------------------------------------------------------------------
class ConvFFN(nn.Module):
    """FFN with a 3x3 depthwise conv on the token map: fc1 -> DWConv -> GELU -> drop -> fc2 -> drop."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        """``x (B, H*W, dim)`` on an ``hw = (H, W)`` grid -> ``(B, H*W, dim)``."""
        y = self.fc1(x)
        b, n, c = y.shape
        y = self.dwconv(y.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(y))))


class Mlp(nn.Module):
    """Plain FFN (fc1 -> GELU -> fc2); takes and ignores the grid to share ConvFFN's call."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class InteractionUnit(nn.Module):
    """One direction of an interaction unit: ``query`` tokens gather from another branch (eqs. 1-2).

    ``FC`` projects the other branch's tokens to the query width; ``gamma`` (attention) and ``tau``
    (FFN) are per-channel gates initialised to zero.
    """

    def __init__(
        self,
        dim: int,
        kv_dim: int,
        attn: str = "deformable",
        num_heads: int = 6,
        num_points: int = 4,
        value_ratio: float = 1.0,
        ffn_ratio: float = 0.25,
        ffn: str = "mlp",
        ffn_drop: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(kv_dim, dim)
        self.query_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.feat_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.attn_type = attn
        if attn == "deformable":
            self.attn: nn.Module = DeformableCrossAttention(
                dim, num_heads=num_heads, num_points=num_points, value_ratio=value_ratio
            )
        elif attn == "regular":
            self.attn = CrossAttention(dim, num_heads=num_heads)
        else:  # pragma: no cover - validated by the encoder
            raise ValueError(f"unknown attn {attn!r}")
        hidden = max(1, int(dim * ffn_ratio))
        self.ffn_norm = nn.LayerNorm(dim, eps=norm_eps)
        self.ffn: nn.Module = (ConvFFN if ffn == "conv" else Mlp)(dim, hidden, ffn_drop)
        self.gamma = nn.Parameter(torch.zeros(dim))  # attention gate (paper: gamma)
        self.tau = nn.Parameter(torch.zeros(dim))  # FFN gate (paper: tau)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):  # the depthwise conv: fan-out init
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if isinstance(self.attn, DeformableCrossAttention):
            self.attn.reset_parameters()
        nn.init.zeros_(self.gamma)
        nn.init.zeros_(self.tau)

    def forward(
        self, query: Tensor, query_hw: tuple[int, int], feat: Tensor, feat_hw: tuple[int, int]
    ) -> Tensor:
        """``query (B, Hq*Wq, dim)``, ``feat (B, Hf*Wf, kv_dim)`` -> updated query tokens."""
        kv = self.feat_norm(self.fc(feat))
        x = query + self.gamma * self.attn(self.query_norm(query), query_hw, kv, feat_hw)
        return x + self.tau * self.ffn(self.ffn_norm(x), query_hw)


class BidirectionalInteraction(nn.Module):
    """Interaction unit between two adjacent branches: each updates the other (from the inputs)."""

    def __init__(self, dim_a: int, dim_b: int, **unit_kwargs: Any) -> None:
        super().__init__()
        self.b_to_a = InteractionUnit(dim_a, dim_b, **unit_kwargs)  # updates branch a
        self.a_to_b = InteractionUnit(dim_b, dim_a, **unit_kwargs)  # updates branch b

    def forward(
        self, xa: Tensor, hw_a: tuple[int, int], xb: Tensor, hw_b: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        return self.b_to_a(xa, hw_a, xb, hw_b), self.a_to_b(xb, hw_b, xa, hw_a)


# --------------------------------------------------------------------------------------------
# branch merging
# --------------------------------------------------------------------------------------------
def _groups(channels: int, preferred: int = 32) -> int:
    return math.gcd(channels, preferred)


class BranchMerge(nn.Module):
    """Project branches to ``dim`` channels, resize to ``size x size``, weighted sum (eqs. 3-4)."""

    def __init__(
        self,
        widths: Sequence[int],
        dim: int,
        size: int,
        norm_eps: float = 1e-6,
        merge_init: str = "mean",
    ) -> None:
        super().__init__()
        self.size = int(size)
        projs: list[nn.Module] = []
        for w in widths:
            if w == dim:
                projs.append(nn.GroupNorm(_groups(w), w))
            else:
                projs.append(
                    nn.Sequential(
                        nn.GroupNorm(_groups(w), w),
                        nn.Conv2d(w, dim, kernel_size=1),
                        nn.GroupNorm(_groups(dim), dim),
                    )
                )
        self.proj = nn.ModuleList(projs)
        init = 1.0 if merge_init == "one" else 1.0 / len(widths)
        self.weights = nn.Parameter(torch.full((len(widths),), init))
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, maps: Sequence[Tensor], cls_tokens: Sequence[Tensor] | None = None) -> Tensor:
        """``maps[j] (B, C_j, h_j, w_j)``, ``cls_tokens[j] (B, C_j)`` -> ``(B, P + S*S, D)``."""
        out: Tensor | None = None
        for j, (proj, fmap) in enumerate(zip(self.proj, maps, strict=True)):
            y = proj(fmap)
            if y.shape[-2:] != (self.size, self.size):
                y = F.interpolate(
                    y, size=(self.size, self.size), mode="bilinear", align_corners=False,
                    antialias=y.shape[-1] > self.size,
                )  # fmt: skip
            y = y * self.weights[j]
            out = y if out is None else out + y
        assert out is not None
        tokens = out.flatten(2).transpose(1, 2)
        if cls_tokens is not None:
            cls = None
            for j, (proj, c) in enumerate(zip(self.proj, cls_tokens, strict=True)):
                y = proj(c[:, :, None, None]).flatten(1) * self.weights[j]
                cls = y if cls is None else cls + y
            assert cls is not None  # one CLS token per branch
            tokens = torch.cat([cls[:, None], tokens], dim=1)
        return self.norm(tokens)


# --------------------------------------------------------------------------------------------
# the encoder
# --------------------------------------------------------------------------------------------
_NOT_VIT = (
    "{what} is a {kind}; PIIP branches must be timm VisionTransformer models "
    "(e.g. deit_tiny_patch16_224, vit_small_patch16_224, vit_base_patch16_224) or MVP ViTs"
)
_VIT_MODULES = ["vision_transformer", "deit", "vision_transformer_hybrid"]


def _known_non_vit(model: Any) -> bool:
    import timm
    from timm.models import is_model_in_modules

    name = str(model)
    return bool(timm.is_model(name)) and not is_model_in_modules(name, _VIT_MODULES)


def _vit(branch: TokenEncoder, what: str) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    net = getattr(branch, "model", None)
    if not isinstance(net, VisionTransformer):
        raise UserError(_NOT_VIT.format(what=what, kind=type(net).__name__))
    return net


def even_interaction_indexes(depth: int, n: int) -> list[list[int]]:
    """``depth`` blocks split into ``n`` contiguous ranges ``[first, last]`` (inclusive), as evenly
    as possible; ``n = 0`` is one range over all blocks (the branch runs without interactions)."""
    if n == 0:
        return [[0, depth - 1]]
    bounds = [round(i * depth / n) for i in range(n + 1)]
    return [[bounds[i], bounds[i + 1] - 1] for i in range(n)]


def _check_indexes(indexes: Any, depth: int, n: int, what: str) -> list[list[int]]:
    try:
        ranges = [[int(r[0]), int(r[-1])] for r in indexes]
    except (TypeError, ValueError, IndexError) as exc:
        raise UserError(
            f"{what}: interaction_indexes must be a list of [first, last] block ranges, "
            f"got {indexes}"
        ) from exc
    if len(ranges) != n:
        raise UserError(
            f"{what}: {len(ranges)} interaction_indexes ranges for {n} interactions; give one "
            "[first, last] block range per interaction"
        )
    expect = 0
    for first, last in ranges:
        if first != expect or last < first:
            raise UserError(
                f"{what}: interaction_indexes {ranges} must be contiguous, non-empty ranges "
                f"starting at block 0 (range {[first, last]} should start at {expect})"
            )
        expect = last + 1
    if expect != depth:
        raise UserError(
            f"{what}: interaction_indexes {ranges} cover blocks 0..{expect - 1} but the ViT has "
            f"{depth} blocks; the ranges must end at block {depth - 1}"
        )
    return ranges


def branch_specs(
    branches: Any, resolutions: Sequence[int] | None, pretrained: bool
) -> list[dict[str, Any]]:
    """The branch configs (a list of mappings or timm names), each with an integer
    ``resolution``, strictly decreasing; ``resolutions`` overrides theirs, one per branch."""
    if isinstance(branches, Mapping) or not isinstance(branches, Sequence):
        raise UserError(
            "PIIP branches must be a list of branch configs, e.g. "
            "[{model: vit_tiny_patch16_224, resolution: 448}, "
            "{model: vit_small_patch16_224, resolution: 224}]"
        )
    specs = []
    for j, b in enumerate(branches):
        if isinstance(b, str):
            b = {"model": b}
        if not isinstance(b, Mapping):
            raise UserError(f"PIIP branch {j} must be a mapping or a timm model name, got {b!r}")
        specs.append(dict(b))
    if len(specs) < 2:
        raise UserError(
            f"PIIP needs at least 2 branches (got {len(specs)}); for one ViT use name=timm"
        )
    if resolutions is not None:
        resolutions = list(resolutions)
        if len(resolutions) != len(specs):
            raise UserError(
                f"PIIP branch count mismatch: {len(resolutions)} resolutions {resolutions} for "
                f"{len(specs)} branches; give one resolution per branch (largest first)"
            )
        for s, r in zip(specs, resolutions, strict=True):
            s["resolution"] = r
    for j, s in enumerate(specs):
        if "image_size" in s and "resolution" not in s:
            s["resolution"] = s.pop("image_size")
        s.pop("image_size", None)
        if s.get("resolution") is None:
            raise UserError(f"PIIP branch {j} has no resolution; set resolution (or resolutions)")
        try:
            s["resolution"] = int(s["resolution"])
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"PIIP branch {j} resolution must be an integer, got {s['resolution']!r}"
            ) from exc
        if s["resolution"] < 1:
            raise UserError(f"PIIP branch {j} resolution must be positive, got {s['resolution']}")
        if s.get("name", "timm") == "timm" and "model" not in s:
            raise UserError(f"PIIP branch {j} needs a timm model name (model: vit_...)")
        if s.get("name", "timm") == "timm":  # other factories (mvp) take weights only
            s.setdefault("pretrained", bool(pretrained) or s.get("weights") is not None)
    res = [s["resolution"] for s in specs]
    if any(a <= b for a, b in zip(res[:-1], res[1:], strict=True)):
        raise UserError(
            f"PIIP branches must be listed from the largest resolution to the smallest "
            f"(strictly decreasing), got resolutions {res}"
        )
    return specs


def _architecture(cfg: Any) -> Any:
    """``cfg`` without the options trained weights do not depend on (at every depth)."""
    if isinstance(cfg, Mapping):
        return {k: _architecture(v) for k, v in cfg.items() if k not in _NOT_ARCHITECTURE}
    if isinstance(cfg, list):
        return [_architecture(v) for v in cfg]
    return cfg


def _differences(a: Any, b: Any, key: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, a's value, b's value)`` wherever two JSON trees differ (missing: None);
    a list of plain values is one value, and branch configs come last (their ``resolution``
    repeats ``resolutions``, the option a user sets)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=lambda k: (k == "branches", k)):
            out += _differences(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        return out
    if (
        isinstance(a, list)
        and isinstance(b, list)
        and len(a) == len(b)
        and any(isinstance(v, dict | list) for v in a + b)
    ):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _differences(x, y, f"{key}.{i}")
        return out
    return [] if a == b else [(key, a, b)]


class PIIPEncoder(TokenEncoder):
    """Parameter-inverted image pyramid over frozen timm ViT branches (see the module doc).

    Public pieces beyond :class:`~robo_s2.encoders.base.VisionEncoder`: :meth:`branch_inputs`
    (the per-branch resized, normalised images), :meth:`forward_branches` (every branch's final
    token map, before merging), ``branches`` (the branch encoders), ``interactions`` (an
    ``nn.ModuleList`` of ``nn.ModuleList`` s of :class:`BidirectionalInteraction`), ``merge``
    (:class:`BranchMerge`), :meth:`gates` and :meth:`trainable_parameters`.
    """

    def __init__(
        self,
        branches: Sequence[Mapping[str, Any]],
        resolutions: Sequence[int] | None = None,
        pretrained: bool = False,
        interactions: int | None = None,
        attn: str = "deformable",
        num_heads: int = 6,
        num_points: int = 4,
        value_ratio: float = 1.0,
        ffn_ratio: float = 0.25,
        ffn: str = "mlp",
        ffn_drop: float = 0.0,
        merge_dim: int | None = None,
        merge_size: int | None = None,
        merge_init: str = "mean",
        branch_norm: bool = True,
        resize: str = "bilinear",
        pooling: str = "mean",
        trainable: bool = True,
        seed: int = 0,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        specs = branch_specs(branches, resolutions, pretrained)
        attn_key, pool = self._check_options(
            attn, resize, pooling, num_heads, num_points, ffn_ratio, value_ratio
        )
        self._check_choices(ffn=ffn, merge_init=merge_init, ffn_drop=ffn_drop)
        self.attn = attn_key
        self.resize_mode = resize
        self.branch_norm = bool(branch_norm)
        # submodules in this order (branches, interactions, merge): state_dict keys and seeded init
        has_cls = self._build_branches(specs)
        unit_kwargs = dict(attn=attn_key, num_heads=int(num_heads), num_points=int(num_points))
        unit_kwargs |= dict(value_ratio=float(value_ratio), ffn_ratio=float(ffn_ratio))
        unit_kwargs |= dict(ffn=ffn, ffn_drop=float(ffn_drop))
        with seeded(int(seed)):  # the new modules' init, the same in every process
            self._build_interactions(specs, interactions, unit_kwargs)
            self._build_merge(merge_dim, merge_size, merge_init)

        # --- TokenEncoder contract -------------------------------------------------------------
        self.image_size = self.resolutions[0]
        self.width = self.merge_dim
        self.num_prefix_tokens = 1 if has_cls else 0
        self.patch_size = max(1, self.image_size // self.merge_size)
        self.dynamic_size = False
        self.set_config(
            "piip",
            branches=[dict(s) for s in specs],
            resolutions=list(self.resolutions),
            pretrained=bool(pretrained),
            interactions=self.n_interactions,
            **unit_kwargs,
            merge_dim=self.merge_dim,
            merge_size=self.merge_size,
            merge_init=merge_init,
            branch_norm=self.branch_norm,
            resize=resize,
            pooling=str(pool),
            trainable=bool(trainable),
            seed=int(seed),
            # recorded only when given: configs (and fingerprints) from before the option stay
            **({"weights": str(weights)} if weights is not None else {}),
        )
        self._setup(str(pool), None, None)  # each branch normalises its own input
        self.pooling.check(self.num_prefix_tokens, self.merge_size, what="encoder 'piip'")
        if weights is not None:
            load_trained_piip(self, str(weights))
        self.trainable = bool(trainable)
        if not self.trainable:
            self.freeze()

    # --- construction ---------------------------------------------------------------------------
    @staticmethod
    def _check_options(
        attn: str,
        resize: str,
        pooling: str,
        num_heads: int,
        num_points: int,
        ffn_ratio: float,
        value_ratio: float,
    ) -> tuple[str, Pooling]:
        """Validate the interaction and pooling options; the canonical attn name and the pooling."""
        attn_key = _ATTN_ALIASES.get(str(attn).strip().lower())
        if attn_key is None:
            raise UserError(f"unknown PIIP attn '{attn}'; choose one of: {', '.join(ATTN_CHOICES)}")
        if resize not in RESIZE_CHOICES:
            raise UserError(
                f"unknown PIIP resize '{resize}'; choose one of: {', '.join(RESIZE_CHOICES)}"
            )
        pool = Pooling.parse(pooling)
        if num_heads < 1 or num_points < 1 or ffn_ratio <= 0 or value_ratio <= 0:
            raise UserError(
                "PIIP needs num_heads >= 1, num_points >= 1, ffn_ratio > 0 and value_ratio > 0; "
                f"got num_heads={num_heads}, num_points={num_points}, ffn_ratio={ffn_ratio}, "
                f"value_ratio={value_ratio}"
            )
        return attn_key, pool

    @staticmethod
    def _check_choices(ffn: str, merge_init: str, ffn_drop: float) -> None:
        """Validate the FFN kind, the merge-weight init and the FFN dropout."""
        for key, value, choices in (
            ("ffn", ffn, FFN_CHOICES),
            ("merge_init", merge_init, MERGE_INIT_CHOICES),
        ):
            if value not in choices:
                raise UserError(
                    f"unknown PIIP {key} '{value}'; choose one of: {', '.join(choices)}"
                )
        if not 0.0 <= float(ffn_drop) < 1.0:
            raise UserError(f"PIIP ffn_drop must be in [0, 1), got {ffn_drop}")

    @staticmethod
    def _branch_label(j: int, spec: Mapping[str, Any]) -> str:
        return f"PIIP branch {j} ({spec.get('model', spec.get('name'))})"

    @staticmethod
    def _build_branch(spec: Mapping[str, Any], what: str) -> tuple[Any, Any, int]:
        """One frozen ViT branch (built through the backbone factories), its ViT and resolution."""
        cfg = {k: v for k, v in spec.items() if k not in _BRANCH_OWN_KEYS}
        res = int(spec["resolution"])
        cfg.setdefault("name", "timm")
        cfg["image_size"] = res
        cfg.setdefault("pooling", "mean")
        cfg["trainable"] = False
        try:
            branch = create_encoder(cfg)
        except UserError as exc:
            if cfg["name"] == "timm" and _known_non_vit(cfg.get("model")):
                raise UserError(_NOT_VIT.format(what=what, kind=cfg.get("model"))) from exc
            raise
        if not isinstance(branch, TokenEncoder):
            raise UserError(f"{what}: encoder '{cfg['name']}' is not a ViT token encoder")
        vit = _vit(branch, what)
        if branch.patch_size > 1 and res % branch.patch_size:
            raise UserError(
                f"{what}: resolution {res} is not divisible by its patch size "
                f"{branch.patch_size}; use a multiple of {branch.patch_size}"
            )
        if branch.image_size != res:
            raise UserError(f"{what}: built for {branch.image_size}px inputs, not {res}px")
        return branch, vit, res

    def _build_branches(self, specs: Sequence[Mapping[str, Any]]) -> bool:
        """Build ``branches`` and their per-branch geometry; whether every branch has a CLS token."""
        built = [
            self._build_branch(spec, self._branch_label(j, spec)) for j, spec in enumerate(specs)
        ]
        self.branches = nn.ModuleList([b for b, _, _ in built])
        self.resolutions = [r for _, _, r in built]
        self.widths = [int(vit.embed_dim) for _, vit, _ in built]
        self.depths = [len(vit.blocks) for _, vit, _ in built]
        self.grids = [(r // b.patch_size, r // b.patch_size) for b, _, r in built]
        self.prefix_counts = [int(vit.num_prefix_tokens) for _, vit, _ in built]
        return all(getattr(vit, "cls_token", None) is not None for _, vit, _ in built)

    def _build_interactions(
        self,
        specs: Sequence[Mapping[str, Any]],
        interactions: int | None,
        unit_kwargs: Mapping[str, Any],
    ) -> None:
        """``n_interactions``, every branch's block ranges and the ``interactions`` units."""
        n = min(self.depths) if interactions is None else int(interactions)
        if n < 0 or n > min(self.depths):
            raise UserError(
                f"PIIP interactions={interactions} must be between 0 and the smallest branch depth "
                f"({min(self.depths)} blocks)"
            )
        self.n_interactions = n
        self.interaction_indexes = []
        for j, spec in enumerate(specs):
            given = spec.get("interaction_indexes")
            if given is None:
                self.interaction_indexes.append(even_interaction_indexes(self.depths[j], n))
            else:
                self.interaction_indexes.append(
                    _check_indexes(given, self.depths[j], max(n, 1), self._branch_label(j, spec))
                )
        self._check_heads_divide_widths(unit_kwargs["num_heads"], unit_kwargs["value_ratio"])
        self.interactions = nn.ModuleList(
            nn.ModuleList(
                BidirectionalInteraction(self.widths[j], self.widths[j + 1], **unit_kwargs)
                for j in range(len(self.branches) - 1)
            )
            for _ in range(n)
        )

    def _check_heads_divide_widths(self, num_heads: int, value_ratio: float) -> None:
        for a, b in zip(self.widths[:-1], self.widths[1:], strict=True):
            for d in (a, b):
                if d % num_heads or int(d * value_ratio) % num_heads:
                    raise UserError(
                        f"PIIP num_heads={num_heads} does not divide branch width {d} (value width "
                        f"{int(d * value_ratio)}); pick num_heads dividing every branch width "
                        f"{self.widths}"
                    )

    def _build_merge(self, merge_dim: int | None, merge_size: int | None, merge_init: str) -> None:
        """``merge_dim``, ``merge_size`` (defaults: widest branch, largest grid) and ``merge``."""
        self.merge_dim = int(merge_dim or max(self.widths))
        self.merge_size = int(merge_size or max(g[0] for g in self.grids))
        if self.merge_dim < 1 or self.merge_size < 1:
            raise UserError(
                f"PIIP merge_dim and merge_size must be >= 1, got {merge_dim}, {merge_size}"
            )
        self.merge = BranchMerge(
            self.widths, self.merge_dim, self.merge_size, merge_init=merge_init
        )

    # --- configuration helpers ------------------------------------------------------------------
    # --- the pyramid ----------------------------------------------------------------------------
    def branch_inputs(self, x: Tensor) -> list[Tensor]:
        """Float ``(B,3,S,S)`` in [0,1] -> every branch's resized, normalised input."""
        out = []
        branches: list[Any] = list(self.branches)  # TokenEncoders (nn.ModuleList loses the type)
        for branch, res in zip(branches, self.resolutions, strict=True):
            y = x
            if y.shape[-1] != res or y.shape[-2] != res:
                if self.resize_mode == "area":
                    y = F.interpolate(y, size=(res, res), mode="area")
                else:
                    y = F.interpolate(
                        y, size=(res, res), mode=self.resize_mode, align_corners=False,
                        antialias=True,
                    )  # fmt: skip
            out.append(branch.normalize(y))
        return out

    def _run_blocks(self, j: int, x: Tensor, first: int, last: int) -> Tensor:
        branch: Any = self.branches[j]  # a TokenEncoder over a timm ViT (duck-typed)
        blocks = branch.model.blocks
        for i in range(first, last + 1):
            x = blocks[i](x)
        return x

    def forward_branches(self, x: Tensor) -> list[Tensor]:
        """Float ``(B,3,S,S)`` in [0,1] -> every branch's final token map
        ``(B, P_j + h_j*w_j, C_j)`` (after its final norm if ``branch_norm``, before merging)."""
        vits: list[Any] = [b.model for b in self.branches]  # timm ViTs (duck-typed)
        tokens = []
        for vit, inp in zip(vits, self.branch_inputs(x), strict=True):
            t = vit.patch_embed(inp)
            t = vit._pos_embed(t)
            t = vit.patch_drop(t)
            tokens.append(vit.norm_pre(t))
        n_steps = max(self.n_interactions, 1)
        for i in range(n_steps):
            for j in range(len(tokens)):
                first, last = self.interaction_indexes[j][i]
                tokens[j] = self._run_blocks(j, tokens[j], first, last)
            if i >= self.n_interactions:
                continue
            prefix = [t[:, :p] for t, p in zip(tokens, self.prefix_counts, strict=True)]
            patches = [t[:, p:] for t, p in zip(tokens, self.prefix_counts, strict=True)]
            stage: Any = self.interactions[i]  # an nn.ModuleList of BidirectionalInteraction
            units: list[Any] = list(stage)
            for j, unit in enumerate(units):
                patches[j], patches[j + 1] = unit(
                    patches[j], self.grids[j], patches[j + 1], self.grids[j + 1]
                )
            tokens = [
                torch.cat([p, t], dim=1) if p.shape[1] else t
                for p, t in zip(prefix, patches, strict=True)
            ]
        if not self.branch_norm:  # official PIIP: the merge's GroupNorms normalise each branch
            return tokens
        return [vit.norm(t) for vit, t in zip(vits, tokens, strict=True)]

    def _tokens(self, x: Tensor) -> Tensor:
        # x: [0,1] pixels (this encoder's own normalisation is the identity; branches normalise)
        outs = self.forward_branches(x)
        maps, cls = [], []
        for t, p, (h, w) in zip(outs, self.prefix_counts, self.grids, strict=True):
            maps.append(t[:, p:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], h, w))
            cls.append(t[:, 0])
        return self.merge(maps, cls if self.num_prefix_tokens else None)

    def tokens_per_pass(self, batch: int, device: torch.device | None = None) -> int:
        """Branches run one after another: the largest branch's tokens."""
        return int(batch) * max(
            h * w + p for (h, w), p in zip(self.grids, self.prefix_counts, strict=True)
        )

    def pixel_tokens(self, x: Tensor) -> Tensor:
        """Float ``(B,3,S,S)`` pixels in [0,1] -> merged token map ``(B, P + S*S, merge_dim)``."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise UserError(
                f"encoder 'piip' expects {self.image_size}x{self.image_size} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}"
            )
        return self._tokens(x)

    # --- introspection ----------------------------------------------------------------------------
    def gates(self) -> list[nn.Parameter]:
        """Every interaction gate (``gamma`` and ``tau`` of every unit direction)."""
        return [
            p
            for n, p in self.interactions.named_parameters()
            if n.split(".")[-1] in ("gamma", "tau")
        ]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: interactions and merging (empty when ``trainable=False``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def describe(self) -> dict[str, Any]:
        d = super().describe()

        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters())

        d.update(
            frozen_params=sum(p.numel() for p in self.parameters() if not p.requires_grad),
            branch_params=sum(count(b) for b in self.branches),
            interaction_params=count(self.interactions),
            merge_params=count(self.merge),
            attn=self.attn,
            interactions=self.n_interactions,
            merge_dim=self.merge_dim,
            merge_size=self.merge_size,
            branches=[
                {
                    "model": b.config.get("model", b.name),
                    "resolution": r,
                    "width": w,
                    "depth": dpt,
                    "grid": list(g),
                    "params": count(b),
                    "pretrained": bool(b.config.get("pretrained"))
                    or str(b.config.get("weights")).lower() not in ("none", ""),
                    "interaction_indexes": idx,
                }
                for b, r, w, dpt, g, idx in zip(
                    self.branches,
                    self.resolutions,
                    self.widths,
                    self.depths,
                    self.grids,
                    self.interaction_indexes,
                    strict=True,
                )  # fmt: skip
            ],
        )
        return d


# ------------------------------------------------------------------------------------------------
# trained weights
def load_trained_piip(encoder: PIIPEncoder, weights: str) -> None:
    """Every tensor of ``encoder`` from a trained PIIP's weights file (see the module doc's
    ``weights``)."""
    path = trained_weights_path(weights)
    if not path.is_file():
        raise UserError(
            f"PIIP weights {path} not found; point weights= to a trained PIIP's "
            f"{TRAINED_WEIGHTS_FILE} (or its checkpoint directory, <train run>/checkpoints/best)"
        )
    recorded = read_safetensors_metadata(path, "PIIP weights").get(TRAINED_CONFIG_KEY)
    if recorded is None:
        logging.getLogger("robo_s2.weights").warning(
            f"PIIP weights {path} record no encoder options: only their tensor names and "
            "shapes are checked against this PIIP"
        )
    else:
        _check_trained_options(encoder.config, recorded, path)
    state = fit_state_dict(
        read_safetensors(path, "PIIP weights"),
        encoder.state_dict(),
        source=str(path),
        target="this PIIP",
        fix="build the PIIP with the options it was trained with "
        "(its checkpoint's robo_s2.json, encoder.config)",
        exact=True,
    )
    encoder.load_state_dict(state, strict=True)


def _check_trained_options(config: dict[str, Any], recorded: str, path: Path) -> None:
    """Refuse weights trained with another architecture, naming the options that differ."""
    try:
        theirs = json.loads(recorded)
    except (ValueError, RecursionError):
        theirs = None
    if not isinstance(theirs, dict):
        raise UserError(
            f"PIIP weights {path}: their recorded encoder options are not a JSON object; "
            "the file is damaged: re-save it from its checkpoint"
        )
    if theirs.get("name") != "piip":
        raise UserError(
            f"PIIP weights {path} are of encoder {theirs.get('name')!r}, not a PIIP; point "
            "weights= to a trained PIIP's encoder.safetensors"
        )
    ours = json.loads(json.dumps(config, default=str))
    diffs = _differences(_architecture(theirs), _architecture(ours))
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        trained = ", ".join(f"{k}={a!r}" for k, a, _ in diffs[:3])
        here = ", ".join(f"{k}={b!r}" for k, _, b in diffs[:3])
        raise UserError(
            f"PIIP weights {path} were trained with {trained}{more}, this PIIP has {here}; "
            "build it with the options it was trained with (its checkpoint's robo_s2.json, "
            "encoder.config)"
        )
