"""What the test modules share: the CLI runner, the tiny training settings, synthetic demo stores
and foreign datasets. Test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import zarr
from hydra import compose, initialize_config_dir

from robo_s2.data.interop import NATIVE_ENV_ID
from robo_s2.data.store import DemoStore
from robo_s2.paths import config_dir

# ------------------------------------------------------------------------------------------------
# the CLI


def robo_s2(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``robo-s2 <args[0]> <args[1:]>`` in ``cwd``, on one torch thread (CI's 2 cores are shared
    with the test process). Its Hydra run directory is ``<cwd>/run_out`` unless ``args`` name a
    ``hydra.run.dir``; without ``cwd`` it runs here and should write nothing (``--cfg``, errors)."""
    rest = list(args[1:])
    if cwd is not None and not any(a.startswith("hydra.run.dir=") for a in rest):
        # beside the other overrides: Hydra's argparse wants them in one run (`--cfg job a=1 b=2`)
        at = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
        rest.insert(at, f"hydra.run.dir={Path(cwd) / 'run_out'}")
    return subprocess.run(
        [sys.executable, "-m", "robo_s2", *args[:1], *rest],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **(env or {})},
    )


# ------------------------------------------------------------------------------------------------
# tiny training

# an experiment's train_overrides, as small as a run that trains, validates and saves can be
TINY_TRAIN = [
    "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2", "policy.history=4",
    "policy.chunk=4", "train.batch_size=8", "train.steps=6", "train.warmup_steps=2",
    "train.eval_every=3", "train.save_every=3", "data.val_fraction=0.34",
]  # fmt: skip


def listed(items: list[str]) -> str:
    """``items`` as one Hydra list override value: ``['a=1','b=2']``."""
    return "[" + ",".join(f"'{i}'" for i in items) + "]"


IMG = 64
# robo-s2 train on a synthetic store: a random-init ViT-Ti/16 at 64 px (2x2 grid of tokens), a
# tiny transformer
TINY_TRAIN_CFG = [
    "encoder=vit_t",
    f"encoder.image_size={IMG}",
    "encoder.pooling=grid:2",
    "policy.d_model=32",
    "policy.n_layers=1",
    "policy.n_heads=2",
    "policy.history=4",
    "policy.chunk=4",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.eval_every=5",
    "train.save_every=5",
    "train.log_every=5",
    "data.val_fraction=0.25",
]


def train_cfg(store, *overrides: str, base=TINY_TRAIN_CFG):
    """configs/train.yaml composed for ``store`` with ``base`` and ``overrides``."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("train", overrides=[f"data.store={store}", *base, *overrides])


# ------------------------------------------------------------------------------------------------
# synthetic demo stores


def smooth_action_store(path: Path, n_episodes: int = 6, length: int = 10, seed: int = 0) -> Path:
    """A small synthetic store: random frames, actions a smooth function of proprio and time."""
    rng = np.random.default_rng(seed)
    attrs = {"env": {"id": "synthetic", "image_size": IMG}, "action_semantics": ["a", "b", "g"]}
    store = DemoStore.create(path, attrs=attrs)
    for _ in range(n_episodes):
        t = np.arange(length, dtype=np.float32)
        goal = rng.uniform(-1, 1, size=2).astype(np.float32)
        proprio = np.stack([t / length, np.full(length, goal[0]), np.full(length, goal[1])], 1)
        action = np.stack(
            [np.sin(t / 3) + goal[0], np.cos(t / 3) + goal[1], (t > length / 2) * 2.0 - 1], 1
        )
        store.append_episode(
            {
                "image": rng.integers(0, 256, (length, IMG, IMG, 3), dtype=np.uint8),
                "proprio": proprio.astype(np.float32),
                "action": action.astype(np.float32),
            }
        )
    store.close()
    return path


def random_store(path, n_episodes=3, length=5, size=32):
    """Random frames, proprio and actions; returned open for writing (features go into it)."""
    rng = np.random.default_rng(0)
    store = DemoStore.create(path, attrs={"env": {"id": "test"}})
    for _ in range(n_episodes):
        store.append_episode(
            {
                "image": rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
                "proprio": rng.normal(size=(length, 4)).astype(np.float32),
                "action": rng.normal(size=(length, 3)).astype(np.float32),
            }
        )
    return store


def square_store(path, n_episodes=6, length=4, size=32):
    """Frames with structure (a bright square at an episode-dependent place) plus noise."""
    rng = np.random.default_rng(0)
    store = DemoStore.create(path, attrs={"env": {"id": "test"}})
    for e in range(n_episodes):
        img = rng.integers(0, 60, (length, size, size, 3), dtype=np.uint8)
        for t in range(length):
            r, c = (3 * e + t) % (size - 8), (5 * e + 2 * t) % (size - 8)
            img[t, r : r + 8, c : c + 8] = 230
        store.append_episode(
            {
                "image": img,
                "proprio": rng.normal(size=(length, 4)).astype(np.float32),
                "action": rng.normal(size=(length, 3)).astype(np.float32),
            }
        )
    store.close()
    return path


SMALL = 8  # frame side of the foreign datasets and native stores below (px)


def native_store(path: Path, n_episodes: int = 3, seed: int = 1) -> DemoStore:
    """A store as robo-s2 collect writes it (two cameras, proprio, action, state)."""
    rng = np.random.default_rng(seed)
    attrs = {
        "env": {"id": NATIVE_ENV_ID, "image_size": SMALL, "kwargs": {"image_size": SMALL}},
        "source": "robo_s2 collect (scripted expert)",
        "action_semantics": ["dx", "dy", "dz", "gripper"],
        "proprio_semantics": [f"p{i}" for i in range(11)],
        "cameras": ["front", "wrist"],
    }
    store = DemoStore.create(path, attrs=attrs)
    for i in range(n_episodes):
        n = 4 + i
        store.append_episode(
            {
                "image": rng.integers(0, 256, (n, SMALL, SMALL, 3), dtype=np.uint8),
                "image_wrist": rng.integers(0, 256, (n, SMALL, SMALL, 3), dtype=np.uint8),
                "proprio": rng.standard_normal((n, 11)).astype(np.float32),
                "action": rng.standard_normal((n, 4)).astype(np.float32),
                "state": rng.standard_normal((n, 20)).astype(np.float32),
            }
        )
    store.close()
    return DemoStore.open(path)


def assert_same_store(a: DemoStore, b: DemoStore) -> None:
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for i in range(a.n_episodes):
        ea, eb = a.episode(i), b.episode(i)
        for key in a.keys():
            assert ea[key].dtype == eb[key].dtype, key
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# foreign datasets

ROBOMIMIC_LENGTHS = {"demo_0": 5, "demo_2": 3, "demo_10": 4}  # non-contiguous; demo_10 sorts last
ROBOMIMIC_PROPRIO = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}
ROBOMIMIC_ENV_ARGS = {
    "env_name": "Lift",
    "type": 1,
    "env_kwargs": {"control_freq": 20, "controller_configs": {"type": "OSC_POSE"}},
}


def f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """float64 values that float32 holds exactly (robomimic files store float64)."""
    return rng.standard_normal(shape).astype(np.float32).astype(np.float64)


def make_robomimic(
    path: Path, lengths: dict[str, int] = ROBOMIMIC_LENGTHS, seed: int = 0, size: int = SMALL
) -> dict:
    """A robomimic image dataset; returns {demo: {dataset path: array}} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for name in sorted(lengths, key=lambda n: -int(n[5:])):  # written out of order on purpose
            n = lengths[name]
            g = data.create_group(name)
            g.attrs["num_samples"] = n
            arrays = {
                "actions": f32(rng, n, 7),
                "rewards": np.arange(n, dtype=np.float64),
                "dones": np.eye(1, n, n - 1, dtype=np.int64)[0],
                "states": rng.standard_normal((n, 12)),  # float64 sim states, kept exactly
                "obs/agentview_image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                "obs/robot0_eye_in_hand_image": rng.integers(
                    0, 256, (n, size, size, 3), dtype=np.uint8
                ),
                "obs/object": f32(rng, n, 10),
                **{f"obs/{k}": f32(rng, n, d) for k, d in ROBOMIMIC_PROPRIO.items()},
            }
            for key, x in arrays.items():
                g.create_dataset(key, data=x)
                if key.startswith("obs/"):
                    g.create_dataset("next_obs/" + key[4:], data=np.concatenate([x[1:], x[-1:]]))
            written[name] = arrays
            total += n
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(ROBOMIMIC_ENV_ARGS)
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))
    return written


