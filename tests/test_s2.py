"""S²: ours against the official ``s2wrapper.forward``, tile order, native source, bad input."""

from __future__ import annotations

import pytest
import s2wrapper
import timm
import torch
import torch.nn.functional as F
from torch import nn

from robo_s2.encoders import create_encoder
from robo_s2.encoders.s2 import S2Encoder, plan_scales, s2_forward
from robo_s2.errors import UserError

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    """A small random-init timm ViT: 64² inputs, 16px patches, CLS token, learned pos-embed."""
    torch.manual_seed(0)
    m = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64, depth=2, embed_dim=48,
        num_heads=3,
    )  # fmt: skip
    with torch.no_grad():  # pos-embed large enough that every token position matters
        m.pos_embed.normal_(0, 1.0)
    return m.eval()


def _images(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("scales", [(1, 2), (1, 2, 3)])
@pytest.mark.parametrize("num_prefix", [1, 0])
def test_matches_official_wrapper(vit, scales, num_prefix):
    model = vit.forward_features if num_prefix else (lambda x: vit.forward_features(x)[:, 1:])
    x = _images()
    with torch.no_grad():
        ref = s2wrapper.forward(model, x, scales=list(scales), num_prefix_token=num_prefix)
        ours = s2_forward(model, x, scales=list(scales), num_prefix_token=num_prefix)
    assert ours.shape == ref.shape == (2, num_prefix + 16, 48 * len(scales))
    assert (ours - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("tiles", [None, 1, 3, 8])
def test_passes_of_tiles_change_nothing(vit, tiles):
    x = _images(b=3)
    with torch.no_grad():
        ref = s2wrapper.forward(vit.forward_features, x, scales=[1, 2, 3], num_prefix_token=1)
        ours = s2_forward(
            vit.forward_features, x, scales=[1, 2, 3], num_prefix_token=1, max_tiles_per_pass=tiles
        )
    assert (ours - ref).abs().max().item() <= TOL


def test_matches_official_wrapper_img_sizes_and_other_options(vit):
    x = _images(b=3)
    model = vit.forward_features
    with torch.no_grad():
        for kwargs in (
            dict(img_sizes=[64, 128, 192]),
            dict(scales=[1, 2], resize_output_to_idx=1),
            dict(scales=[2, 1]),
            dict(scales=[1, 2], max_split_size=64),
        ):
            ref = s2wrapper.forward(model, x, num_prefix_token=1, **kwargs)
            ours = s2_forward(model, x, num_prefix_token=1, **kwargs)
            assert ours.shape == ref.shape, kwargs
            assert (ours - ref).abs().max().item() <= TOL, kwargs


def test_matches_official_wrapper_for_convnet_maps():
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)
    ).eval()
    x = _images(size=32)
    with torch.no_grad():
        ref = s2wrapper.forward(conv, x, scales=[0.5, 1, 2], output_shape="bchw")
        ours = s2_forward(conv, x, scales=[0.5, 1, 2], output_shape="bchw")
    assert ours.shape == ref.shape == (2, 24, 2, 2)
    assert (ours - ref).abs().max().item() <= TOL


class PatchProbe(nn.Module):
    """Toy "ViT": one CLS token + one token per patch holding the patch's mean colour and its
    position inside the tile (row, col). A transposed or permuted tile merge cannot match."""

    def __init__(self, patch: int = 8) -> None:
        super().__init__()
        self.patch = patch
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        b, _, s, _ = x.shape
        g = s // self.patch
        colour = F.avg_pool2d(x, self.patch).flatten(2).transpose(1, 2)  # (b, g*g, 3)
        rows = torch.arange(g).repeat_interleave(g).float()
        cols = torch.arange(g).repeat(g).float()
        pos = torch.stack([rows, cols], dim=-1).expand(b, -1, -1)
        tokens = torch.cat([colour, pos], dim=-1)  # (b, g*g, 5)
        cls = x.mean(dim=(2, 3)).unsqueeze(1)
        cls = torch.cat([cls, torch.zeros(b, 1, 2)], dim=-1)
        return torch.cat([cls, tokens], dim=1)


