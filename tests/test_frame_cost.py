"""Frame cost: encoder precision (fp32 | bf16 | auto) and the env's render profile.

bf16 here is CPU autocast; on CPUs without native bf16 it is emulated (slow but numerically the
same), so the equivalence tests run everywhere on small inputs.
"""

import json
import os

import numpy as np
import pytest
import torch

from robo_s2 import device as D
from robo_s2.data.store import DemoStore
from robo_s2.encoders import create_encoder
from robo_s2.encoders.feature_cache import (
    cache_key,
    cache_status,
    encode_frames,
    encode_store,
    feature_precision,
    load_features,
)
from robo_s2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = torch.device("cpu")


# --- precision resolution ------------------------------------------------------------------------


def test_explicit_precisions_and_bad_names():
    assert D.resolve_precision("fp32", CPU, 10**6) == "fp32"
    assert D.resolve_precision("bf16", CPU, 1) == "bf16"  # the user's word, even where slow
    with pytest.raises(UserError, match="precision='fp16'; choose one of: auto, fp32, bf16"):
        D.resolve_precision("fp16", CPU)
    with pytest.raises(UserError, match="choose one of: auto, fp32, bf16"):
        create_encoder("vit_t", image_size=32, precision="half")


def test_auto_follows_native_support_and_the_token_crossover(monkeypatch):
    monkeypatch.setattr(D, "cpu_bf16_supported", lambda: False)
    assert D.resolve_precision("auto", CPU, 10**6) == "fp32"  # emulated bf16 never pays
    monkeypatch.setattr(D, "cpu_bf16_supported", lambda: True)
    assert D.resolve_precision("auto", CPU, D.BF16_MIN_TOKENS_CPU - 1) == "fp32"
    assert D.resolve_precision("auto", CPU, D.BF16_MIN_TOKENS_CPU) == "bf16"
    # the crossover counts tokens per pass: batch x tokens per frame, S² tiles, PIIP branches
    vit = create_encoder("vit_t", image_size=112)  # 49 patches + CLS per frame
    assert vit.tokens_per_pass(1) == 50 and vit.tokens_per_pass(8) == 400
    assert feature_precision(vit, CPU, 1) == "fp32"
    assert feature_precision(vit, CPU, 8) == "bf16"
    assert feature_precision(vit, CPU, 8, precision="fp32") == "fp32"
    s2 = create_encoder("vit_t_s2", backbone={"image_size": 112})  # 1 + 4 tiles of 50, by 4
    assert s2.tokens_per_pass(1) == 200 and s2.tokens_per_pass(16) == 200


def test_fp32_inside_an_outer_autocast_really_runs_fp32():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lin(x).dtype == torch.bfloat16
        with D.autocast(CPU, "fp32"):
            assert lin(x).dtype == torch.float32
    with D.autocast(CPU, "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with D.autocast(CPU):  # the policy's default on a CPU: plain fp32
        assert lin(x).dtype == torch.float32


# --- bf16 features agree with fp32 ----------------------------------------------------------------


def _frames(n=6, size=64, seed=0):
    """Cube-picking renders (different cube positions), the kind of frame encoders see."""
    from envs.cube_pick import CubePickEnv

    env = CubePickEnv(image_size=size, shadows=False, msaa_samples=0)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        obs, _ = env.reset(options={"cube_pos": rng.uniform([0.4, -0.1], [0.6, 0.1])})
        frames.append(obs["image"])
    env.close()
    return np.stack(frames)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vit_t", {"image_size": 64, "pooling": "grid:2"}),
        ("vit_t_s2", {"backbone": {"image_size": 32}, "pooling": "grid:2"}),
        ("piip_ts_tiny", {"resolutions": [64, 32], "interactions": 2}),
    ],
)
def test_bf16_features_match_fp32(name, overrides):
    encoder = create_encoder(name, **overrides).eval()
    frames = _frames(size=encoder.image_size)
    f32 = encode_frames(encoder, frames, CPU, "fp32")
    b16 = encode_frames(encoder, frames, CPU, "bf16")
    assert f32.dtype == b16.dtype == np.float32
    assert not np.array_equal(f32, b16)  # it really ran in another precision
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(f32), torch.from_numpy(b16))
    assert float(cos.min()) >= 0.999, cos


