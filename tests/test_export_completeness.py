"""What an export must not leave out, and what train must not ignore: robomimic's train/valid
masks (its ``validate=True`` needs both), sparse rewards from the recorded success instead of
zeros, and a store's own train/valid split honoured by ``robo-s2 train``."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import make_robomimic, smooth_action_store, train_cfg

from robo_s2.data.collection import collect
from robo_s2.data.interop.robomimic_hdf5 import export_robomimic, import_robomimic
from robo_s2.data.store import DemoStore
from robo_s2.data.windows import split_episodes, store_split
from robo_s2.errors import UserError
from robo_s2.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """5 expert demos of the cube-picking env at 32 px (a few seconds)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    out = tmp_path_factory.mktemp("collected") / "s.zarr"
    collect(out, n_episodes=5, env_kwargs={"image_size": 32}, seed=0, workers=0)
    return out


def _names(f: h5py.File, key: str) -> list[str]:
    return [n.decode() for n in f[key][()]]


def test_collection_records_the_env_reward(collected: Path) -> None:
    store = DemoStore.open(collected)
    for i in range(store.n_episodes):
        reward = store.episode(i)["reward"]
        # the env rewards 1 on success and ends the episode there: one 1, at the last step
        assert reward.dtype == np.float32 and reward[-1] == 1.0 and reward[:-1].sum() == 0


def test_robomimic_export_writes_train_and_valid_masks(collected: Path, tmp_path: Path) -> None:
    import robomimic.utils.file_utils as FileUtils

    res = export_robomimic(collected, tmp_path / "x.hdf5", val_fraction=0.4, split_seed=3)
    want = split_episodes(5, 0.4, 3)  # what robo-s2 train draws with the same fraction and seed
    with h5py.File(tmp_path / "x.hdf5") as f:
        assert _names(f, "mask/train") == [f"demo_{i}" for i in want.train]
        assert _names(f, "mask/valid") == [f"demo_{i}" for i in want.val]
    for key, idx in (("train", want.train), ("valid", want.val)):
        demos = FileUtils.get_demos_for_filter_key(str(tmp_path / "x.hdf5"), filter_key=key)
        assert sorted(demos) == sorted(f"demo_{i}" for i in idx)
    assert any("seeded split (val_fraction=0.4, seed=3" in n for n in res.notes)


def test_robomimic_export_rewards_are_the_recorded_success(collected: Path, tmp_path: Path) -> None:
    export_robomimic(collected, tmp_path / "x.hdf5")
    store = DemoStore.open(collected)
    with h5py.File(tmp_path / "x.hdf5") as f:
        for i in range(store.n_episodes):
            r = f[f"data/demo_{i}/rewards"][()]
            np.testing.assert_array_equal(r, store.episode(i)["reward"].astype(np.float64))
            assert r.sum() == 1.0  # robomimic's offline-RL algorithms see the success

    # a store collected before rewards were recorded: sparse from the recorded success
    old = DemoStore.create(tmp_path / "old.zarr", attrs=store.attrs)
    for i in range(store.n_episodes):
        old.append_episode({k: v for k, v in store.episode(i).items() if k != "reward"})
    old.close()
    res = export_robomimic(tmp_path / "old.zarr", tmp_path / "old.hdf5")
    assert any("sparse from the recorded success" in n for n in res.notes)
    with h5py.File(tmp_path / "old.hdf5") as f:
        for i in range(store.n_episodes):
            r = f[f"data/demo_{i}/rewards"][()]
            assert r[-1] == 1.0 and r[:-1].sum() == 0


def test_export_says_when_it_cannot_know_the_rewards(tmp_path: Path) -> None:
    store = smooth_action_store(
        tmp_path / "syn.zarr", n_episodes=3
    )  # a foreign env, no success record
    res = export_robomimic(store, tmp_path / "syn.hdf5", compression=None)
    assert any("written as zeros" in n for n in res.notes)
    with h5py.File(tmp_path / "syn.hdf5") as f:
        assert f["data/demo_0/rewards"][()].sum() == 0


