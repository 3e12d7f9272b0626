"""The privileged-state oracle row: its feature, and the cache / train / eval path it shares."""

import json
import math

import numpy as np
import pytest
import torch

from robo_s2.data.store import DemoStore
from robo_s2.encoders import create_encoder
from robo_s2.encoders.feature_cache import encode_store, load_features
from robo_s2.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(x, y, z, yaw):
    q = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
    return np.array([x, y, z, *q, 0.5, 0.0, 0.3, 0.0, 0.08], np.float32)


def test_the_feature_is_the_cube_pose_and_its_quarter_turn_yaw():
    oracle = create_encoder("oracle")
    states = np.stack([_state(0.45, -0.05, 0.02, 0.3), _state(0.55, 0.08, 0.02, 0.3 + math.pi / 2)])
    feats = oracle(torch.from_numpy(states))
    assert feats.shape == (2, 5) and oracle.feature_dim == 5
    np.testing.assert_allclose(feats[0, :3], [0.45, -0.05, 0.02], atol=1e-6)
    np.testing.assert_allclose(feats[0, 3:], [math.sin(1.2), math.cos(1.2)], atol=1e-5)
    np.testing.assert_allclose(feats[0, 3:], feats[1, 3:], atol=1e-5)  # a quarter turn looks alike
    assert create_encoder("oracle", yaw=False)(torch.from_numpy(states)).shape == (2, 3)
    with pytest.raises(UserError, match="reads the 12-D privileged state"):
        oracle(torch.zeros(2, 11))
    assert oracle.describe()["reference"].startswith("oracle")


def test_experiment_rows_label_the_oracle_as_a_ceiling(tmp_path):
    from omegaconf import OmegaConf

    from robo_s2.experiments.runner import encoder_cost

    cfg = OmegaConf.create({"encoder": {"name": "oracle"}})
    params, gflops, dim, note = encoder_cost(cfg)
    assert (params, dim, note) == (0, 5, "oracle ceiling, not vision") and gflops < 1e-3
    vit = OmegaConf.create({"encoder": {"name": "timm", "image_size": 32}})
    assert encoder_cost(vit)[3] == ""


def _store(path, n_episodes=4):
    from robo_s2.data.collection import collect

    env = {"image_size": 32, "shadows": False, "msaa_samples": 0}
    collect(path, n_episodes=n_episodes, env_kwargs=env, seed=0, workers=0)
    return path


def test_oracle_features_are_cached_from_the_state(tmp_path):
    store = DemoStore.open(_store(tmp_path / "s.zarr"), mode="a")
    oracle = create_encoder("oracle")
    status = encode_store(store, oracle)
    assert status.key.startswith("oracle-state-fp32-") and status.n_encoded_now == store.n_frames
    feats = load_features(store, oracle, "image")  # the camera key does not matter: it reads state
    state = np.asarray(store.array("state")[: store.n_frames])
    np.testing.assert_allclose(feats[:, :3], state[:, :3], atol=1e-6)
    bare = DemoStore.create(tmp_path / "bare.zarr")
    bare.append_episode({"image": np.zeros((3, 8, 8, 3), np.uint8), "action": np.zeros((3, 4))})
    with pytest.raises(UserError, match="has no data/state"):
        encode_store(bare, oracle)


def test_oracle_trains_and_evaluates_without_rendering(tmp_path):
    from hydra import compose, initialize_config_dir

    from robo_s2.evaluation.runner import evaluate, load_target
    from robo_s2.paths import config_dir
    from robo_s2.training.trainer import train

    store = _store(tmp_path / "s.zarr", n_episodes=6)
    overrides = [
        f"data.store={store}", "encoder=oracle", "policy.d_model=32", "policy.n_layers=1",
        "policy.n_heads=2", "policy.history=4", "policy.chunk=4", "train.batch_size=16",
        "train.steps=60", "train.warmup_steps=5", "train.eval_every=30", "train.save_every=30",
        "data.val_fraction=0.2",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("train", overrides=overrides)
    res = train(cfg, tmp_path / "run")
    assert res.step == 60 and "oracle-state-fp32-" in res.feature_source
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    meta = json.loads((ckpt / "robo_s2.json").read_text())
    assert meta["image_key"] == "state" and meta["encoder"]["label"] == "oracle"
    target = load_target(ckpt, torch.device("cpu"), env_overrides={"max_episode_steps": 5})
    assert target.env_kwargs["render_images"] is False  # no frame is rendered for the oracle
    out = evaluate(
        ckpt, n_episodes=2, positions="random", workers=0, n_videos=0,
        env_overrides={"max_episode_steps": 5},
    )  # fmt: skip
    assert out.n_episodes == 2 and out.info["image_key"] == "state"
