"""Encoders: registry, timm backbones, MVP checkpoints, pooling, fingerprints, configs, report."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest
import timm
import torch
from omegaconf import OmegaConf
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from robo_s2.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VisionEncoder,
    create_encoder,
    list_encoder_configs,
    list_encoders,
    load_encoder_config,
    register_encoder,
    resolve_encoder_config,
)
from robo_s2.encoders.pooling import Pooling, pool_tokens
from robo_s2.encoders.profile import count_gflops, format_table, profile_encoder
from robo_s2.encoders.registry import random_weights
from robo_s2.errors import UserError

TINY = {"depth": 1, "embed_dim": 48, "num_heads": 3}
OURS = ["vit_t", "vit_t_s2", "vit_s", "vit_b", "vit_b_s2", "vit_l", "mvp_b", "mvp_b_s2", "mvp_l"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw):
    kw.setdefault("image_size", 64)
    kw.setdefault("model_kwargs", TINY)
    return create_encoder("timm", model="vit_tiny_patch16_224", **kw)


def imagenet(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )


# --- registry ------------------------------------------------------------------------------------
def test_registry_names_and_unknown_name():
    assert {"timm", "mvp", "s2"} <= set(list_encoders())
    assert set(OURS) <= set(list_encoder_configs())
    with pytest.raises(UserError) as err:
        create_encoder("vit_tiny_patch16_2244")
    msg = str(err.value)
    assert "unknown encoder 'vit_tiny_patch16_2244'" in msg
    assert "timm" in msg and "mvp" in msg and "s2" in msg and "vit_t_s2" in msg
    assert "did you mean vit_tiny_patch16_224" in msg


def test_create_from_name_dict_dictconfig_and_overrides():
    cfg = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 64, "model_kwargs": TINY}
    a = create_encoder(cfg)
    b = create_encoder(OmegaConf.create(cfg), pooling="mean")
    assert a.config["pooling"] == "cls" and b.config["pooling"] == "mean"
    assert a.feature_dim == b.feature_dim == 48
    c = create_encoder("vit_t", image_size=64, model_kwargs=TINY)  # a config file + overrides
    assert c.label == "vit_t" and c.describe()["label"] == "vit_t"
    assert c.config["model"] == "vit_tiny_patch16_224" and c.image_size == 64
    d = create_encoder("vit_tiny_patch16_224", image_size=64, model_kwargs=TINY)  # a timm name
    assert d.config["name"] == "timm" and d.label == "vit_tiny_patch16_224"
    nested = resolve_encoder_config("vit_t_s2", backbone={"image_size": 64})
    assert (
        nested["backbone"]["image_size"] == 64
        and nested["backbone"]["model"] == "vit_tiny_patch16_224"
    )


def test_unknown_option_and_missing_value_are_user_errors():
    with pytest.raises(UserError, match="has no option 'imgsize'"):
        create_encoder("timm", imgsize=64)
    with pytest.raises(UserError, match="needs a value for weights"):
        create_encoder("mvp_b")
    with pytest.raises(UserError, match="needs a value for weights"):
        create_encoder("mvp_b_s2")
    with pytest.raises(UserError, match="no 'name' key"):
        create_encoder({"model": "vit_tiny_patch16_224"})
    with pytest.raises(UserError, match="unknown pooling"):
        tiny(pooling="max")
    with pytest.raises(UserError, match="unknown normalize"):
        tiny(normalize="zscore")


def test_register_encoder_timm_style(monkeypatch):
    from robo_s2.encoders import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Const(VisionEncoder):
        def __init__(self, width: int = 4) -> None:
            super().__init__()
            self.feature_dim, self.image_size = width, 32
            self.set_config("test_const_encoder", width=width)

        def forward_tokens(self, images):
            return self.prepare(images).mean(dim=(2, 3), keepdim=True).flatten(2).transpose(1, 2)

        def forward(self, images):
            return self.forward_tokens(images)[:, 0, :1].expand(-1, self.feature_dim)

    register_encoder("test_const_encoder", Const)
    register_encoder("test_const_encoder", Const)  # re-registering the same factory is fine
    enc = create_encoder("test_const_encoder", width=3)
    assert enc(torch.rand(2, 32, 32, 3).mul(255).to(torch.uint8)).shape == (2, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("test_const_encoder", lambda: None)


# --- timm backbones ------------------------------------------------------------------------------
def test_timm_backbone_frozen_normalised_and_cls_after_norm():
    enc = tiny()
    assert enc.image_size == 64 and enc.feature_dim == 48 and not enc.trainable
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training and not any(m.training for m in enc.model.modules())
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        ref = enc.model.forward_features(imagenet(x))  # final LayerNorm included
        assert torch.allclose(enc.forward_tokens(x), ref, atol=1e-6)
        assert torch.allclose(enc(x), ref[:, 0], atol=1e-6)
        frames = (x * 255).round().to(torch.uint8)
        assert torch.allclose(enc(frames.permute(0, 2, 3, 1)), enc(frames.float() / 255), atol=1e-6)
    with pytest.raises(UserError, match="32x32 frames; the encoder needs 64x64"):
        enc(torch.rand(1, 3, 32, 32))


def test_trainable_backbone_trains():
    enc = tiny(trainable=True)
    assert enc.trainable and all(p.requires_grad for p in enc.parameters())
    enc.train()
    assert enc.model.training


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No hub and an empty HF cache: timm must fail fast, and we must say so."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def test_pretrained_unavailable_is_a_clear_error(offline_hub):
    with pytest.raises(UserError, match="pretrained weights for timm model 'vit_tiny_patch16_224'"):
        create_encoder("timm", model="vit_tiny_patch16_224", pretrained=True)
    # a model whose weights source is gone: timm's own "no pretrained weights" also surfaces
    overlay = {"pretrained_cfg_overlay": {"hf_hub_id": "", "url": ""}, **TINY}
    with pytest.raises(UserError, match="pretrained=false"):
        tiny(pretrained=True, model_kwargs=overlay)


def test_pretrained_from_local_file(tmp_path):
    torch.manual_seed(3)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, **TINY)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    enc = tiny(pretrained=True, weights=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    with pytest.raises(UserError, match="does not exist"):
        tiny(pretrained=True, weights=str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="pretrained=false"):
        tiny(pretrained=False, weights=str(path))
    wrong = {**TINY, "embed_dim": 96}
    with pytest.raises(UserError, match="could not be loaded from"):
        tiny(pretrained=True, weights=str(path), model_kwargs=wrong)


def test_unknown_timm_model():
    with pytest.raises(UserError, match="timm has no model 'vit_tiny_patch16_2244'"):
        create_encoder("timm", model="vit_tiny_patch16_2244")


# --- pooling -------------------------------------------------------------------------------------
def test_pooling_values():
    b, c = 2, 5
    tokens = torch.randn(b, 1 + 16, c)
    patches = tokens[:, 1:].reshape(b, 4, 4, c)
    assert torch.equal(pool_tokens(tokens, "cls", 1), tokens[:, 0])
    assert torch.allclose(pool_tokens(tokens, "mean", 1), tokens[:, 1:].mean(1))
    assert torch.allclose(
        pool_tokens(tokens, "cls+mean", 1), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], -1)
    )
    g = pool_tokens(tokens, "grid:2", 1).view(b, 4, c)  # cell-major, channels last
    assert torch.allclose(g[:, 0], patches[:, :2, :2].mean((1, 2)), atol=1e-6)
    assert torch.allclose(g[:, 1], patches[:, :2, 2:].mean((1, 2)), atol=1e-6)  # row 0, col 1
    assert torch.allclose(g[:, 2], patches[:, 2:, :2].mean((1, 2)), atol=1e-6)
    assert torch.allclose(pool_tokens(tokens, "grid:4", 1), patches.reshape(b, -1), atol=1e-6)
    assert pool_tokens(tokens, "grid:3", 1).shape == (b, 9 * c)  # adaptive bins
    assert (
        Pooling.parse("grid:4").out_dim(c) == 16 * c and str(Pooling.parse(" Grid:4 ")) == "grid:4"
    )
    with pytest.raises(UserError, match="needs a CLS token"):
        pool_tokens(tokens[:, 1:], "cls", 0)
    with pytest.raises(UserError, match="only a 4x4"):
        pool_tokens(tokens, "grid:5", 1)
    with pytest.raises(UserError, match="unknown pooling"):
        Pooling.parse("grid:0")


@pytest.mark.parametrize(
    "pooling, shape", [("cls", (1, 48)), ("cls+mean", (2, 48)), ("grid:2", (4, 48))]
)
def test_encoder_pooling_shapes(pooling, shape):
    enc = tiny(pooling=pooling)
    with torch.no_grad():
        out = enc(torch.rand(2, 3, 64, 64))
    assert enc.feature_shape == shape and out.shape == (2, shape[0] * shape[1])
    assert enc.describe()["feature_shape"] == list(shape)


def test_no_cls_model_rejects_cls_pooling():
    kw = {**TINY, "class_token": False, "global_pool": "avg"}
    with pytest.raises(UserError, match="CLS"):
        tiny(model_kwargs=kw)
    enc = tiny(model_kwargs=kw, pooling="mean")
    assert enc.num_prefix_tokens == 0 and enc(torch.rand(1, 3, 64, 64)).shape == (1, 48)


# --- fingerprints / describe ---------------------------------------------------------------------
def test_fingerprint_tracks_config_and_weights():
    a = tiny()
    fp = a.fingerprint()
    assert fp == a.fingerprint() and len(fp) == 64
    b = tiny()
    b.load_state_dict(a.state_dict())
    assert b.fingerprint() == fp  # same config and weights: same fingerprint in another instance
    c = tiny(pooling="mean")
    c.load_state_dict(a.state_dict())
    assert c.fingerprint() != fp  # config changed
    with torch.no_grad():
        b.model.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert b.fingerprint() != fp  # a weight changed (in place)
    d = a.describe()
    assert d["params"] == sum(p.numel() for p in a.parameters()) and d["trainable_params"] == 0
    assert d["feature_dim"] == 48 and d["image_size"] == 64 and d["name"] == "timm"


def test_random_init_is_reproducible_across_processes():
    """A random-init encoder must be the same in every process (training vs evaluation)."""
    code = (
        "from robo_s2.encoders import create_encoder;"
        "print(create_encoder('vit_t', image_size=64, model_kwargs={'depth': 1}).fingerprint())"
    )
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    torch.rand(3)  # the global RNG state must not matter
    here = create_encoder("vit_t", image_size=64, model_kwargs={"depth": 1})
    assert other.stdout.strip() == here.fingerprint()
    reseeded = create_encoder("vit_t", image_size=64, model_kwargs={"depth": 1}, seed=1)
    assert reseeded.fingerprint() != here.fingerprint()
    state = torch.random.get_rng_state()
    tiny()
    assert torch.equal(torch.random.get_rng_state(), state)  # building leaves the RNG alone


# --- MVP checkpoints -----------------------------------------------------------------------------
def mvp_vit(embed_dim=384, depth=12, num_heads=12, img_size=224) -> VisionTransformer:
    """MVP's ViT, written independently of robo_s2 (as in MVP's mvp/backbones/vit.py)."""
    return VisionTransformer(
        img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0,
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def mvp_s(tmp_path_factory):
    torch.manual_seed(7)
    vit = mvp_vit()
    path = tmp_path_factory.mktemp("mvp") / "mvp_vits.pth"
    torch.save({"model": vit.state_dict()}, path)
    return vit, path


def test_mvp_small_has_12_heads_and_cls_after_norm(mvp_s):
    vit, path = mvp_s
    enc = create_encoder("mvp", weights=str(path), arch="vit_s16")
    assert enc.image_size == 224 and enc.feature_dim == 384 and not enc.trainable
    assert enc.model.blocks[0].attn.num_heads == 12
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        # MVP: norm(x[:, 0]) after the blocks, on ImageNet-normalised pixels
        h = vit.patch_embed(imagenet(x))
        h = torch.cat([vit.cls_token.expand(2, -1, -1), h], dim=1) + vit.pos_embed
        for blk in vit.blocks:
            h = blk(h)
        ref = vit.norm(h[:, 0])
        feat = enc(x)
        assert (feat - ref).abs().max().item() < 1e-5
        six = mvp_vit(num_heads=6)
        six.load_state_dict(vit.state_dict())
        timm_s = six.forward_features(imagenet(x))[:, 0]  # timm's ViT-S (6 heads), same weights
        assert (feat - timm_s).abs().max().item() > 1e-3


def test_mvp_ignores_mae_pretraining_keys(mvp_s, tmp_path):
    vit, _ = mvp_s
    state = dict(vit.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 512)
    state["decoder_embed.weight"] = torch.zeros(512, 384)
    state["decoder_pred.bias"] = torch.zeros(768)
    path = tmp_path / "mae.pth"
    torch.save({"model": state, "epoch": 799}, path)
    enc = create_encoder("mvp", weights=str(path), arch="vit_s16")
    assert torch.equal(enc.model.norm.weight, vit.norm.weight)


def test_mvp_strict_loading_names_keys(mvp_s, tmp_path):
    vit, _ = mvp_s
    state = dict(vit.state_dict())
    del state["norm.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(3)
    path = tmp_path / "bad_keys.pth"
    torch.save({"model": state}, path)
    with pytest.raises(UserError) as err:
        create_encoder("mvp", weights=str(path), arch="vit_s16")
    assert "missing keys [norm.weight]" in str(err.value)
    assert "unexpected keys [blocks.0.extra.weight]" in str(err.value)


def test_mvp_bad_files(mvp_s, tmp_path):
    _, good = mvp_s
    with pytest.raises(UserError, match="does not exist"):
        create_encoder("mvp", weights=str(tmp_path / "nope.pth"), arch="vit_s16")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"definitely not a checkpoint " * 10)
    with pytest.raises(UserError, match="not a torch checkpoint"):
        create_encoder("mvp", weights=str(corrupt), arch="vit_s16")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UserError, match="not a torch checkpoint"):
        create_encoder("mvp", weights=str(truncated), arch="vit_s16")
    nomodel = tmp_path / "nomodel.pth"
    torch.save({"state_dict": {}}, nomodel)
    with pytest.raises(UserError, match="no 'model' entry"):
        create_encoder("mvp", weights=str(nomodel), arch="vit_s16")
    with pytest.raises(UserError, match=r"wrong architecture.*set arch=vit_s16"):
        create_encoder("mvp", weights=str(good), arch="vit_b16")
    with pytest.raises(UserError, match="unknown MVP arch"):
        create_encoder("mvp", weights=str(good), arch="vit_h14")


def test_mvp_native_size_and_pos_embed_resampling(tmp_path):
    torch.manual_seed(0)
    vit = mvp_vit(img_size=256)  # MVP's ViT-L was trained at 256²; same mechanics on ViT-S
    path = tmp_path / "mvp_256.pth"
    torch.save({"model": vit.state_dict()}, path)
    native = create_encoder("mvp", weights=str(path), arch="vit_s16", image_size=None)
    assert native.image_size == 256 and native.describe()["native_size"] == 256
    assert torch.equal(native.model.pos_embed, vit.pos_embed)
    at224 = create_encoder("mvp", weights=str(path), arch="vit_s16", image_size=224)
    assert at224.image_size == 224 and at224.model.pos_embed.shape == (1, 197, 384)
    with torch.no_grad():
        assert at224(torch.rand(1, 3, 224, 224)).shape == (1, 384)


def test_mvp_config_rows():
    for name, arch in [("mvp_b", "vit_b16"), ("mvp_b_s2", "vit_b16"), ("mvp_l", "vit_l16")]:
        cfg = resolve_encoder_config(name)
        inner = cfg.get("backbone", cfg)
        assert inner["arch"] == arch and cfg["weights"] == "???"
    with random_weights():  # architecture only: params of MVP-B
        enc = create_encoder("mvp_b")
    assert enc.config["weights"] is None and enc.num_parameters() == 85_798_656


# --- configs -------------------------------------------------------------------------------------
def test_config_rows():
    for name in OURS:
        cfg = load_encoder_config(name)
        assert cfg["name"] in list_encoders(), name
        assert "pooling" in cfg, name
        if cfg["name"] == "s2":
            assert cfg["scales"] == [1, 2] and cfg["source"] in ("upsample", "native"), name
    for name in ["vit_t", "vit_t_s2", "vit_s"]:
        cfg = load_encoder_config(name)
        assert cfg.get("backbone", cfg)["pretrained"] is False, name
    for name in ["vit_b", "vit_b_s2", "vit_l"]:
        cfg = load_encoder_config(name)
        assert cfg.get("backbone", cfg)["pretrained"] is True, name


def test_small_rows_build_and_run():
    x = torch.rand(1, 3, 224, 224)
    dims = {}
    with torch.no_grad():
        for name in ["vit_t", "vit_t_s2", "vit_s"]:
            shallow = {"model_kwargs": {"depth": 1}}
            enc = create_encoder(name, **({"backbone": shallow} if "s2" in name else shallow))
            assert enc(x).shape == (1, enc.feature_dim)
            dims[name] = enc.feature_dim
    assert dims == {"vit_t": 192, "vit_t_s2": 384, "vit_s": 384}


# --- profile and report --------------------------------------------------------------------------
def test_gflops_count_attention_and_s2_tiles():
    single = tiny()
    s2 = create_encoder(
        "s2",
        backbone={
            "name": "timm",
            "model": "vit_tiny_patch16_224",
            "image_size": 64,
            "model_kwargs": TINY,
        },
    )
    g1, g2 = count_gflops(single), count_gflops(s2)
    # one ViT block, 17 tokens, width 48: qkv, proj, mlp (4x) + attention (q@k, attn@v); 2/MAC
    n, c = 17, 48
    block = 2 * n * c * (3 * c + c + 8 * c) + 2 * 2 * n * n * c
    embed = 2 * 16 * (3 * 16 * 16) * c
    assert g1 == pytest.approx((block + embed) / 1e9, rel=0.02)
    assert g2 == pytest.approx(5 * g1, rel=0.02)  # (1, 2): 1 + 4 tiles


def test_profile_and_table():
    p = profile_encoder(
        tiny(pooling="grid:2"),
        batch_sizes=[1, 2],
        device="cpu",
        min_time=0.0,
        min_iters=1,
        warmup=0,
    )
    assert (
        p.params > 0
        and p.gflops > 0
        and set(p.fps) == {1, 2}
        and all(v > 0 for v in p.fps.values())
    )
    assert p.feature_dim == 192 and p.feature_shape == [4, 48]
    table = format_table([p])
    assert "GFLOPs/frame" in table and "frames/s @2" in table and "192 (4x48)" in table
    assert json.loads(json.dumps(p.to_dict()))["fps"]["1"] > 0


def test_report_command(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "robo_s2", "encoders", "names=[vit_t]", "batch_sizes=[1]",
         "min_time=0", "threads=1", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "vit_t" in out.stdout and "GFLOPs/frame" in out.stdout
    record = json.loads((tmp_path / "encoders.json").read_text())
    row = record["encoders"][0]
    assert row["name"] == "vit_t" and row["feature_dim"] == 192 and row["params"] == 5_524_416
    assert row["gmacs"] == pytest.approx(1.26, abs=0.02)  # ViT-Ti/16 at 224²
    assert (tmp_path / "encoders.md").read_text().startswith("# Encoders")


def test_report_command_checks_names_before_work(tmp_path, monkeypatch):
    from robo_s2.commands.encoders import run

    monkeypatch.chdir(tmp_path)
    from robo_s2.core.config import load_config

    cfg = load_config("encoders", ["names=[vit_t,vit_q]", "batch_sizes=[1]", "device=cpu"])
    with pytest.raises(UserError, match="unknown encoder 'vit_q'"):
        run(cfg)
    assert not (tmp_path / "encoders.json").exists()


def test_piip_mae_ts_is_compute_matched_to_vit_s_at_64():
    """The tables' PIIP row is marked compute-matched to ViT-S at 64²; the report measures both."""
    from types import SimpleNamespace

    from robo_s2.commands.encoders import compute_matched_notes
    from robo_s2.encoders.profile import count_gflops
    from robo_s2.encoders.registry import random_weights

    with random_weights():  # GFLOPs do not depend on the weights (no MAE files needed)
        piip = create_encoder("piip_mae_ts").eval()
    assert piip.resolutions == [80, 48] and piip.n_interactions == 2
    profile = SimpleNamespace(name="piip_mae_ts", gflops=count_gflops(piip))
    (note,) = compute_matched_notes([profile], {}, use_random=False)
    assert "is compute-matched to name=vit_s, image_size=64" in note, note
    assert "+3.0%" in note


