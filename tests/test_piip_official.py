"""PIIP with the official settings against small references written from the paper's equations.

References are plain PyTorch (einsum, explicit shifts for the 3x3 depthwise conv, hand-written
LayerNorm/GroupNorm), fed the same weights as our modules; gates are random so nothing vanishes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robo_s2.encoders import create_encoder
from robo_s2.encoders.piip import BranchMerge, ConvFFN, InteractionUnit
from robo_s2.encoders.registry import resolve_encoder_config
from robo_s2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-5


def _ln(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def _gn(x: torch.Tensor, gn: torch.nn.GroupNorm) -> torch.Tensor:
    b, c, h, w = x.shape
    g = x.reshape(b, gn.num_groups, -1)
    mu, var = g.mean(-1, keepdim=True), g.var(-1, unbiased=False, keepdim=True)
    y = ((g - mu) / torch.sqrt(var + gn.eps)).reshape(b, c, h, w)
    return y * gn.weight[:, None, None] + gn.bias[:, None, None]


def _lin(x: torch.Tensor, m: torch.nn.Linear) -> torch.Tensor:
    y = torch.einsum("...i,oi->...o", x, m.weight)
    return y if m.bias is None else y + m.bias


def _ref_convffn(x: torch.Tensor, hw: tuple[int, int], ffn: ConvFFN) -> torch.Tensor:
    """fc1 -> 3x3 depthwise conv (zero padding, as nine shifted products) -> GELU -> fc2."""
    y = _lin(x, ffn.fc1)
    b, n, c = y.shape
    fmap = y.transpose(1, 2).reshape(b, c, *hw)
    pad = F.pad(fmap, (1, 1, 1, 1))
    k = ffn.dwconv.weight[:, 0]  # (c, 3, 3)
    out = ffn.dwconv.bias[None, :, None, None].expand_as(fmap).clone()
    for dy in range(3):
        for dx in range(3):
            out = out + k[None, :, dy, dx, None, None] * pad[:, :, dy : dy + hw[0], dx : dx + hw[1]]
    y = out.flatten(2).transpose(1, 2)
    return _lin(0.5 * y * (1 + torch.erf(y / 2**0.5)), ffn.fc2)


def _ref_regular_attn(q: torch.Tensor, kv: torch.Tensor, attn: torch.nn.Module) -> torch.Tensor:
    h = attn.num_heads
    qq, kk, vv = _lin(q, attn.wq), _lin(kv, attn.wk), _lin(kv, attn.wv)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], h, -1)  # noqa: E731
    qq, kk, vv = split(qq), split(kk), split(vv)
    a = torch.einsum("bqhd,bkhd->bhqk", qq, kk) / qq.shape[-1] ** 0.5
    out = torch.einsum("bhqk,bkhd->bqhd", a.softmax(-1), vv).flatten(2)
    return _lin(out, attn.proj)


def _ref_unit(unit: InteractionUnit, f1, hw1, f2, hw2) -> torch.Tensor:
    """Eqs. (1)-(2): F1^ = F1 + g*Attn(LN(F1), LN(FC(F2))); F1~ = F1^ + t*FFN(LN(F1^))."""
    eps = unit.query_norm.eps
    kv = _ln(_lin(f2, unit.fc), unit.feat_norm.weight, unit.feat_norm.bias, eps)
    q = _ln(f1, unit.query_norm.weight, unit.query_norm.bias, eps)
    if unit.attn_type == "regular":
        a = _ref_regular_attn(q, kv, unit.attn)
    else:  # the deformable core is checked against its own loop reference in test_piip.py
        a = unit.attn(q, hw1, kv, hw2)
    x = f1 + unit.gamma * a
    y = _ln(x, unit.ffn_norm.weight, unit.ffn_norm.bias, eps)
    return x + unit.tau * _ref_convffn(y, hw1, unit.ffn)


@pytest.mark.parametrize("attn", ["regular", "deformable"])
def test_interaction_unit_with_convffn_matches_paper_reference(attn: str) -> None:
    torch.manual_seed(0)
    dim, kv_dim, hw1, hw2 = 32, 48, (6, 5), (3, 4)
    unit = InteractionUnit(dim, kv_dim, attn=attn, num_heads=16, value_ratio=0.5, ffn="conv")
    assert isinstance(unit.ffn, ConvFFN) and unit.ffn.dwconv.groups == unit.ffn.fc1.out_features
    with torch.no_grad():
        for p in unit.parameters():  # random everything (gates too), so no term is trivially zero
            p.normal_(std=0.3)
    f1 = torch.randn(2, hw1[0] * hw1[1], dim)
    f2 = torch.randn(2, hw2[0] * hw2[1], kv_dim)
    with torch.no_grad():
        got, ref = unit(f1, hw1, f2, hw2), _ref_unit(unit, f1, hw1, f2, hw2)
    err = (got - ref).abs().max().item()
    print(f"interaction unit ({attn}, ConvFFN) max |ours - reference| = {err:.2e}")
    assert err <= TOL


def test_branch_merge_weights_one_matches_paper_reference() -> None:
    """Eqs. (3)-(4): F = LN(sum_j w_j Resize(Proj_j(F_j))), w_j init 1, Proj = GN, 1x1, GN."""
    torch.manual_seed(0)
    widths, dim, size = [32, 64, 96], 96, 8
    merge = BranchMerge(widths, dim, size, merge_init="one")
    assert torch.equal(merge.weights.detach(), torch.ones(3))
    with torch.no_grad():
        for name, p in merge.named_parameters():
            if name != "weights":
                p.normal_(std=0.5)
    maps = [torch.randn(2, w, s, s) for w, s in zip(widths, [8, 6, 4], strict=True)]
    cls = [torch.randn(2, w) for w in widths]

    def proj(j: int, x: torch.Tensor) -> torch.Tensor:
        m = merge.proj[j]
        if isinstance(m, torch.nn.GroupNorm):
            return _gn(x, m)
        y = _gn(x, m[0])
        y = torch.einsum("bchw,oc->bohw", y, m[1].weight[:, :, 0, 0]) + m[1].bias[:, None, None]
        return _gn(y, m[2])

    fused = sum(
        F.interpolate(proj(j, x), size=(size, size), mode="bilinear", align_corners=False)
        for j, x in enumerate(maps)
    )
    c = sum(proj(j, t[:, :, None, None]).flatten(1) for j, t in enumerate(cls))
    tokens = torch.cat([c[:, None], fused.flatten(2).transpose(1, 2)], dim=1)
    ref = _ln(tokens, merge.norm.weight, merge.norm.bias, merge.norm.eps)
    with torch.no_grad():
        got = merge(maps, cls)
    err = (got - ref).abs().max().item()
    print(f"branch merge (w_j = 1) max |ours - reference| = {err:.2e}")
    assert err <= TOL


def test_mean_init_and_mlp_stay_selectable() -> None:
    assert torch.allclose(BranchMerge([8, 16], 16, 4).weights, torch.full((2,), 0.5))
    unit = InteractionUnit(16, 16, num_heads=4, ffn="mlp")
    assert not any(isinstance(m, torch.nn.Conv2d) for m in unit.modules())


TINY = [
    {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
    },
    {
        "model": "vit_tiny_patch16_224",
        "model_kwargs": dict(patch_size=8, embed_dim=64, depth=2, num_heads=2),
    },
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_heads=12), "num_heads=12 does not divide branch width 32"),
        (dict(num_heads=16, value_ratio=0.25), "value width 8"),
        (dict(ffn="convffn"), "unknown PIIP ffn 'convffn'; choose one of: conv, mlp"),
        (dict(merge_init="zero"), "unknown PIIP merge_init 'zero'; choose one of: one, mean"),
    ],
)
def test_bad_official_options_are_one_line_user_errors(overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        create_encoder("piip", branches=TINY, resolutions=[32, 16], **overrides)
    assert "\n" not in str(info.value)


def test_official_settings_run_without_branch_norm() -> None:
    enc = create_encoder(
        "piip", branches=TINY, resolutions=[32, 16], num_heads=16, value_ratio=0.5,
        ffn="conv", merge_init="one", branch_norm=False, pooling="mean",
    )  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    outs = enc.forward_branches(x)
    raw = [t for t in outs]
    enc.branch_norm = True
    normed = enc.forward_branches(x)
    assert not torch.allclose(raw[0], normed[0])  # branch_norm=false skips each ViT's final norm
    enc.branch_norm = False
    assert enc(x).shape == (2, 64) and enc.config["branch_norm"] is False


def test_matched_config_tiles_and_report_option_stays_out_of_the_config() -> None:
    cfg = resolve_encoder_config("piip_tsb_matched")
    assert cfg["compute_matched_to"] == "vit_b" and cfg["resolutions"] == [368, 192, 128]
    assert all(r % 16 == 0 for r in cfg["resolutions"])  # 23, 12, 8 tokens a side
    a = create_encoder("piip", branches=TINY, resolutions=[32, 16], num_heads=8)
    b = create_encoder(
        "piip", branches=TINY, resolutions=[32, 16], num_heads=8, compute_matched_to="vit_b"
    )
    assert "compute_matched_to" not in b.config and a.config == b.config  # the fingerprinted part