def test_bf16_probe_is_within_5_percent_of_fp32(tmp_path):
    """The ridge probe of the cube's position (benchmarks/pretrain_probe.py's) on bf16 features."""
    from robo_s2.data.collection import collect
    from robo_s2.pretraining.probe import probe_encoder

    store_path = tmp_path / "probe.zarr"
    collect(
        store_path, n_episodes=8, seed=3, workers=0,
        env_kwargs={"image_size": 64, "shadows": False, "msaa_samples": 0},
        expert_kwargs={},
    )  # fmt: skip
    store = DemoStore.open(store_path)
    encoder = create_encoder("vit_t", image_size=64, pooling="grid:2")
    f32 = probe_encoder(encoder, store, precision="fp32")
    b16 = probe_encoder(encoder, store, precision="bf16")
    assert abs(b16.rmse_cm - f32.rmse_cm) <= 0.05 * f32.rmse_cm, (f32, b16)
    assert f32.rmse_cm < 0.9 * f32.baseline_rmse_cm  # the probe does locate the cube


# --- the feature cache keeps precisions apart -----------------------------------------------------


def test_cache_entries_are_keyed_by_precision(tmp_path):
    store = DemoStore.create(tmp_path / "s.zarr")
    rng = np.random.default_rng(0)
    for _ in range(2):
        t = 3
        store.append_episode(
            {
                "image": rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8),
                "action": np.zeros((t, 4), np.float32),
            }
        )
    encoder = create_encoder("vit_t", image_size=32)
    fp = encoder.fingerprint()
    encoder.precision = "bf16"
    assert encoder.fingerprint() == fp  # how the weights run is not what they are
    assert cache_key(encoder, "image", "fp32") != cache_key(encoder, "image", "bf16")
    done = encode_store(store, encoder, batch_size=4, precision="fp32")
    assert done.precision == "fp32" and "-fp32-" in done.key
    assert not cache_status(store, encoder, "image", "bf16").complete
    with pytest.raises(UserError, match="encoder.precision=bf16"):
        load_features(store, encoder, "image", "bf16")  # an fp32 entry is never read as bf16
    default = encode_store(store, encoder, batch_size=4)  # the encoder's own setting: bf16
    assert default.precision == "bf16" and default.n_encoded_now == store.n_frames
    a, b = (
        load_features(store, encoder, "image", "fp32"),
        load_features(store, encoder, "image", "bf16"),
    )
    assert a.dtype == b.dtype == np.float32 and not np.array_equal(a, b)
    group = store.root["features"][default.key]
    assert group.attrs["precision"] == "bf16" and group["feature"].dtype == np.float32


def test_eval_precision_follows_the_checkpoint_where_native(monkeypatch):
    from robo_s2.evaluation.runner import eval_precision

    monkeypatch.setattr(D, "cpu_bf16_supported", lambda: False)
    assert eval_precision("auto", "bf16", CPU) == "fp32"  # no emulated bf16 behind the user's back
    assert eval_precision("auto", None, CPU) == "fp32"  # checkpoints from before precisions
    assert eval_precision("bf16", "fp32", CPU) == "bf16"
    monkeypatch.setattr(D, "cpu_bf16_supported", lambda: True)
    assert eval_precision("auto", "bf16", CPU) == "bf16"
    assert eval_precision("auto", "fp32", CPU) == "fp32"


# --- render profile -------------------------------------------------------------------------------


