"""PIIP encoder: zero-gate equivalence, gradients, deformable-attention references, configs."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from robo_s2.encoders import create_encoder, list_encoder_configs, list_encoders
from robo_s2.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from robo_s2.encoders.deformable_attention import (
    CrossAttention,
    DeformableCrossAttention,
    deformable_attention_core,
    reference_points,
)
from robo_s2.encoders.piip import PIIPEncoder, even_interaction_indexes
from robo_s2.encoders.registry import RUNTIME_OPTIONS, resolve_encoder_config
from robo_s2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# tiny random-init ViTs (patch 8 so that small images still give a few tokens); widths 24/48/96 all
# divisible by the default 6 interaction heads; different depths exercise the index ranges
def _vit(model: str, width: int, depth: int, heads: int) -> dict:
    kwargs = dict(patch_size=8, embed_dim=width, depth=depth, num_heads=heads)
    return {"model": model, "model_kwargs": kwargs}


TINY = [
    _vit("vit_tiny_patch16_224", 24, 4, 2),
    _vit("vit_tiny_patch16_224", 48, 2, 2),
    _vit("vit_small_patch16_224", 96, 2, 4),
]
RES3 = [64, 48, 32]


def tiny_piip(n_branches: int = 3, **kw) -> PIIPEncoder:
    torch.manual_seed(0)
    kw.setdefault("resolutions", RES3[:n_branches])
    kw.setdefault("interactions", 2)
    return create_encoder("piip", branches=TINY[:n_branches], **kw)


def branch_alone(enc: PIIPEncoder, j: int, x: torch.Tensor) -> torch.Tensor:
    """Branch j's ViT run alone on its own resized, ImageNet-normalised input (independent path)."""
    res = enc.resolutions[j]
    y = x if res == x.shape[-1] else F.interpolate(
        x, size=(res, res), mode="bilinear", align_corners=False, antialias=True
    )  # fmt: skip
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return enc.branches[j].model.forward_features((y - mean) / std)


def set_gates(enc: PIIPEncoder, value: float) -> None:
    with torch.no_grad():
        for g in enc.gates():
            g.fill_(value)


# ------------------------------------------------------------------------------------------------
# zero gates: every branch computes exactly what it computes alone
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["regular", "deformable"])
def test_zero_gates_each_branch_equals_branch_alone(attn):
    enc = tiny_piip(attn=attn).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outs = enc.forward_branches(x)
        for j, out in enumerate(outs):
            alone = branch_alone(enc, j, x)
            assert out.shape == alone.shape
            assert (out - alone).abs().max().item() <= 1e-5
        # the interactions are wired in: non-zero gates change every branch
        set_gates(enc, 0.5)
        changed = enc.forward_branches(x)
    for j, out in enumerate(changed):
        assert (out - branch_alone(enc, j, x)).abs().max().item() > 1e-3


def test_two_branch_zero_gates_and_no_interactions():
    x = torch.rand(1, 3, 64, 64)
    for n in (0, 1):
        enc = tiny_piip(n_branches=2, resolutions=[64, 32], interactions=n).eval()
        with torch.no_grad():
            for j, out in enumerate(enc.forward_branches(x)):
                assert (out - branch_alone(enc, j, x)).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------------------------