SMALL_VIT = {"image_size": 32, "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 3}}


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vit_t", SMALL_VIT),
        ("vit_t_s2", {"backbone": SMALL_VIT}),
        ("vit_t_s2sel", {"backbone": SMALL_VIT, "k": 2}),
        ("piip_ts_tiny", {}),
        ("resnet18_e2e", {}),
        ("oracle", {}),
    ],
)
def test_an_encoders_recorded_config_rebuilds_it(name, overrides):
    """What a checkpoint stores (``encoder.config``) is what evaluation rebuilds from: it must
    give the same encoder, fingerprint and all."""
    enc = create_encoder(name, **overrides)
    again = create_encoder(json.loads(json.dumps(enc.config)))  # as read back from the file
    assert type(again) is type(enc)
    assert again.fingerprint() == enc.fingerprint()


@pytest.mark.parametrize("name, kw", [("vit_t", {}), ("mvp_s", {"weights": "none"})])
def test_upsample_from_runs_the_network_on_bicubic_upsampled_frames(name, kw):
    """A model at a larger scale fed the small frames upsampled (the S² paper's control): frames
    are checked and cached at the small size, the network runs at image_size."""
    import torch.nn.functional as F

    enc = create_encoder(name, image_size=64, upsample_from=32, pooling="grid:2", **kw)
    ref = create_encoder(name, image_size=64, pooling="grid:2", **kw)
    assert (enc.image_size, enc.model_size) == (32, 64)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    up = F.interpolate(x, size=(64, 64), mode="bicubic")
    torch.testing.assert_close(enc(x), ref(up), atol=1e-6, rtol=0)
    assert enc.fingerprint() != ref.fingerprint()  # a cache of one is never read for the other
    again = create_encoder(enc.config)  # the config a checkpoint records rebuilds it
    assert (again.image_size, again.model_size) == (32, 64)
    with pytest.raises(UserError, match="upsample_from=64 must be smaller than image_size=64"):
        create_encoder(name, image_size=64, upsample_from=64, **kw)
