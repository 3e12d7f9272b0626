"""s2_select's learned tile rule: the change targets, the fit, the file, the analysis."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from robo_s2.encoders import create_encoder
from robo_s2.encoders.s2 import _area_channels_last, s2_forward
from robo_s2.encoders.tile_rules import per_tile, select_tiles
from robo_s2.encoders.tile_scorer import TileScorer, change_targets, save_tile_scorer
from robo_s2.errors import UserError
from robo_s2.pretraining.tile_scorer import (
    ScorerData,
    change_captured,
    compare_rules,
    fit_tile_scorer,
    scorer_data,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKBONE = {"name": "timm", "model": "vit_tiny_patch16_224", "image_size": 32,
            "model_kwargs": {"depth": 2, "embed_dim": 48, "num_heads": 3}}  # fmt: skip


def _enc(**kw):
    torch.manual_seed(0)
    return create_encoder("s2_select", **{"backbone": BACKBONE, "scales": [1, 2, 4], "k": 3, **kw})


def _frames(b: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, size, size, 3, generator=g) * 255).to(torch.uint8)


def test_change_target_is_the_fill_error_per_tile():
    lower = torch.randn(2, 2, 2, 5)
    upper = F.interpolate(lower.permute(0, 3, 1, 2), size=4, mode="bilinear").permute(0, 2, 3, 1)
    upper = upper.clone()
    upper[0, 2:, 0:2] += 3.0  # frame 0: only tile 2 (row 1, col 0) of the 2x2 tiling differs
    (t,) = change_targets([lower, upper], [2])
    assert t.shape == (2, 4)
    assert torch.allclose(t[0], torch.tensor([0.0, 0.0, 3.0 * 5**0.5, 0.0]), atol=1e-5)
    assert t[1].abs().max() < 1e-5


def test_scale_maps_are_s2s_scales():
    enc = _enc()
    x = _frames()
    _, maps = enc.scale_pass(x)
    assert [m.shape[1] for m in maps] == [2, 4, 8]
    with torch.no_grad():
        ref = s2_forward(
            enc.backbone.pixel_tokens, enc.prepare(x), img_sizes=[32, 64, 128], max_split_size=32,
            num_prefix_token=1, base_size=32,
        )[:, 1:]  # fmt: skip
    ours = torch.cat([_area_channels_last(m, 2) for m in maps], dim=-1).reshape(6, 4, -1)
    assert (ours - ref).abs().max() <= 1e-5


def test_data_pass_scores_rules_as_the_encoder_selects():
    enc = _enc(rule="norm")
    x = _frames()
    data = scorer_data(enc, x.numpy(), torch.arange(6).numpy(), batch_size=4, precision="fp32")
    assert data.grids.shape == (6, 2, 2, 48)
    assert [t.shape for t in data.targets] == [(6, 4), (6, 16)]
    assert all((t >= 0).all() and t.sum() > 0 for t in data.targets)
    with torch.no_grad():
        _, chosen = enc.select_tokens(x)
    for i, k in enumerate(enc.keep):
        assert torch.equal(select_tiles(data.rule_scores["norm"][i], k), chosen[i])


def _synthetic(n: int, seed: int) -> ScorerData:
    """Targets a head can learn: the tile mean of relu(token channel 0)."""
    g = torch.Generator().manual_seed(seed)
    grids = torch.randn(n, 8, 8, 16, generator=g)
    value = grids[..., 0].relu()
    return ScorerData(grids, [per_tile(value, 2), per_tile(value, 4)])


def test_fit_learns_where_the_change_is():
    train, test = _synthetic(512, 0), _synthetic(128, 1)
    scorer, losses = fit_tile_scorer(train, [2, 4], hidden=32, steps=300, lr=3e-3)
    assert losses[-1] < 0.3 * losses[0]
    learned = scorer(test.grids)
    test.rule_scores["random"] = [torch.rand(128, 4), torch.rand(128, 16)]
    table = compare_rules(scorer, test, [1, 4])
    assert table["learned"][1] == round(change_captured(learned[1], test.targets[1], 4), 4)
    assert table["learned"][0] > 0.95 and table["learned"][1] > 0.9
    assert table["learned"][1] > table["random"][1] + 0.2


def test_learned_rule_loads_the_file_and_is_fingerprinted(tmp_path):
    base = _enc()
    scorer = TileScorer(48, base.splits, hidden=8)
    path = save_tile_scorer(scorer, tmp_path / "s.safetensors",
                            {"backbone_fingerprint": base.backbone.fingerprint()})  # fmt: skip
    enc = _enc(rule="learned", scorer=str(path))
    x = _frames()
    with torch.no_grad():
        _, chosen = enc.select_tokens(x)
        grid = enc.scale_pass(x)[1][0]
        expected = [select_tiles(s, k) for s, k in zip(scorer(grid), enc.keep, strict=True)]
    assert all(torch.equal(a, b) for a, b in zip(chosen, expected, strict=True))
    assert not any(p.requires_grad for p in enc.scorer.parameters())
    assert enc.fingerprint() == _enc(rule="learned", scorer=str(path)).fingerprint()
    torch.manual_seed(5)
    other = save_tile_scorer(TileScorer(48, base.splits, hidden=8), tmp_path / "o.safetensors",
                             {"backbone_fingerprint": base.backbone.fingerprint()})  # fmt: skip
    prints = {enc.fingerprint(), _enc(rule="learned", scorer=str(other)).fingerprint()}
    assert len(prints | {base.fingerprint()}) == 3


def test_bad_scorer_is_one_user_error(tmp_path):
    from safetensors.torch import save_file

    base = _enc()
    good = save_tile_scorer(TileScorer(48, base.splits, 8), tmp_path / "s.safetensors",
                            {"backbone_fingerprint": base.backbone.fingerprint()})  # fmt: skip
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:100])
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    cases = [
        (dict(rule="learned"), r"rule=learned needs scorer="),
        (dict(rule="salient", scorer=str(good)), r"is read only by rule=learned"),
        (dict(rule="learned", scorer=str(tmp_path / "no.safetensors")), r"does not exist; fit"),
        (dict(rule="learned", scorer=str(tmp_path / "cut.safetensors")), r"truncated or corrupt"),
        (dict(rule="learned", scorer=str(tmp_path / "plain.safetensors")), r"not a robo-s2 tile"),
        (dict(rule="learned", scorer=str(good), backbone={**BACKBONE, "seed": 3}),
         r"fitted on a backbone with fingerprint"),
        (dict(rule="learned", scorer=str(good), scales=[1, 2]), r"is for width 48 and \[2, 4\]"),
    ]  # fmt: skip
    for kw, match in cases:
        with pytest.raises(UserError, match=match) as err:
            _enc(**kw)
        assert "\n" not in str(err.value)


def test_analyze_scorer_fits_compares_and_draws(tmp_path):
    from helpers import robo_s2, square_store

    store = square_store(tmp_path / "s.zarr", n_episodes=6, length=4, size=32)
    src = ("source={name: s2_select, backbone: {name: timm, model: vit_tiny_patch16_224, "
           "image_size: 32, model_kwargs: {depth: 1, embed_dim: 48, num_heads: 3}}, "
           "scales: [1, 2, 4], k: 2}")  # fmt: skip
    out = robo_s2("analyze", "scorer", f"store={store}", src, "steps=40", "hidden=8",
                  "max_frames=20", "frames=2", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    run = tmp_path / "run_out"
    rec = json.loads((run / "scorer.json").read_text())
    assert rec["n_train_frames"] + rec["n_test_frames"] <= 20 and rec["keep"] == [4, 2]
    table = rec["change_captured_held_out"]
    assert set(table) == {"learned", "salient", "norm", "random", "centre", "cls_attention"}
    assert all(0.0 < v <= 1.0 + 1e-6 for vals in table.values() for v in vals)
    assert all(v == pytest.approx(1.0) for v in table["salient"][:1])  # all 4 of 4 tiles run
    assert (run / "selection.png").stat().st_size > 1000
    drawn = json.loads((run / "selection.json").read_text())
    assert drawn["encoder"]["rule"] == "learned" and len(drawn["rows"]) == 2
    assert {r // 4 for r in drawn["rows"]} <= set(rec["held_out_episodes"])  # 4 frames/episode
    assert "use it with encoder.rule=learned encoder.scorer=" in out.stdout


def test_cls_attention_is_the_last_blocks_attention_of_the_cls_token():
    from robo_s2.encoders.cls_attention import ClsAttentionCapture

    enc = _enc(rule="cls_attention", k=2)
    attn = enc.backbone.model.blocks[-1].attn
    x = enc.prepare(_frames(3))
    seen = []
    attn.fused_attn = False  # timm's explicit path: attn_drop receives the softmaxed matrix
    hook = attn.attn_drop.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    capture = ClsAttentionCapture(enc.backbone)
    with torch.no_grad():
        enc.backbone.pixel_tokens(x)
    hook.remove()
    ours = capture.grid(3, 1)
    ref = seen[0].mean(dim=1)[:, 0, 1:].reshape(3, 2, 2)
    assert ours.shape == (3, 2, 2) and (ours - ref).abs().max() <= 1e-6
    assert not attn._forward_pre_hooks  # closed: the high-res tiles run without it
    with torch.no_grad():
        low, _ = enc.scale_pass(_frames(3), cls_attention=True)
        _, chosen = enc.select_tokens(_frames(3))
    assert low.cls_attention is not None
    assert torch.equal(chosen[1], select_tiles(per_tile(low.cls_attention, 4), 2))
    assert not attn._forward_pre_hooks


def test_cls_attention_needs_a_cls_token():
    nocls = {**BACKBONE, "pooling": "mean", "model_kwargs": {
        **BACKBONE["model_kwargs"], "class_token": False, "global_pool": "avg"}}  # fmt: skip
    with pytest.raises(UserError, match="needs a backbone with a CLS token"):
        _enc(rule="cls_attention", backbone=nocls, pooling="mean")


def test_hit_rate_counts_frames_whose_tile_is_run():
    from robo_s2.pretraining.tile_scorer import tile_hit_rate

    scores = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.0, 0.2, 0.1, 0.8]])
    assert tile_hit_rate(scores, torch.tensor([2, 2]), k=2) == 0.5  # frame 0 runs 0, 2
    assert tile_hit_rate(scores, torch.tensor([0, 3]), k=1) == 1.0


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    from robo_s2.data.collection import collect

    path = tmp_path_factory.mktemp("collected") / "d.zarr"
    collect(path, n_episodes=3, env_kwargs={"image_size": 64}, seed=0, workers=0)
    return path


def test_object_tiles_are_where_the_cube_is_rendered(collected):
    import numpy as np

    from robo_s2.data.store import DemoStore
    from robo_s2.experiments.scorer_fit import object_tiles

    store = DemoStore.open(collected)
    rows = np.arange(store.n_frames)
    tiles = object_tiles(store, "image", rows, 4)
    assert tiles is not None and set(tiles) == {"cube", "gripper"}
    images = np.asarray(store.array("image")[rows]).astype(int)
    agree = seen = 0
    for i, img in enumerate(images):
        mask = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
        if mask.sum() < 6:  # hidden behind the gripper
            continue
        r, c = np.nonzero(mask)
        cell = (int(r.mean() * 4 / 64), int(c.mean() * 4 / 64))
        seen += 1
        agree += int(tiles["cube"][i]) == cell[0] * 4 + cell[1]
    assert seen > len(rows) // 2 and agree >= 0.9 * seen
    assert object_tiles(store, "image_wrist", rows, 4) is None


def test_analyze_scorer_fits_the_simulators_object_tiles(collected, tmp_path):
    from helpers import robo_s2

    src = ("source={name: s2_select, backbone: {name: timm, model: vit_tiny_patch16_224, "
           "image_size: 32, model_kwargs: {depth: 1, embed_dim: 48, num_heads: 3}}, "
           "scales: [1, 2, 4], k: 2}")  # fmt: skip
    args = ("analyze", "scorer", f"store={collected}", src, "steps=60", "hidden=8", "frames=1")
    out = robo_s2(*args, "target=objects", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rec = json.loads((tmp_path / "run_out" / "scorer.json").read_text())
    assert (
        rec["target"] == "objects"
        and rec["loss_every_50_steps"][-1] < rec["loss_every_50_steps"][0]
    )
    hits = rec["top_scale_tile_hits_held_out"]
    assert set(hits) == set(rec["change_captured_held_out"])
    assert all(0.0 <= v <= 1.0 for h in hits.values() for v in h.values())
    assert "cube's tile run" in out.stdout
    bad = robo_s2(*args, "target=cube", cwd=tmp_path)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: unknown scorer target 'cube'; choose change or objects"
    )
