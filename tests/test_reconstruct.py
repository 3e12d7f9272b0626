"""``robo-s2 analyze reconstruct`` (S² Table 1): the R² is right, the split is by episode, the CLI
runs end to end from the feature cache and bad input is one line."""

import json

import numpy as np
import pytest
from helpers import robo_s2, square_store

from robo_s2.data.store import DemoStore
from robo_s2.errors import UserError
from robo_s2.experiments.reconstruct import (
    ReconstructConfig,
    bootstrap_r2,
    fit_reconstruction,
    parse_spec,
    run_reconstruct,
    token_rows,
)
from robo_s2.pretraining.probe import episode_split_rows

IMG = 32


def episodes(n_episodes: int, length: int) -> np.ndarray:
    return np.arange(1, n_episodes + 1, dtype=np.int64) * length


# ------------------------------------------------------------------------------- the R² itself


def test_exact_linear_target_scores_one_and_independent_noise_about_zero():
    rng = np.random.default_rng(0)
    ends = episodes(40, 10)
    train, test, ep = episode_split_rows(ends, 0.3, 0)
    x = rng.normal(size=(400, 12)) * rng.uniform(0.1, 5.0, 12)  # scales differ: z-scoring matters
    y = x @ rng.normal(size=(12, 8)) + rng.normal(size=8)
    exact = fit_reconstruction(x, y, train, test, ep)
    assert exact.r2 > 0.999 and exact.r2_mean_dim > 0.999 and exact.r2_train > 0.999
    assert exact.info > 5  # -log(l/l0): l is ~0
    assert exact.mse < 1e-3 * exact.mse_baseline
    noise = fit_reconstruction(x, rng.normal(size=(400, 8)), train, test, ep)
    assert noise.r2 < 0.05 and noise.r2_mean_dim < 0.05  # ~0 or below: nothing to explain
    assert noise.alpha >= 100  # the grouped CV shrinks a useless map


def test_r2_sums_over_dims_and_the_mean_per_dim_counts_each_dim_once():
    rng = np.random.default_rng(1)
    ends = episodes(50, 8)
    train, test, ep = episode_split_rows(ends, 0.3, 0)
    x = rng.normal(size=(400, 4))
    explained = 3.0 * x[:, :1]  # variance 9, a linear function of x
    unexplained = rng.normal(size=(400, 1))  # variance 1, independent of x
    fit = fit_reconstruction(x, np.hstack([explained, unexplained]), train, test, ep)
    assert fit.r2 == pytest.approx(0.9, abs=0.03)  # 9 / (9 + 1) of the variance
    assert fit.r2_mean_dim == pytest.approx(0.5, abs=0.03)  # (1 + 0) / 2
    assert fit.info == pytest.approx(-np.log(1 - fit.r2))


def test_bootstrap_intervals_are_paired_over_held_out_episodes():
    rng = np.random.default_rng(3)
    ends = episodes(40, 10)
    train, test, ep = episode_split_rows(ends, 0.3, 0)
    x = rng.normal(size=(400, 6))
    y = x @ rng.normal(size=(6, 3))
    good = fit_reconstruction(x, y + 0.5 * rng.normal(size=y.shape), train, test, ep)
    worse = fit_reconstruction(x[:, :3], y + 0.5 * rng.normal(size=y.shape), train, test, ep)
    assert len(good.group_sse) == len(np.unique(ep[test])) == 12
    assert good.r2 == pytest.approx(1 - good.group_sse.sum() / good.group_sst.sum())
    cis, diffs = bootstrap_r2([good, worse])
    assert cis[0][0] <= good.r2 <= cis[0][1] and cis[1][0] <= worse.r2 <= cis[1][1]
    assert diffs[0] == (0.0, 0.0) and diffs[1][1] < 0  # worse is worse on every resample
    assert "group_sse" not in good.as_dict()