def test_render_profile_is_recorded_and_changes_the_frames():
    from envs.cube_pick import LEGACY_RENDER_PROFILE, CubePickEnv, render_profile

    images = {}
    for shadows in (True, False):
        env = CubePickEnv(image_size=48, shadows=shadows, shadow_size=256, msaa_samples=0)
        desc = env.describe()
        assert desc["render_profile"] == {
            "shadows": shadows, "shadow_size": 256, "msaa_samples": 0,
            "numslices": 8, "numstacks": 4,
        }  # fmt: skip
        rebuilt = CubePickEnv(**{**desc["kwargs"], "render_images": False})
        assert rebuilt.describe()["render_profile"] == desc["render_profile"]
        rebuilt.close()
        obs, _ = env.reset(options={"cube_pos": (0.5, 0.0)})
        images[shadows] = obs["image"].astype(np.int16)
        env.close()
    # the shadow of the arm and cube darkens part of the table
    assert (images[True] < images[False] - 10).any(axis=-1).mean() > 0.005
    assert render_profile({"image_size": 64}) == LEGACY_RENDER_PROFILE  # old descriptions
    with pytest.raises(ValueError, match="msaa_samples=3.5"):
        CubePickEnv(msaa_samples=3.5)


def test_tessellation_is_part_of_the_render_profile():
    """Coarser meshes of the arm's curved primitives change only the arm's outline and shading:
    the env's kwargs rebuild it, the physics is untouched, and the frames differ only slightly."""
    from envs.cube_pick import CubePickEnv

    frames, states = {}, {}
    for mesh in ((28, 16), (8, 4)):
        env = CubePickEnv(image_size=48, numslices=mesh[0], numstacks=mesh[1])
        profile = env.describe()["render_profile"]
        assert (profile["numslices"], profile["numstacks"]) == mesh
        obs, _ = env.reset(seed=3, options={"cube_pos": (0.5, 0.0)})
        for _ in range(3):
            obs, *_ = env.step(np.array([0.3, 0.0, -0.5, 1.0], np.float32))
        frames[mesh], states[mesh] = obs["image"].astype(np.int16), obs["state"]
        env.close()
    np.testing.assert_array_equal(states[(28, 16)], states[(8, 4)])  # rendering only
    diff = np.abs(frames[(28, 16)] - frames[(8, 4)]).max(axis=-1)
    assert 0.0 < (diff > 0).mean() < 0.2  # some pixels of the arm change, most of the frame not
    with pytest.raises(ValueError, match="numslices=2"):
        CubePickEnv(numslices=2)


def _checkpoint(directory, env_kwargs):
    from envs.cube_pick import CubePickEnv
    from policies import create_policy
    from robo_s2.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    encoder = create_encoder("vit_t", image_size=32)
    policy = create_policy(
        "mlp", feature_dim=encoder.feature_dim, proprio_dim=11, action_dim=4, hidden_dims=[16]
    )
    rng = np.random.default_rng(0)
    policy.fit_normalizer(
        {
            "feature": rng.normal(size=(16, encoder.feature_dim)).astype(np.float32),
            "proprio": rng.normal(size=(16, 11)).astype(np.float32),
            "action": rng.normal(size=(16, 4)).astype(np.float32),
        }
    )
    env = CubePickEnv(image_size=32, render_images=False, **env_kwargs)
    desc = env.describe()
    env.close()
    meta = {"env": desc, "image_key": "image", "feature_precision": "fp32"}
    return save_checkpoint(directory, policy, encoder, meta, {})