def test_imported_masks_survive_the_round_trip(tmp_path: Path) -> None:
    make_robomimic(tmp_path / "lift.hdf5")
    import_robomimic(tmp_path / "lift.hdf5", tmp_path / "s.zarr")
    res = export_robomimic(tmp_path / "s.zarr", tmp_path / "again.hdf5")
    with h5py.File(tmp_path / "again.hdf5") as f:
        assert _names(f, "mask/train") == ["demo_0", "demo_10"]
        assert _names(f, "mask/valid") == ["demo_2"]
    assert any("the store's own split" in n for n in res.notes)


def test_store_split_reads_what_importers_record() -> None:
    split = store_split({"split": {"train": [0, 2, 9], "valid": [1]}}, n_episodes=4)
    assert split is not None
    assert split.train.tolist() == [0, 2] and split.val.tolist() == [1]  # 9: not imported yet
    legacy = store_split({"robomimic": {"masks": {"train": [1], "valid": [0]}}}, 2)
    assert legacy is not None and legacy.train.tolist() == [1]
    assert store_split({}, 4) is None
    assert store_split({"split": {"train": [0, 1], "valid": []}}, 2) is None  # nothing held out
    with pytest.raises(UserError, match="data.split=random"):
        store_split({"split": {"train": [0, 1], "valid": [1]}}, 2)


def test_train_honours_the_store_split_unless_told_random(tmp_path: Path) -> None:
    path = smooth_action_store(tmp_path / "s.zarr", n_episodes=6)
    store = DemoStore.open(path, mode="a")
    store.update_attrs({"split": {"train": [0, 1, 2, 3], "valid": [4, 5]}})
    store.close()
    trainer = Trainer(train_cfg(path, "train.steps=1"), tmp_path / "run")
    try:
        trainer.setup()
        assert trainer.split.train.tolist() == [0, 1, 2, 3]
        assert trainer.split.val.tolist() == [4, 5]
        assert "by the store's own train/valid split" in trainer._describe()
    finally:
        trainer.close()
    trainer = Trainer(train_cfg(path, "train.steps=1", "data.split=random"), tmp_path / "run2")
    try:
        trainer.setup()
        assert trainer.split.val.tolist() == split_episodes(6, 0.25, 0).val.tolist()
        assert "by a seeded random split" in trainer._describe()
    finally:
        trainer.close()
    trainer = Trainer(train_cfg(path, "data.split=nope"), tmp_path / "run3")
    try:
        with pytest.raises(UserError, match="data.split='nope'"):
            trainer.setup()
    finally:
        trainer.close()


def test_robomimic_train_validates_on_our_export(collected: Path, tmp_path: Path, capsys) -> None:
    """robomimic's own training loop with ``experiment.validate=True`` (which needs both masks)
    trains BC on the export and runs its validation epochs."""
    from robomimic.config import config_factory
    from robomimic.scripts.train import train as robomimic_train

    export_robomimic(collected, tmp_path / "x.hdf5")
    cfg = config_factory("bc")
    with cfg.values_unlocked():
        cfg.train.data = str(tmp_path / "x.hdf5")
        cfg.train.output_dir = str(tmp_path / "rm_out")
        cfg.train.num_epochs, cfg.train.batch_size, cfg.train.num_data_workers = 2, 8, 0
        cfg.train.hdf5_cache_mode = "all"
        cfg.train.hdf5_filter_key, cfg.train.hdf5_validation_filter_key = "train", "valid"
        cfg.experiment.validate = True
        cfg.experiment.epoch_every_n_steps, cfg.experiment.validation_epoch_every_n_steps = 3, 2
        cfg.experiment.rollout.enabled = False
        cfg.experiment.logging.log_tb = False
        cfg.experiment.save.enabled = False
        cfg.observation.modalities.obs.low_dim = ["proprio"]
        cfg.observation.modalities.obs.rgb = []
        cfg.experiment.name = "validate"
    robomimic_train(cfg, device="cpu")
    out = capsys.readouterr().out
    assert "Validation Epoch 2" in out and '"Loss"' in out.split("Validation Epoch 2")[1]