# gradients: interactions and merging train, branches stay frozen
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["regular", "deformable"])
def test_gradients_reach_interactions_and_merge_not_branches(attn):
    enc = tiny_piip(attn=attn, pooling="grid:2").train()
    assert enc.trainable
    for b in enc.branches:  # frozen branches stay in eval mode in train()
        assert not b.training and not b.model.training
        assert all(not p.requires_grad for p in b.parameters())
    assert enc.interactions.training and enc.merge.training
    x = torch.rand(2, 3, 64, 64)
    target = torch.randn(2, enc.feature_dim)

    (enc(x) * target).sum().backward()
    for b in enc.branches:
        assert all(p.grad is None for p in b.parameters())
    gates = enc.gates()
    assert len(gates) == 2 * 2 * 2 * 2  # interactions x adjacent pairs x directions x (gamma, tau)
    for g in gates:
        assert g.grad is not None and g.grad.abs().sum() > 0
    for name, p in enc.merge.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    # with open gates every trainable parameter gets a gradient (behind-the-gate ones included);
    # deformable attention zero-initialises its offset/weight predictors (Deformable DETR), which
    # blocks the gradient to the query norm until a first step moves them: emulate that step
    set_gates(enc, 0.1)
    with torch.no_grad():
        for m in enc.modules():
            if isinstance(m, DeformableCrossAttention):
                m.sampling_offsets.weight.normal_(std=0.01)
                m.attention_weights.weight.normal_(std=0.01)
    enc.zero_grad(set_to_none=True)
    (enc(x) * target).sum().backward()
    for name, p in enc.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    trainable = sum(p.numel() for p in enc.trainable_parameters())
    d = enc.describe()
    assert d["trainable_params"] == trainable == d["interaction_params"] + d["merge_params"]
    assert d["frozen_params"] == d["branch_params"]
    assert d["params"] == d["frozen_params"] + d["trainable_params"]


def test_trainable_false_freezes_everything():
    enc = tiny_piip(n_branches=2, resolutions=[64, 32], trainable=False).train()
    assert not enc.trainable
    assert enc.describe()["trainable_params"] == 0
    assert not enc.interactions.training and not enc.merge.training