def test_split_is_by_episode():
    ends = np.array([5, 12, 20, 21, 30, 38, 45, 50, 58, 64])
    train, test, ep = episode_split_rows(ends, 0.3, 0)
    assert len(np.intersect1d(train, test)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(ends[-1]))
    assert not set(ep[train]) & set(ep[test])  # no episode on both sides
    for e in np.unique(ep[test]):  # held-out episodes are whole
        assert np.isin(np.flatnonzero(ep == e), test).all()
    assert len(np.unique(ep[test])) == 3


def test_memorising_episodes_does_not_pay_on_held_out_episodes():
    """A source that only tells episodes apart "reconstructs" a per-episode target on held-out
    frames of seen episodes (a split by frame), not on held-out episodes (ours)."""
    rng = np.random.default_rng(2)
    ends = episodes(30, 10)
    train, test, ep = episode_split_rows(ends, 0.3, 0)
    x = rng.normal(size=(30, 64))[ep] + 0.01 * rng.normal(size=(300, 64))  # episode identity
    y = rng.normal(size=(30, 4))[ep]  # one random vector per episode
    perm = rng.permutation(300)
    by_frame = fit_reconstruction(x, y, perm[:210], perm[210:], np.arange(300))
    by_episode = fit_reconstruction(x, y, train, test, ep)
    assert by_frame.r2 > 0.9 and by_episode.r2 < 0.1


def test_token_rows_follow_the_reshape():
    feats = np.arange(3 * 4 * 2).reshape(3, 8)  # 3 frames, 4 tokens of 2 channels
    flat = feats.reshape(3 * 4, 2)
    np.testing.assert_array_equal(flat[token_rows(np.array([2]), 4)], feats[2].reshape(4, 2))


# ------------------------------------------------------------------------------------ config


def test_specs_and_config_validation():
    assert parse_spec("vit_t", "source[0]").label == "vit_t"
    s2 = parse_spec({"encoder": "vit_t_s2", "overrides": {"scales": [1, 2, 3]}}, "source[1]")
    assert s2.label == "vit_t_s2(scales=[1,2,3])" and s2.parts[0].overrides == {"scales": [1, 2, 3]}
    two = parse_spec({"label": "2x", "concat": ["vit_t", {"encoder": "vit_t"}]}, "source[2]")
    assert two.label == "2x" and len(two.parts) == 2
    base = {"store": "s.zarr", "source": ["vit_t", "vit_t_s2"], "target": "vit_s"}
    rc = ReconstructConfig.from_mapping(base)
    assert rc.image_size == 112 and rc.pooling == "mean" and not rc.per_token
    for bad, message in [
        ({"per_token": True}, "pooling=grid:k"),
        ({"reference": "vit_b"}, "not a source label"),
        ({"source": ["vit_t", "vit_t"]}, "distinct label"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"pooling": "max"}, "unknown pooling"),
        ({"source": []}, "one or more encoders"),
        ({"sources": ["vit_t"]}, "unknown reconstruct settings"),
        ({"source": [{"encodr": "vit_t"}]}, "needs 'encoder'"),
    ]:
        with pytest.raises(UserError, match=message):
            ReconstructConfig.from_mapping({**base, **bad})


# ------------------------------------------------------------------------ library, end to end