def test_tile_order_against_independent_ground_truth():
    probe = PatchProbe(patch=8)
    x = _images(b=2, size=32)
    out = s2_forward(probe, x, scales=[1, 2], num_prefix_token=1)  # (2, 1 + 16, 10)
    assert probe.calls == 1  # one batched pass for all tiles of all scales
    patches = out[:, 1:].reshape(2, 4, 4, 10)
    # scale 1: patch colours of the image itself, positions 0..3
    expect1 = F.avg_pool2d(x, 8).permute(0, 2, 3, 1)
    assert torch.allclose(patches[..., :3], expect1, atol=1e-6)
    # scale 2: tiles of the 64² image merged back = patch colours of the whole 64² image,
    # area-pooled 2x2 to 4x4 -> the 16px-block means of the bicubic-upsampled image
    up = F.interpolate(x, size=64, mode="bicubic")
    expect2 = F.avg_pool2d(up, 16).permute(0, 2, 3, 1)
    assert torch.allclose(patches[..., 5:8], expect2, atol=1e-6)
    # tile-local positions (0..3 in each 32² tile) pooled 2x2 -> 0.5, 2.5 repeating per tile
    local = torch.tensor([0.5, 2.5, 0.5, 2.5])
    assert torch.allclose(patches[0, :, :, 8], local.view(4, 1).expand(4, 4))
    assert torch.allclose(patches[0, :, :, 9], local.view(1, 4).expand(4, 4))
    # CLS: per-scale image means (scale 2: mean over the 4 tiles), concatenated
    assert torch.allclose(out[:, 0, :3], x.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(out[:, 0, 5:8], up.mean(dim=(2, 3)), atol=1e-6)
    # and the official wrapper agrees
    ref = s2wrapper.forward(probe, x, scales=[1, 2], num_prefix_token=1)
    assert (out - ref).abs().max().item() <= TOL


def test_wrong_tile_order_would_be_caught():
    """The probe distinguishes tile orders: a transposed merge gives a different map."""
    probe = PatchProbe(patch=8)
    x = _images(b=1, size=32)
    up = F.interpolate(x, size=64, mode="bicubic")
    tiles = up.reshape(1, 3, 2, 32, 2, 32).permute(2, 4, 0, 1, 3, 5).reshape(4, 3, 32, 32)
    out = probe(tiles)[:, 1:, :3].reshape(2, 2, 1, 4, 4, 3)
    right = out.permute(2, 0, 3, 1, 4, 5).reshape(1, 8, 8, 3)
    transposed = out.permute(2, 1, 3, 0, 4, 5).reshape(1, 8, 8, 3)
    assert not torch.allclose(right, transposed)
    assert torch.allclose(right, F.avg_pool2d(up, 8).permute(0, 2, 3, 1), atol=1e-6)


def test_native_source_uses_the_real_pixels(vit):
    model = vit.forward_features
    x_big = _images(size=128)
    with torch.no_grad():
        ours = s2_forward(
            model, x_big, scales=[1, 2], num_prefix_token=1, base_size=64, downsample="area"
        )
        small = F.avg_pool2d(x_big, 2)
        # scale 1 = the model on the area-downsized render; scale 2 = the 128² render's own tiles
        s1 = s2wrapper.forward(model, small, scales=[1], num_prefix_token=1)
        s2 = s2wrapper.forward(model, x_big, img_sizes=[128], max_split_size=64, num_prefix_token=1)
        s2 = torch.cat(
            [s2[:, :1], F.avg_pool2d(_grid(s2[:, 1:]), 2).flatten(2).transpose(1, 2)], dim=1
        )
    assert (ours[..., :48] - s1).abs().max().item() <= TOL
    assert (ours[..., 48:] - s2).abs().max().item() <= TOL


def _grid(tokens: torch.Tensor) -> torch.Tensor:
    b, n, c = tokens.shape
    s = int(n**0.5)
    return tokens.transpose(1, 2).reshape(b, c, s, s)


def test_encoder_matches_wrapper_and_pools(vit):
    enc = create_encoder(
        "s2",
        backbone={"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 64,
                  "model_kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}},
        scales=[1, 2],
        pooling="cls",
    )  # fmt: skip
    x = _images()
    with torch.no_grad():
        tokens = enc.forward_tokens(x)
        ref = s2wrapper.forward(enc.backbone.pixel_tokens, x, scales=[1, 2], num_prefix_token=1)
        feat = enc(x)
    assert (tokens - ref).abs().max().item() <= TOL
    assert enc.feature_dim == 96 and feat.shape == (2, 96)
    assert torch.equal(feat, tokens[:, 0])  # cls = per-scale CLS tokens, concatenated
    assert enc.describe()["img_sizes"] == [64, 128]
    assert not enc.trainable and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.backbone.model.training
    # uint8 (B,H,W,3) frames give the same features
    frames = (x * 255).round().to(torch.uint8)
    with torch.no_grad():
        a = enc(frames.permute(0, 2, 3, 1))
        b = enc(frames.float() / 255)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("pooling, dim", [("mean", 96), ("cls+mean", 192), ("grid:2", 4 * 96)])
def test_encoder_pooling_widths(pooling, dim):
    enc = create_encoder(
        "s2",
        backbone={"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 64,
                  "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 3}},
        scales=[1, 2],
        pooling=pooling,
    )  # fmt: skip
    with torch.no_grad():
        out = enc(_images())
    assert enc.feature_dim == dim and out.shape == (2, dim)


def test_native_encoder_takes_the_high_resolution_render():
    enc = create_encoder(
        "s2",
        backbone={"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 64,
                  "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 3}},
        scales=[1, 2],
        source="native",
    )  # fmt: skip
    assert enc.image_size == 128
    with torch.no_grad():
        assert enc(_images(size=128)).shape == (2, 96)
    with pytest.raises(UserError, match="64x64 frames; the encoder needs 128x128"):
        enc(_images(size=64))  # the native scale is never faked by upsampling


def test_bad_input_is_user_error(vit):
    model = vit.forward_features
    # scale sizes that do not tile evenly (449 px into 3 tiles)
    with pytest.raises(UserError, match="does not tile evenly"):
        s2_forward(model, _images(size=224), img_sizes=[224, 449], num_prefix_token=1)
    with pytest.raises(UserError, match="does not tile evenly"):
        plan_scales(224, scales=[1, 2.5])
    # tiles not divisible by the patch size
    with pytest.raises(UserError, match="not divisible by the patch size"):
        plan_scales(224, scales=[1, 1.5], patch_size=16)
    with pytest.raises(UserError, match="square"):
        s2_forward(model, torch.rand(1, 3, 64, 32), scales=[1, 2])
    with pytest.raises(UserError, match="scales"):
        s2_forward(model, _images(), num_prefix_token=1)
    backbone = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 64,
                "model_kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 3}}  # fmt: skip
    with pytest.raises(UserError, match="not divisible by the patch size"):
        create_encoder("s2", backbone=backbone, scales=[1, 1.25])  # 80 px -> 2 tiles of 40 px
    with pytest.raises(UserError, match="does not tile evenly"):
        create_encoder("s2", backbone=backbone, scales=[1, 2.5])
    with pytest.raises(UserError, match="makes 32px tiles"):
        create_encoder("s2", backbone=backbone, scales=[0.5, 1])
    with pytest.raises(UserError, match="source"):
        create_encoder("s2", backbone=backbone, source="hires")
    with pytest.raises(UserError, match="tiles_per_pass"):
        create_encoder("s2", backbone=backbone, tiles_per_pass=0)
    enc = create_encoder("s2", backbone=backbone, scales=[1, 2])
    big = _images(size=72)  # larger frames are area-downsized to the base scale first
    with torch.no_grad():
        small = torch.nn.functional.interpolate(big, size=(64, 64), mode="area")
        torch.testing.assert_close(enc(big), enc(small))
    with pytest.raises(UserError, match="48x48 frames; the encoder needs 64x64"):
        enc(_images(size=48))
    with pytest.raises(UserError, match="patch size"):
        create_encoder(backbone, image_size=72)
    assert isinstance(enc, S2Encoder)