# ------------------------------------------------------------------------------------------------
# deformable attention reference checks
# ------------------------------------------------------------------------------------------------
def naive_bilinear(value_map: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value_map (H, W, C) at normalised (x, y), pixel-centre convention, zeros outside."""
    h, w, c = value_map.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(torch.floor(torch.tensor(px))), int(torch.floor(torch.tensor(py)))
    out = torch.zeros(c, dtype=value_map.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                out += wy * wx * value_map[yy, xx]
    return out


def test_reference_points_are_token_centres():
    ref = reference_points(2, 4)
    assert ref.shape == (8, 2)
    assert torch.allclose(ref[0], torch.tensor([0.125, 0.25]))
    assert torch.allclose(ref[6], torch.tensor([0.625, 0.75]))  # row 1, col 2


def test_deformable_zero_offsets_single_point_is_bilinear_at_reference_points():
    torch.manual_seed(0)
    dim, heads = 12, 3
    attn = DeformableCrossAttention(dim, num_heads=heads, num_points=1, kv_dim=dim)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.zero_()
        attn.attention_weights.weight.normal_()  # softmax over one point is 1 whatever the logits
    q_hw, v_hw = (3, 5), (4, 6)  # query map and value map of different sizes over the same image
    query = torch.randn(2, q_hw[0] * q_hw[1], dim)
    value = torch.randn(2, v_hw[0] * v_hw[1], dim)
    with torch.no_grad():
        out = attn(query, q_hw, value, v_hw)
        v = attn.value_proj(value).view(2, v_hw[0], v_hw[1], dim)
        ref = reference_points(*q_hw)
        expect = torch.stack(
            [
                torch.stack([naive_bilinear(v[b], float(rx), float(ry)) for rx, ry in ref])
                for b in range(2)
            ]
        )
        expect = attn.output_proj(expect)
    assert out.shape == (2, q_hw[0] * q_hw[1], dim)
    assert torch.allclose(out, expect, atol=1e-5)


def test_deformable_core_matches_naive_bilinear_and_pixel_centres():
    torch.manual_seed(1)
    b, h, w, heads, dh, nq, points = 2, 5, 7, 2, 3, 6, 3
    value = torch.randn(b, h * w, heads, dh)
    # random locations, some outside the map (zero padding), random weights
    loc = torch.rand(b, nq, heads, points, 2) * 1.4 - 0.2
    weights = torch.rand(b, nq, heads, points).softmax(-1)
    out = deformable_attention_core(value, (h, w), loc, weights)
    vm = value.view(b, h, w, heads, dh)
    expect = torch.zeros(b, nq, heads, dh)
    for bi in range(b):
        for q in range(nq):
            for hd in range(heads):
                for p in range(points):
                    s = naive_bilinear(
                        vm[bi, :, :, hd], float(loc[bi, q, hd, p, 0]), float(loc[bi, q, hd, p, 1])
                    )
                    expect[bi, q, hd] += weights[bi, q, hd, p] * s
    assert torch.allclose(out, expect.view(b, nq, heads * dh), atol=1e-5)

    # a location at an exact pixel centre returns that pixel's value
    i, j = 3, 4
    centre = (
        torch.tensor([(j + 0.5) / w, (i + 0.5) / h]).view(1, 1, 1, 1, 2).expand(b, 1, heads, 1, 2)
    )
    got = deformable_attention_core(value, (h, w), centre, torch.ones(b, 1, heads, 1))
    assert torch.allclose(got.view(b, heads, dh), vm[:, i, j], atol=1e-6)


def test_deformable_offsets_are_in_value_token_units():
    torch.manual_seed(2)
    dim = 6
    attn = DeformableCrossAttention(dim, num_heads=1, num_points=1)
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.tensor([1.0, 0.0]))  # one token to the right
        attn.value_proj.weight.copy_(torch.eye(dim))
        attn.value_proj.bias.zero_()
        attn.output_proj.weight.copy_(torch.eye(dim))
        attn.output_proj.bias.zero_()
    hw = (3, 4)
    value = torch.randn(1, 12, dim)
    with torch.no_grad():
        out = attn(torch.randn(1, 12, dim), hw, value, hw).view(3, 4, dim)
    vm = value.view(3, 4, dim)
    assert torch.allclose(out[:, :3], vm[:, 1:], atol=1e-6)
    assert torch.allclose(out[:, 3], torch.zeros(3, dim))  # sampled outside the map: zero padding


def test_regular_cross_attention_shapes():
    attn = CrossAttention(12, num_heads=3)
    out = attn(torch.randn(2, 5, 12), (1, 5), torch.randn(2, 7, 12), (1, 7))
    assert out.shape == (2, 5, 12)


# ------------------------------------------------------------------------------------------------
# shapes, configs, errors
# ------------------------------------------------------------------------------------------------
def test_shapes_pooling_and_inputs():
    enc = tiny_piip(pooling="cls").eval()
    assert enc.image_size == 64
    assert enc.merge_dim == 96 and enc.merge_size == 8  # widest branch, largest token map
    assert enc.grids == [(8, 8), (6, 6), (4, 4)]
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        tokens = enc.forward_tokens(x)
        feat = enc(x)
        feat_u8 = enc((x * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    assert tokens.shape == (3, 1 + 8 * 8, 96)
    assert feat.shape == (3, 96) == (3, enc.feature_dim)
    assert feat_u8.shape == feat.shape
    assert torch.allclose(feat, tokens[:, 0])
    for pooling, dim in (("mean", 96), ("cls+mean", 192), ("grid:4", 16 * 96)):
        e = tiny_piip(pooling=pooling, merge_dim=96).eval()
        with torch.no_grad():
            assert e(x).shape == (3, dim) == (3, e.feature_dim)
    e = tiny_piip(merge_dim=32, merge_size=4, pooling="grid:2").eval()
    with torch.no_grad():
        assert e.forward_tokens(x).shape == (3, 1 + 16, 32)
        assert e(x).shape == (3, 4 * 32)
    assert e.feature_shape == (4, 32)
    with pytest.raises(UserError, match="64x64"):
        enc(torch.rand(1, 3, 32, 32))


def test_interaction_index_ranges():
    assert even_interaction_indexes(12, 12) == [[i, i] for i in range(12)]
    assert even_interaction_indexes(24, 12)[:2] == [[0, 1], [2, 3]]
    assert even_interaction_indexes(12, 4) == [[0, 2], [3, 5], [6, 8], [9, 11]]
    assert even_interaction_indexes(5, 0) == [[0, 4]]
    enc = tiny_piip()  # depths 4, 2, 2; default: 2 interactions
    assert enc.interaction_indexes == [[[0, 1], [2, 3]], [[0, 0], [1, 1]], [[0, 0], [1, 1]]]
    assert len(enc.interactions) == 2 and len(enc.interactions[0]) == 2
    custom = [dict(TINY[0], interaction_indexes=[[0, 2], [3, 3]]), TINY[1]]
    enc = create_encoder("piip", branches=custom, resolutions=[64, 32], interactions=2)
    assert enc.interaction_indexes[0] == [[0, 2], [3, 3]]
    assert tiny_piip(interactions=None).n_interactions == 2  # the smallest depth


def test_describe_fingerprint_and_registry():
    enc = tiny_piip(n_branches=2, resolutions=[64, 32])
    d = enc.describe()
    assert d["name"] == "piip" and d["trainable"] is True and d["attn"] == "deformable"
    assert [b["resolution"] for b in d["branches"]] == [64, 32]
    assert d["config"]["resolutions"] == [64, 32]
    fp = enc.fingerprint()
    assert fp == tiny_piip(n_branches=2, resolutions=[64, 32]).fingerprint()
    set_gates(enc, 0.1)
    assert enc.fingerprint() != fp
    assert "piip" in list_encoders()
    for name in ("piip_ts_tiny", "piip_ts", "piip_tsb"):
        assert name in list_encoder_configs()
        cfg = resolve_encoder_config(name)
        assert cfg["name"] == "piip"
        assert len(cfg["branches"]) == len(cfg["resolutions"])
        assert cfg["resolutions"] == sorted(cfg["resolutions"], reverse=True)
        accepted = set(inspect.signature(PIIPEncoder).parameters)
        assert set(cfg) - {"name", "_label", *RUNTIME_OPTIONS} <= accepted


def test_branch_weights_from_files(tmp_path):
    """Per-branch weights: a timm checkpoint file and an MVP-style ``.pth`` (key ``model``)."""
    import timm

    from robo_s2.encoders.mvp import build_mvp_vit

    torch.manual_seed(3)
    kwargs = TINY[0]["model_kwargs"]
    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, **kwargs)
    torch.save(src.state_dict(), tmp_path / "tiny.pth")
    mvp = build_mvp_vit("vit_s16", 224)
    torch.save({"model": mvp.state_dict()}, tmp_path / "mvp_s.pth")
    branches = [
        dict(TINY[0], weights=str(tmp_path / "tiny.pth")),  # pretrained implied by weights
        {"name": "mvp", "arch": "vit_s16", "weights": str(tmp_path / "mvp_s.pth")},
    ]
    enc = create_encoder("piip", branches=branches, resolutions=[64, 32], interactions=2)
    own = enc.branches[0].model.state_dict()
    for k, v in src.state_dict().items():
        if k in own:
            assert torch.equal(own[k], v), k
    mvp_own = enc.branches[1].model.state_dict()
    assert torch.equal(
        mvp_own["blocks.0.attn.qkv.weight"], mvp.state_dict()["blocks.0.attn.qkv.weight"]
    )
    assert enc.branches[1].model.pos_embed.shape[1] == 1 + 2 * 2  # 14x14 resampled to 32px / 16
    assert [b["pretrained"] for b in enc.describe()["branches"]] == [True, True]
    with pytest.raises(UserError, match="does not exist"):
        create_encoder("piip", branches=[dict(TINY[0], weights=str(tmp_path / "no.pth")), TINY[1]],
                       resolutions=[64, 32], interactions=2)  # fmt: skip


def test_tiny_config_builds_and_runs():
    torch.manual_seed(0)
    enc = create_encoder("piip_ts_tiny").eval()
    assert enc.label == "piip_ts_tiny"
    assert enc.image_size == 224 and enc.resolutions == [224, 112]
    assert enc.widths == [192, 384] and enc.n_interactions == 4
    with torch.no_grad():
        out = enc(torch.rand(1, 3, 224, 224))
    assert out.shape == (1, enc.feature_dim) == (1, 16 * 384)
    assert torch.isfinite(out).all()


def _with_indexes(ranges: list) -> list:
    return [dict(TINY[0], interaction_indexes=ranges), TINY[1], TINY[2]]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(resolutions=[64, 32]), "branch count mismatch"),
        (dict(resolutions=[64, 48, 30]), "not divisible by its patch size"),
        (dict(attn="sparse"), "unknown PIIP attn 'sparse'"),
        (dict(resolutions=[32, 48, 64]), "largest resolution to the smallest"),
        (dict(num_heads=5), "num_heads=5 does not divide"),
        (dict(interactions=3), "between 0 and the smallest branch depth"),
        (dict(resize="nearest"), "unknown PIIP resize"),
        (dict(pooling="grid:9"), "grid"),
        (dict(branches=TINY[:1], resolutions=[64]), "at least 2 branches"),
        (dict(branches=_with_indexes([[0, 1], [3, 3]])), "contiguous"),
        (dict(branches=_with_indexes([[0, 1], [2, 2]])), "must end at block 3"),
        (dict(branches=_with_indexes([[0, 3]])), "1 interaction_indexes ranges for 2"),
        (dict(branches=[{"model": "resnet18"}, TINY[1], TINY[2]]), "VisionTransformer"),
        (dict(bogus=1), "has no option 'bogus'"),
    ],
)  # fmt: skip
def test_bad_configs_are_user_errors(overrides, match):
    cfg = dict(branches=TINY, resolutions=RES3, interactions=2)
    cfg.update(overrides)
    with pytest.raises(UserError, match=match):
        create_encoder("piip", **cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("attn", ["regular", "deformable"])
def test_cuda_matches_cpu(attn):
    enc = tiny_piip(attn=attn, pooling="grid:2").eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        zero_cpu = [t.clone() for t in enc.forward_branches(x)]
        set_gates(enc, 0.3)
        ref = enc(x)
        enc = enc.cuda()
        xc = x.cuda()
        out = enc(xc)
        assert torch.allclose(out.cpu(), ref, atol=1e-4, rtol=1e-4)
        set_gates(enc, 0.0)
        for j, t in enumerate(enc.forward_branches(xc)):
            assert (t.cpu() - zero_cpu[j]).abs().max().item() <= 1e-4
            assert (t - branch_alone(enc, j, xc)).abs().max().item() <= 1e-5
        with torch.autocast("cuda", dtype=torch.bfloat16):
            set_gates(enc, 0.3)
            half = enc(xc)
        assert torch.isfinite(half).all()
    enc.train()
    set_gates(enc, 0.1)
    enc(xc).sum().backward()
    assert all(g.grad is not None for g in enc.gates())


# ------------------------------------------------------------------------------------------------
# a trained PIIP loaded back as a (frozen) encoder: weights=<encoder.safetensors or its directory>
def _trained_file(enc: PIIPEncoder, path, config: dict | None = None):
    """``enc``'s weights as robo-s2 train writes them beside a checkpoint (tensors + options)."""
    import json

    from safetensors.torch import save_file

    from robo_s2.encoders.base import TRAINED_CONFIG_KEY

    path.mkdir(parents=True, exist_ok=True)
    meta = {TRAINED_CONFIG_KEY: json.dumps(config or enc.config)}
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()},
              str(path / "encoder.safetensors"), metadata=meta)  # fmt: skip
    return path / "encoder.safetensors"