def test_eval_under_another_render_profile_is_refused_unless_allowed(tmp_path):
    from robo_s2.evaluation.runner import evaluate

    ckpt = _checkpoint(tmp_path / "ckpt", {"shadows": False, "msaa_samples": 0})
    kw = {"n_episodes": 1, "positions": "random", "workers": 0, "n_videos": 0}
    short = {"max_episode_steps": 3}
    with pytest.raises(UserError) as err:
        evaluate(ckpt, env_overrides={**short, "shadows": True}, **kw)
    msg = str(err.value)
    assert "shadows=False, shadow_size=256, msaa_samples=0, numslices=8" in msg
    assert "shadows=True, shadow_size=256, msaa_samples=0, numslices=8" in msg
    assert "allow_render_mismatch=true" in msg and "\n" not in msg
    res = evaluate(ckpt, env_overrides={**short, "shadows": True}, allow_render_mismatch=True, **kw)
    assert res.info["env"]["kwargs"]["shadows"] is True
    with pytest.raises(UserError, match="numslices=28, numstacks=16"):  # another mesh too
        evaluate(ckpt, env_overrides={**short, "numslices": 28, "numstacks": 16}, **kw)
    same = evaluate(ckpt, env_overrides=short, **kw)  # the demos' profile: no flag needed
    assert same.info["render_profile"]["shadows"] is False
    assert same.info["encoder"]["precision"] == same.info["encoder"]["trained_precision"] == "fp32"


def test_legacy_checkpoints_are_evaluated_under_the_legacy_profile(tmp_path):
    from envs.cube_pick import LEGACY_RENDER_PROFILE, RENDER_PROFILE_KEYS
    from robo_s2.evaluation.runner import checkpoint_env_kwargs

    ckpt = _checkpoint(tmp_path / "old", {})
    meta_path = ckpt / "robo_s2.json"
    meta = json.loads(meta_path.read_text())
    for key in RENDER_PROFILE_KEYS:  # a description written before the render keys
        meta["env"]["kwargs"].pop(key)
        meta["env"].pop(key)
    meta["env"].pop("render_profile")
    meta_path.write_text(json.dumps(meta))
    kwargs = checkpoint_env_kwargs(meta)
    assert {k: kwargs[k] for k in RENDER_PROFILE_KEYS} == LEGACY_RENDER_PROFILE


def test_a_bf16_fast_profile_eval_is_bit_identical_when_rerun(tmp_path):
    """(Per-step actions across worker counts: test_eval, parametrized over fp32 and bf16.)"""
    from robo_s2.evaluation.runner import evaluate

    ckpt = _checkpoint(tmp_path / "ckpt", {"shadows": False, "msaa_samples": 0})
    kw = {"n_episodes": 3, "positions": "random", "seed": 4, "n_videos": 0, "precision": "bf16"}
    kw["env_overrides"] = {"max_episode_steps": 8}
    runs = [evaluate(ckpt, workers=w, **kw) for w in (2, 2, 0)]
    assert all(r.info["encoder"]["precision"] == "bf16" for r in runs)
    records = [[rec.to_dict() for rec in r.records] for r in runs]
    assert records[0] == records[1] == records[2]
    assert len({json.dumps(r["cube_pos"]) for r in records[0]}) == 3


def test_the_rasterizer_thread_count_changes_no_pixel(tmp_path):
    """The CPU plan sets LP_NUM_THREADS per env process (0 = rasterize in the calling thread): a
    speed setting, so it is not part of the render profile, because it changes no pixel."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from envs.cube_pick import CubePickEnv\n"
        "env = CubePickEnv(image_size=64)\n"
        "obs, _ = env.reset(seed=3, options={'cube_pos': (0.5, 0.02)})\n"
        "for _ in range(3):\n"
        "    obs, *_ = env.step(np.array([0.2, 0.1, -0.4, 1.0], np.float32))\n"
        "np.save(__import__('sys').argv[1], obs['image'])\n"
    )
    frames = []
    for threads in ("0", "2"):
        out = tmp_path / f"lp{threads}.npy"
        env = {**os.environ, "LP_NUM_THREADS": threads, "MUJOCO_GL": "egl"}
        subprocess.run([sys.executable, "-c", script, str(out)], env=env, check=True, timeout=120)
        frames.append(np.load(out))
    np.testing.assert_array_equal(frames[0], frames[1])
