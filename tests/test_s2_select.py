"""s2_select: S² with only the salient high-resolution tiles run; k = all tiles is S²."""

from __future__ import annotations

import pytest
import torch

from robo_s2.encoders import create_encoder
from robo_s2.encoders.s2 import s2_forward
from robo_s2.encoders.s2_select import S2SelectEncoder
from robo_s2.encoders.tile_rules import list_tile_rules
from robo_s2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKBONE = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 32,
            "model_kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}  # fmt: skip


def _enc(**kw) -> S2SelectEncoder:
    torch.manual_seed(0)
    enc = create_encoder("s2_select", backbone=BACKBONE, **{"scales": [1, 2, 4], **kw})
    assert isinstance(enc, S2SelectEncoder)
    return enc


def _images(b: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rule", ["salient", "norm", "random", "centre", "cls_attention"])
@pytest.mark.parametrize("source", ["upsample", "native"])
def test_all_tiles_is_s2(rule, source):
    enc = _enc(rule=rule, k=None, source=source, pooling="cls")
    x = _images(size=enc.image_size)
    with torch.no_grad():
        ours, chosen = enc.select_tokens(x)
        ref = s2_forward(
            enc.backbone.pixel_tokens, x, img_sizes=[32, 64, 128], max_split_size=32,
            num_prefix_token=1, base_size=32, downsample="area" if source == "native" else None,
        )  # fmt: skip
    assert ours.shape == ref.shape == (2, 1 + 4, 48 * 3)
    assert (ours - ref).abs().max().item() <= 1e-5
    assert [c.shape for c in chosen] == [(2, 4), (2, 16)]


def test_fewer_tiles_keep_the_shape_and_fill_from_below():
    full, sel = _enc(k=None), _enc(k=2)
    x = _images()
    with torch.no_grad():
        a = full.forward_tokens(x)
        b, chosen = sel.select_tokens(x)
    assert a.shape == b.shape and sel.feature_dim == full.feature_dim
    assert torch.equal(a[..., : 48 * 2], b[..., : 48 * 2])  # scales 1, 2 run in full
    assert not torch.allclose(a[..., 96:], b[..., 96:])  # scale 4: 2 of 16 tiles ran
    assert chosen[1].shape == (2, 2) and (chosen[1].diff(dim=1) > 0).all()


def test_selection_is_deterministic_per_frame():
    enc = _enc(rule="random", k=3)
    x = _images(b=3)
    with torch.no_grad():
        t1, c1 = enc.select_tokens(x)
        t2, c2 = enc.select_tokens(x.flip(0))  # other batch order, same frames
    assert torch.equal(c1[1], c2[1].flip(0))
    torch.testing.assert_close(t1, t2.flip(0))
    assert not torch.equal(c1[1][0], c1[1][1]) or not torch.equal(c1[1][1], c1[1][2])


def test_centre_rule_picks_the_middle_tiles():
    with torch.no_grad():
        _, chosen = _enc(rule="centre", k=4).select_tokens(_images())
    assert chosen[1][0].tolist() == [5, 6, 9, 10]


def test_budget_shares_tiles_over_scales():
    assert _enc(budget=5).keep == [1, 4]
    assert _enc(k=[2, 3]).keep == [2, 3]
    assert _enc(k=1).keep == [4, 1]


def test_fingerprint_changes_with_rule_and_k():
    prints = {_enc(rule=r, k=2).fingerprint() for r in list_tile_rules()}
    prints |= {_enc(rule="salient", k=k).fingerprint() for k in (1, 4)}
    prints.add(_enc(budget=5).fingerprint())
    assert len(prints) == len(list_tile_rules()) + 3
    assert _enc(k=2).fingerprint() == _enc(k=2).fingerprint()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(k=17), r"k=17 at the 128px scale but it has 16 tiles \(4x4\); use 1 <= k <= 16"),
        (dict(k=[5, 2]), r"k=5 at the 64px scale but it has 4 tiles"),
        (dict(k=[1, 2, 3]), r"3 entries but there are 2 larger scales"),
        (dict(rule="saliency"), r"unknown s2_select rule 'saliency'; choose one of"),
        (dict(scales=[1, 2.5]), r"does not tile evenly"),
        (dict(scales=[1]), r"at least two scales"),
        (dict(budget=30), r"budget=30 tiles must lie in \[2, 20\]"),
        (dict(k=2, budget=5), r"either k or budget"),
    ],
)
def test_bad_config_is_one_user_error(kw, match):
    with pytest.raises(UserError, match=match):
        _enc(**kw)


def test_analyze_selection_draws_the_chosen_tiles(tmp_path):
    import json

    import numpy as np
    from helpers import robo_s2, square_store

    from robo_s2.experiments.tile_selection import pick_frames

    store = square_store(tmp_path / "s.zarr", n_episodes=6, length=4, size=64)
    assert pick_frames(np.array([4, 8, 12]), 2) == [1, 9]
    src = ("source={name: s2_select, backbone: {name: timm, model: vit_tiny_patch16_224, "
           "image_size: 32, model_kwargs: {depth: 1, embed_dim: 48, num_heads: 3}}, "
           "scales: [1, 2], source: native, rule: centre, k: 1}")  # fmt: skip
    out = robo_s2("analyze", "selection", f"store={store}", src, "frames=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run_out"
    assert (run / "selection.png").stat().st_size > 1000
    record = json.loads((run / "selection.json").read_text())
    assert record["rows"] == [1, 9, 21] and record["encoder"]["rule"] == "centre"
    assert record["tiles"] == [[[0]], [[0]], [[0]]]  # all four tiles tie: the first wins
    bad = robo_s2("analyze", "selection", f"store={store}", "source=vit_t", cwd=tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("error: encoder 'vit_t' selects no")


@pytest.mark.parametrize("kw", [dict(rule="salient", k=2), dict(budget=5, rule="cls_attention"),
                                dict(k=[2, 3], source="native", rule="random")])  # fmt: skip
def test_the_recorded_config_rebuilds_the_same_encoder(kw):
    """A checkpoint's encoder config (what eval rebuilds from) gives the same encoder."""
    enc = _enc(**kw)
    again = create_encoder(enc.config)
    assert isinstance(again, S2SelectEncoder) and again.keep == enc.keep
    assert again.fingerprint() == enc.fingerprint()
    with pytest.raises(UserError, match=r"keep=\[9, 9\] \(recorded tiles per larger scale\)"):
        create_encoder({**enc.config, "keep": [9, 9]})