def test_trained_weights_load_every_tensor_and_freeze(tmp_path):
    trained = tiny_piip(n_branches=2, resolutions=[64, 32], pooling="grid:2")
    set_gates(trained, 0.3)  # as if trained: the interactions now change the branches' tokens
    with torch.no_grad():
        trained.merge.weights.mul_(0.5)
    _trained_file(trained, tmp_path / "ckpt")
    x = torch.rand(3, 3, 64, 64)
    for where in (tmp_path / "ckpt", tmp_path / "ckpt" / "encoder.safetensors"):
        # another init seed: the file, not the seed, decides every tensor
        frozen = tiny_piip(n_branches=2, resolutions=[64, 32], pooling="grid:2", seed=5,
                           weights=str(where), trainable=False)  # fmt: skip
        assert not frozen.trainable and not frozen.trainable_parameters()
        assert frozen.config["weights"] == str(where)
        with torch.no_grad():
            torch.testing.assert_close(frozen(x), trained.eval()(x), rtol=0, atol=0)
    # pooling reads the merged map and may differ from training
    mean = tiny_piip(n_branches=2, resolutions=[64, 32], pooling="mean",
                     weights=str(tmp_path / "ckpt"), trainable=False)  # fmt: skip
    with torch.no_grad():
        tokens = trained.forward_tokens(x)
        torch.testing.assert_close(mean.forward_tokens(x), tokens, rtol=0, atol=0)
    # without the option the config (and so every fingerprint made before it) is unchanged
    assert "weights" not in tiny_piip(n_branches=2, resolutions=[64, 32]).config