def make_pusht(path: Path, ends=(4, 7, 12), codec=None, seed: int = 0) -> dict[str, np.ndarray]:
    """pusht_cchi_v7_replay.zarr's layout: img float32 (0..255), state (N,5), action, keypoint."""
    rng = np.random.default_rng(seed)
    n = ends[-1]
    arrays = {
        "img": rng.integers(0, 256, (n, 16, 16, 3)).astype(np.float32),
        "state": rng.standard_normal((n, 5)).astype(np.float32),
        "action": rng.standard_normal((n, 2)).astype(np.float32),
        "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
    }
    from numcodecs import Blosc

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = root.create_group("data")
    for key, x in arrays.items():
        is_img = key == "img"
        if codec is not None and is_img:
            x = arrays[key] = x.astype(np.uint8)
        a = data.create_array(
            key,
            shape=x.shape,
            chunks=(1, *x.shape[1:]) if is_img else x.shape,
            dtype=x.dtype,
            compressors=codec if (codec is not None and is_img) else Blosc(cname="lz4"),
        )
        a[:] = x
    meta = root.create_group("meta")
    e = meta.create_array("episode_ends", shape=(len(ends),), dtype="int64")
    e[:] = np.array(ends)
    return arrays


# ------------------------------------------------------------------------------------------------
# checkpoints


def tiny_policy_checkpoint(directory, action_dim=4, env_kwargs=None, env_id=None, **policy_kwargs):
    """A random-init ViT-T (64²) + tiny chunk transformer checkpoint for the cube-picking env,
    its normalizer fitted to random data: a real checkpoint in every file, fast to make."""
    import torch

    from envs.cube_pick import CubePickEnv
    from policies import create_policy
    from robo_s2.encoders import create_encoder
    from robo_s2.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    encoder = create_encoder("vit_t", image_size=64)
    policy = create_policy(
        "chunk_transformer", feature_dim=encoder.feature_dim, proprio_dim=11,
        action_dim=action_dim, d_model=32, n_layers=1, n_heads=2, dropout=0.0, **policy_kwargs,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    policy.fit_normalizer(
        {
            "feature": rng.normal(size=(64, encoder.feature_dim)).astype(np.float32),
            "proprio": rng.normal(size=(64, 11)).astype(np.float32),
            "action": rng.normal(0, 0.5, size=(64, action_dim)).astype(np.float32),
        }
    )
    env = CubePickEnv(**{"image_size": 64, "render_images": False, **(env_kwargs or {})})
    desc = env.describe()
    env.close()
    if env_id is not None:
        desc = {**desc, "id": env_id, "foreign": True}
    return save_checkpoint(directory, policy, encoder, {"env": desc, "image_key": "image"}, {})