def test_in_memory_per_token_concat_and_reference(tmp_path, one_torch_thread):
    store = square_store(tmp_path / "s.zarr")
    rc = ReconstructConfig.from_mapping(
        {
            "store": str(store),
            "source": [
                "vit_t",
                {"label": "2x vit_t", "concat": ["vit_t", {"encoder": "vit_t", "overrides": {"seed": 1}}]},
                "vit_t_s2",
            ],
            "target": "vit_s",
            "reference": "vit_t",
            "image_size": IMG,
            "pooling": "grid:2",
            "per_token": True,
            "cache": False,
            "device": "cpu",
        }
    )  # fmt: skip
    res = run_reconstruct(rc, tmp_path / "out", progress=False)
    by = {s.label: s for s in res.sources}
    assert by["vit_t"].tokens == 4 and by["vit_t"].feature_dim == 4 * 192
    assert by["2x vit_t"].feature_dim == 4 * 384 and by["vit_t_s2"].feature_dim == 4 * 384
    assert by["vit_t"].info_ratio == pytest.approx(1.0)
    assert by["vit_t"].r2_diff == 0.0 and by["vit_t"].r2_diff_ci95 == (0.0, 0.0)
    for r in res.sources:
        lo, hi = r.r2_ci95
        assert lo <= r.fit.r2 <= hi or not np.isfinite(lo)
    assert by["vit_t_s2"].encoders[0]["img_sizes"] == [IMG, 2 * IMG]
    assert res.target["feature_dim"] == 4 * 384
    assert "features" not in DemoStore.open(store).root  # cache=false writes nothing into it
    assert all(np.isfinite(s.fit.r2) for s in res.sources)


# -------------------------------------------------------------------------------------- CLI


def test_cli_writes_json_and_md_and_reruns_from_the_cache(tmp_path):
    store = square_store(tmp_path / "s.zarr")
    args = ["analyze", "reconstruct", f"store={store}", f"image_size={IMG}", "device=cpu",
            "source=[vit_t,vit_t_s2]", "target=vit_s", "threads=1"]  # fmt: skip
    out = robo_s2(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "| vit_t_s2 |" in out.stdout and out.stdout.strip().splitlines()[-1].startswith(
        "reconstruct: vit_s (384 dims) from vit_t R² "
    )
    run = tmp_path / "run_out"
    result = json.loads((run / "reconstruct.json").read_text())
    assert set(result) >= {"analysis", "target", "sources", "data", "settings", "provenance"}
    assert [s["label"] for s in result["sources"]] == ["vit_t", "vit_t_s2"]
    for s in result["sources"]:
        assert {"r2", "r2_ci95", "r2_diff", "r2_diff_ci95", "r2_mean_dim", "r2_train", "info",
                "mse", "mse_baseline", "alpha", "feature_dim", "encoders"} <= set(s)  # fmt: skip
        assert not any(k.startswith("group_") for k in s)
        assert -1.0 < s["r2"] <= 1.0
    assert [s["feature_dim"] for s in result["sources"]] == [192, 384]
    data = result["data"]
    assert data["n_frames"] == 24 and data["n_episodes"] == 6
    assert data["train_frames"] + data["test_frames"] == 24
    assert data["test_episodes"] == 2 and len(data["test_episode_ids"]) == 2
    assert (run / "reconstruct.md").read_text().startswith("# Reconstructing vit_s")
    assert result["target"]["encoders"][0]["frames_encoded_now"] == 24

    again = robo_s2(*args, cwd=tmp_path)  # features now come from the store's cache
    assert again.returncode == 0, again.stderr
    rerun = json.loads((run / "reconstruct.json").read_text())
    parts = [e for s in [rerun["target"], *rerun["sources"]] for e in s["encoders"]]
    assert all(e["frames_encoded_now"] == 0 for e in parts)
    assert [s["r2"] for s in rerun["sources"]] == [s["r2"] for s in result["sources"]]


@pytest.mark.parametrize(
    "args, message",
    [
        (["store={tmp}/missing.zarr"], "no demo store at"),
        (["store={tmp}/s.zarr", "source=[vit_t,vit_tt]"], "source vit_tt: unknown encoder"),
        (["store={tmp}/s.zarr", "target={{encoder: vit_s, store: {tmp}/short.zarr}}"],
         "target vit_s reads"),
        ([], "needs an analysis"),
        (["reconstuct"], "unknown analysis 'reconstuct'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path, args, message):
    square_store(tmp_path / "s.zarr")
    square_store(tmp_path / "short.zarr", n_episodes=5)
    sub = [] if not args or not args[0].startswith("store") else ["reconstruct"]
    out = robo_s2("analyze", *sub, f"image_size={IMG}",
                  *[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "run_out" / "reconstruct.json").exists()