def test_trained_weights_of_another_architecture_are_refused(tmp_path):
    trained = tiny_piip(n_branches=2, resolutions=[64, 32])
    _trained_file(trained, tmp_path / "a")
    kw = dict(n_branches=2, weights=str(tmp_path / "a"), trainable=False)
    with pytest.raises(UserError, match=r"trained with resize='bilinear', this PIIP has "
                       r"resize='area'; build it with the options it was trained with"):  # fmt: skip
        tiny_piip(resolutions=[64, 32], resize="area", **kw)  # same tensors, other computation
    with pytest.raises(
        UserError,
        match=r"trained with merge_size=8, resolutions=\[64, 32\]"
        r".*has merge_size=6, resolutions=\[48, 32\]",
    ):
        tiny_piip(resolutions=[48, 32], **kw)
    with pytest.raises(UserError, match=r"branches\.1\.model_kwargs\.embed_dim"):
        create_encoder("piip", branches=[TINY[0], TINY[2]], resolutions=[64, 32], interactions=2,
                       weights=kw["weights"], trainable=False)  # fmt: skip
    # a file that records no options: its tensors must still fit exactly
    from safetensors.torch import save_file

    (tmp_path / "b").mkdir()
    other = tiny_piip(n_branches=2, resolutions=[64, 32], interactions=1)
    save_file(dict(other.state_dict()), str(tmp_path / "b" / "encoder.safetensors"))
    with pytest.raises(
        UserError, match="does not fit this PIIP: .*build the PIIP with the options"
    ):
        tiny_piip(resolutions=[64, 32], **dict(kw, weights=str(tmp_path / "b")))
    _trained_file(trained, tmp_path / "c", config={"name": "timm", "model": "vit_tiny"})
    with pytest.raises(UserError, match="are of encoder 'timm', not a PIIP"):
        tiny_piip(resolutions=[64, 32], **dict(kw, weights=str(tmp_path / "c")))
    with pytest.raises(UserError, match="not found; point weights= to a trained PIIP"):
        tiny_piip(resolutions=[64, 32], **dict(kw, weights=str(tmp_path / "none")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "encoder.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="truncated or corrupt"):
        tiny_piip(resolutions=[64, 32], **dict(kw, weights=str(tmp_path / "d")))
