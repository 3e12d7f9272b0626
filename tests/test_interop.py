"""robo-s2 import / export: robomimic HDF5 and diffusion_policy zarr, both ways.

Every foreign file is built here, small, in the real layouts: robomimic's (h5py; non-contiguous demo
numbering, filter masks, next_obs) and diffusion_policy's ReplayBuffer (zarr v2 directory, .zarr.zip,
JPEG2000 images via imagecodecs when it is installed).
"""

from __future__ import annotations

import inspect
import json
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from helpers import (
    ROBOMIMIC_ENV_ARGS,
    ROBOMIMIC_LENGTHS,
    ROBOMIMIC_PROPRIO,
    SMALL,
    assert_same_store,
    make_pusht,
    make_robomimic,
    native_store,
    robo_s2,
)

from robo_s2.data.interop import NATIVE_ENV_ID, is_foreign, require_native_env
from robo_s2.data.interop.dp_zarr import export_dp, import_dp
from robo_s2.data.interop.robomimic_hdf5 import export_robomimic, import_robomimic
from robo_s2.data.store import DemoStore
from robo_s2.errors import UserError

H = W = SMALL
LENGTHS, PROPRIO, ENV_ARGS = ROBOMIMIC_LENGTHS, ROBOMIMIC_PROPRIO, ROBOMIMIC_ENV_ARGS


ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# robomimic import


def test_imported_demos_train_and_evaluation_says_why_it_cannot_run(tmp_path):
    """Foreign demos train like collected ones (their own action and proprio sizes); evaluating
    the policy in our env is refused with a reason, before any env starts."""
    from hydra import compose, initialize_config_dir

    from robo_s2.evaluation.runner import evaluate
    from robo_s2.paths import config_dir
    from robo_s2.training.trainer import train

    src = tmp_path / "lift.hdf5"
    make_robomimic(src, lengths={"demo_0": 9, "demo_1": 8, "demo_2": 7}, size=32)
    import_robomimic(src, tmp_path / "lift.zarr")
    overrides = [
        f"data.store={tmp_path / 'lift.zarr'}", "encoder=vit_t", "encoder.image_size=32",
        "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2", "policy.history=4",
        "policy.chunk=4", "train.batch_size=8", "train.steps=4", "train.warmup_steps=1",
        "train.eval_every=2", "data.val_fraction=0.34", "device=cpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("train", overrides=overrides)
    res = train(cfg, tmp_path / "run")
    assert res.step == 4 and res.final["l1"] > 0
    assert res.checkpoint is not None
    with pytest.raises(
        UserError, match="trained on .*Lift.* demos; evaluation needs robo_s2/CubePick"
    ):
        evaluate(res.checkpoint, n_episodes=1, positions="random", workers=0)


def test_robomimic_import_maps_keys_orders_demos_and_keeps_masks(tmp_path):
    src = tmp_path / "lift.hdf5"
    written = make_robomimic(src)
    res = import_robomimic(src, tmp_path / "s.zarr", extra_image_keys=["robot0_eye_in_hand_image"])
    assert (res.n_new, res.n_total, res.n_frames) == (3, 3, 12)
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.keys() == ["action", "image", "image_robot0_eye_in_hand", "proprio", "state"]
    order = ["demo_0", "demo_2", "demo_10"]
    for i, name in enumerate(order):
        ep, src_ep = store.episode(i), written[name]
        np.testing.assert_array_equal(ep["image"], src_ep["obs/agentview_image"])
        np.testing.assert_array_equal(
            ep["image_robot0_eye_in_hand"], src_ep["obs/robot0_eye_in_hand_image"]
        )
        proprio = np.concatenate([src_ep[f"obs/{k}"] for k in PROPRIO], axis=1)
        assert ep["proprio"].dtype == np.float32 and ep["action"].dtype == np.float32
        np.testing.assert_array_equal(ep["proprio"], proprio.astype(np.float32))
        np.testing.assert_array_equal(ep["action"], src_ep["actions"].astype(np.float32))
        assert ep["state"].dtype == np.float64
        np.testing.assert_array_equal(ep["state"], src_ep["states"])
    attrs = store.attrs
    rm = attrs["robomimic"]
    assert rm["demos"] == order
    assert rm["masks"] == {"train": [0, 2], "valid": [1]}
    assert rm["env_args"] == ENV_ARGS
    assert rm["proprio_layout"] == [
        ["robot0_eef_pos", 0, 3, [3]],
        ["robot0_eef_quat", 3, 7, [4]],
        ["robot0_gripper_qpos", 7, 9, [2]],
    ]
    assert attrs["env"]["id"] == "Lift" and attrs["env"]["foreign"] is True
    assert attrs["proprio_semantics"][:3] == [
        "robot0_eef_pos[0]",
        "robot0_eef_pos[1]",
        "robot0_eef_pos[2]",
    ]
    assert len(attrs["proprio_semantics"]) == 9
    assert attrs["action_semantics"][-1] == "gripper" and len(attrs["action_semantics"]) == 7
    assert attrs["control_hz"] == 20
    assert attrs["source"].startswith("robomimic HDF5") and str(src) in attrs["source"]
    assert is_foreign(store) and is_foreign(tmp_path / "s.zarr")
    import envs

    assert NATIVE_ENV_ID == envs.ENV_ID
    assert not is_foreign({"env": {"id": envs.ENV_ID}}) and is_foreign({})
    with pytest.raises(UserError, match="cannot evaluate.*Lift.*robo_s2/CubePick-v0"):
        require_native_env(store)


def test_robomimic_filter_key_imports_one_mask(tmp_path):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    import_robomimic(src, tmp_path / "s.zarr", filter_key="train")
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.attrs["robomimic"]["demos"] == ["demo_0", "demo_10"]
    assert store.attrs["robomimic"]["masks"] == {"train": [0, 1], "valid": []}
    with pytest.raises(UserError, match=r"no filter key 'test'.*\['train', 'valid'\]"):
        import_robomimic(src, tmp_path / "t.zarr", filter_key="test")


# ------------------------------------------------------------------------------------------------
# robomimic export, read by robomimic itself


def _robomimic_dataset(path: Path, low_dim: list[str], rgb: list[str], **kwargs):
    import robomimic.utils.file_utils as FileUtils
    import robomimic.utils.obs_utils as ObsUtils
    from robomimic.utils.dataset import SequenceDataset

    ObsUtils.initialize_obs_utils_with_obs_specs({"obs": {"low_dim": low_dim, "rgb": rgb}})
    shapes = FileUtils.get_shape_metadata_from_dataset(str(path), all_obs_keys=low_dim + rgb)
    env_meta = FileUtils.get_env_metadata_from_dataset(str(path))
    ds = SequenceDataset(
        hdf5_path=str(path),
        obs_keys=low_dim + rgb,
        dataset_keys=["actions", "rewards", "dones"],
        seq_length=1,
        hdf5_cache_mode=None,
        hdf5_use_swmr=False,
        **kwargs,
    )
    return ds, shapes, env_meta


def test_robomimic_reads_an_export_of_a_collected_store(tmp_path):
    store = native_store(tmp_path / "s.zarr")
    res = export_robomimic(tmp_path / "s.zarr", tmp_path / "out.hdf5")
    assert res.n_episodes == 3 and res.n_frames == 4 + 5 + 6
    ds, shapes, env_meta = _robomimic_dataset(
        tmp_path / "out.hdf5", ["proprio"], ["agentview_image", "wrist_image"]
    )
    assert env_meta["env_name"] == NATIVE_ENV_ID
    assert shapes["ac_dim"] == 4
    assert shapes["all_shapes"]["proprio"] == [11]
    assert list(shapes["all_shapes"]["agentview_image"]) == [3, H, W]
    assert len(ds) == store.n_frames and ds.n_demos == 3
    for frame in (0, 5, store.n_frames - 1):
        i = int(np.searchsorted(store.episode_ends, frame, side="right"))
        t = frame - (int(store.episode_ends[i - 1]) if i else 0)
        ep = store.episode(i)
        item = ds[frame]
        np.testing.assert_array_equal(item["actions"][0], ep["action"][t])
        np.testing.assert_array_equal(item["obs"]["proprio"][0], ep["proprio"][t])
        # SequenceDataset hands out the stored uint8 HWC frames (its models process them later)
        np.testing.assert_array_equal(item["obs"]["agentview_image"][0], ep["image"][t])
        np.testing.assert_array_equal(item["obs"]["wrist_image"][0], ep["image_wrist"][t])
    with h5py.File(tmp_path / "out.hdf5") as f:
        np.testing.assert_array_equal(f["data/demo_1/states"][()], store.episode(1)["state"])
        np.testing.assert_array_equal(f["data/demo_1/dones"][()], [0, 0, 0, 0, 1])
        assert f["data"].attrs["total"] == store.n_frames
    # ... and importing the export back restores the store exactly, attributes included
    import_robomimic(tmp_path / "out.hdf5", tmp_path / "back.zarr")
    back = DemoStore.open(tmp_path / "back.zarr")
    assert_same_store(store, back)
    for key in ("env", "action_semantics", "proprio_semantics", "cameras"):
        assert back.attrs[key] == store.attrs[key], key
    assert not is_foreign(back)
    require_native_env(back)  # no error


def test_robomimic_round_trip_keeps_names_masks_and_values(tmp_path):
    src = tmp_path / "lift.hdf5"
    written = make_robomimic(src)
    import_robomimic(src, tmp_path / "s.zarr", extra_keys={"rewards": "reward", "dones": "done"})
    export_robomimic(tmp_path / "s.zarr", tmp_path / "again.hdf5")
    ds, shapes, env_meta = _robomimic_dataset(
        tmp_path / "again.hdf5", list(PROPRIO), ["agentview_image"], filter_by_attribute="valid"
    )
    assert env_meta == ENV_ARGS
    assert ds.demos == ["demo_2"] and len(ds) == 3
    assert shapes["all_shapes"]["robot0_eef_quat"] == [4]
    item = ds[1]
    np.testing.assert_array_equal(
        item["obs"]["robot0_eef_quat"][0], written["demo_2"]["obs/robot0_eef_quat"][1]
    )
    with h5py.File(tmp_path / "again.hdf5") as f:
        assert sorted(f["data"], key=lambda n: int(n[5:])) == ["demo_0", "demo_2", "demo_10"]
        assert [n.decode() for n in f["mask/train"][()]] == ["demo_0", "demo_10"]
        for name, arrays in written.items():
            g = f[f"data/{name}"]
            assert g.attrs["num_samples"] == LENGTHS[name]
            for key in (
                "actions",
                "rewards",
                "dones",
                "states",
                "obs/agentview_image",
                *(f"obs/{k}" for k in PROPRIO),
            ):
                np.testing.assert_array_equal(g[key][()], arrays[key], err_msg=f"{name}/{key}")
            np.testing.assert_array_equal(
                g["next_obs/robot0_eef_pos"][()],
                arrays["obs/robot0_eef_pos"][[*range(1, LENGTHS[name]), -1]],
            )


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    native_store(tmp_path / "s.zarr")
    (tmp_path / "out.hdf5").write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists"):
        export_robomimic(tmp_path / "s.zarr", tmp_path / "out.hdf5")
    assert (tmp_path / "out.hdf5").read_bytes() == b"precious"

    def boom(res):
        if res.n_episodes == 2:
            raise KeyboardInterrupt

    for out in ("new.hdf5", "new.zarr", "new.zarr.zip"):
        export = export_robomimic if out.endswith("hdf5") else export_dp
        with pytest.raises(KeyboardInterrupt):
            export(tmp_path / "s.zarr", tmp_path / out, on_episode=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.hdf5", "s.zarr"]
    export_robomimic(tmp_path / "s.zarr", tmp_path / "out.hdf5", overwrite=True)
    assert h5py.is_hdf5(tmp_path / "out.hdf5")


# ------------------------------------------------------------------------------------------------
# resume


def test_import_resumes_after_an_interruption(tmp_path, monkeypatch):
    import robo_s2.data.interop.robomimic_hdf5 as rh
    import robo_s2.data.store as store_mod

    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    import_robomimic(src, tmp_path / "full.zarr")

    # 1) interrupted while reading the 2nd demo; 2) Ctrl-C in the middle of the 3rd append
    calls = {"n": 0}
    real = rh.as_image

    def flaky_image(x, where):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(x, where)

    monkeypatch.setattr(rh, "as_image", flaky_image)
    with pytest.raises(KeyboardInterrupt):
        import_robomimic(src, tmp_path / "s.zarr")
    monkeypatch.setattr(rh, "as_image", real)
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.n_episodes == 1
    assert store.attrs["import_progress"]["next_demo"] == "demo_2"

    def crash(stage):
        if stage == "written:action" and DemoStore.open(tmp_path / "s.zarr").n_episodes == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_crash_point", crash)
    with pytest.raises(KeyboardInterrupt):
        import_robomimic(src, tmp_path / "s.zarr")
    monkeypatch.setattr(store_mod, "_crash_point", lambda stage: None)
    assert DemoStore.open(tmp_path / "s.zarr").n_episodes == 2

    res = import_robomimic(src, tmp_path / "s.zarr")
    assert (res.done_before, res.n_new, res.n_total) == (2, 1, 3)
    assert_same_store(DemoStore.open(tmp_path / "full.zarr"), DemoStore.open(tmp_path / "s.zarr"))
    assert DemoStore.open(tmp_path / "s.zarr").attrs["robomimic"]["masks"] == {
        "train": [0, 2],
        "valid": [1],
    }
    again = import_robomimic(src, tmp_path / "s.zarr")
    assert again.n_new == 0 and again.n_total == 3


def test_import_resumes_after_sigkill(tmp_path):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    script = textwrap.dedent(
        f"""
        import os, signal
        import robo_s2.data.store as store_mod
        from robo_s2.data.interop.robomimic_hdf5 import import_robomimic
        seen = []
        def crash(stage):
            seen.append(stage)
            if stage == "written:image" and seen.count("marked") == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        store_mod._crash_point = crash
        import_robomimic({str(src)!r}, {str(tmp_path / "s.zarr")!r})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert DemoStore.open(tmp_path / "s.zarr").n_episodes == 1  # the half episode is invisible
    res = import_robomimic(src, tmp_path / "s.zarr")
    assert (res.done_before, res.n_new) == (1, 2)
    import_robomimic(src, tmp_path / "full.zarr")
    assert_same_store(DemoStore.open(tmp_path / "full.zarr"), DemoStore.open(tmp_path / "s.zarr"))


def test_a_different_src_for_an_existing_out_is_an_error(tmp_path):
    make_robomimic(tmp_path / "a.hdf5")
    make_robomimic(tmp_path / "b.hdf5", seed=1)
    import_robomimic(tmp_path / "a.hdf5", tmp_path / "s.zarr")
    with pytest.raises(UserError, match=r"imported from .*a\.hdf5, not .*b\.hdf5"):
        import_robomimic(tmp_path / "b.hdf5", tmp_path / "s.zarr")
    with pytest.raises(UserError, match="different import.*proprio_keys"):
        import_robomimic(tmp_path / "a.hdf5", tmp_path / "s.zarr", proprio_keys=["robot0_eef_pos"])
    native_store(tmp_path / "native.zarr")
    with pytest.raises(UserError, match="not made by robo-s2 import"):
        import_robomimic(tmp_path / "a.hdf5", tmp_path / "native.zarr")
    assert DemoStore.open(tmp_path / "s.zarr").n_episodes == 3


# ------------------------------------------------------------------------------------------------
# bad input


def _edit(path: Path, fn) -> None:
    with h5py.File(path, "a") as f:
        fn(f)


def _replace(f, key, value):
    del f[key]
    f[key] = value


@pytest.mark.parametrize(
    "demo, edit, kwargs, message",
    [
        (
            "demo_0",
            lambda f: None,
            {"proprio_keys": ["robot0_joint_pos"]},
            r"no 'robot0_joint_pos'; the keys there are \['agentview_image', 'object', ",
        ),
        (
            "demo_0",
            lambda f: None,
            {"image_key": "frontview_image"},
            r"no 'frontview_image'.*pass image_key=",
        ),
        (
            "demo_2",
            lambda f: _replace(f, "data/demo_2/actions", np.zeros((2, 7))),
            {},
            r"demo_2 of .* has arrays of different lengths \(.*'actions': 2",
        ),
        (
            "demo_0",
            lambda f: _replace(f, "data/demo_0/obs/agentview_image", np.full((5, H, W, 3), 0.5)),
            {},
            r"demo_0 of .*obs/agentview_image is float64 in \[0.5, 0.5\], not uint8",
        ),
        (
            "demo_10",
            lambda f: f["data/demo_10/actions"].__setitem__((2, 1), np.nan),
            {},
            r"demo_10 of .*: actions has a non-finite value \(nan\) at step 2",
        ),
    ],
)
def test_bad_robomimic_input_is_one_clear_error(tmp_path, demo, edit, kwargs, message):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    _edit(src, edit)
    out = tmp_path / "s.zarr"
    with pytest.raises(UserError, match=message) as err:
        import_robomimic(src, out, **kwargs)
    assert "\n" not in str(err.value)
    n_before = ["demo_0", "demo_2", "demo_10"].index(demo)
    if n_before == 0:
        assert not out.exists() and "nothing was written" in str(err.value)
    else:  # the episodes before the bad one stay committed
        assert DemoStore.open(out).n_episodes == n_before
        assert f"keeps the {n_before} episodes" in str(err.value)


def test_skip_bad_leaves_bad_demos_out(tmp_path):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    _edit(src, lambda f: f["data/demo_2/actions"].__setitem__((0, 0), np.inf))
    res = import_robomimic(src, tmp_path / "s.zarr", skip_bad=True)
    assert res.n_total == 2 and res.skipped == ["demo_2"]
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.attrs["robomimic"]["demos"] == ["demo_0", "demo_10"]
    assert store.attrs["robomimic"]["masks"] == {"train": [0, 1], "valid": []}


def test_truncated_and_foreign_files_name_the_file(tmp_path):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(UserError, match=r"cut\.hdf5.*(truncated or corrupt)"):
        import_robomimic(cut, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()
    with pytest.raises(UserError, match=r"no such file: .*nope\.hdf5"):
        import_robomimic(tmp_path / "nope.hdf5", tmp_path / "s.zarr")
    with h5py.File(tmp_path / "other.hdf5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match=r"other\.hdf5 has no data/ group"):
        import_robomimic(tmp_path / "other.hdf5", tmp_path / "s.zarr")


# ------------------------------------------------------------------------------------------------
# diffusion_policy zarr


def zip_dir(directory: Path, out: Path) -> None:
    """A .zarr.zip as zarr's ZipStore writes it: the store's keys as member names."""
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(directory.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(directory).as_posix())


@pytest.mark.parametrize("as_zip", [False, True])
def test_pusht_import_with_the_default_mapping(tmp_path, as_zip):
    src = tmp_path / "pusht.zarr"
    arrays = make_pusht(src)
    if as_zip:
        zip_dir(src, tmp_path / "pusht.zarr.zip")
        src = tmp_path / "pusht.zarr.zip"
    res = import_dp(src, tmp_path / "s.zarr")
    assert (res.n_total, res.n_frames) == (3, 12)
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.keys() == ["action", "image", "proprio", "state"]
    np.testing.assert_array_equal(store.episode_ends, [4, 7, 12])
    ep = store.episode(1)
    np.testing.assert_array_equal(ep["image"], arrays["img"][4:7].astype(np.uint8))
    np.testing.assert_array_equal(ep["proprio"], arrays["state"][4:7, :2])
    np.testing.assert_array_equal(ep["state"], arrays["state"][4:7])
    np.testing.assert_array_equal(ep["action"], arrays["action"][4:7])
    attrs = store.attrs
    assert attrs["proprio_semantics"] == ["agent_x", "agent_y"]
    assert attrs["env"] == {
        "id": "diffusion_policy:pusht",
        "foreign": True,
        "format": "diffusion_policy",
    }
    assert attrs["diffusion_policy"]["unmapped"] == ["keypoint"]
    assert is_foreign(store)


def test_dp_root_attributes_survive_import_and_export(tmp_path):
    """A diffusion_policy store's own root attributes were dropped on import (issue 33 item 5)."""
    import zarr

    make_pusht(tmp_path / "p.zarr")
    theirs = {"task": "pusht", "fps": 10, "notes": {"operator": "a", "takes": [1, 2]}}
    zarr.open_group(str(tmp_path / "p.zarr"), mode="a").attrs.update(theirs)
    import_dp(tmp_path / "p.zarr", tmp_path / "s.zarr")
    store = DemoStore.open(tmp_path / "s.zarr")
    assert store.attrs["diffusion_policy"]["root_attrs"] == theirs
    res = export_dp(tmp_path / "s.zarr", tmp_path / "back.zarr")
    back = dict(zarr.open_group(str(tmp_path / "back.zarr"), mode="r").attrs)
    assert {k: back[k] for k in theirs} == theirs and not any("root attr" in n for n in res.notes)
    # a name both use keeps robo_s2's value at the root, and says so
    zarr.open_group(str(tmp_path / "p.zarr"), mode="a").attrs["env"] = "pusht-v0"
    import_dp(tmp_path / "p.zarr", tmp_path / "s2.zarr")
    res = export_dp(tmp_path / "s2.zarr", tmp_path / "back2.zarr")
    assert any("root attributes ['env'] hold robo_s2's values" in n for n in res.notes)


def test_dp_import_with_a_custom_mapping(tmp_path):
    arrays = make_pusht(tmp_path / "p.zarr")
    keys = {"img": "image", "keypoint": "proprio", "state": "proprio[2:5]", "action": "action"}
    import_dp(tmp_path / "p.zarr", tmp_path / "s.zarr", keys=keys)
    store = DemoStore.open(tmp_path / "s.zarr")
    ep = store.episode(0)
    want = np.concatenate([arrays["keypoint"][:4].reshape(4, 18), arrays["state"][:4, 2:5]], 1)
    np.testing.assert_array_equal(ep["proprio"], want)
    sem = store.attrs["proprio_semantics"]
    assert sem[:2] == ["keypoint[0,0]", "keypoint[0,1]"] and sem[-3:] == [
        "state[2]",
        "state[3]",
        "state[4]",
    ]
    with pytest.raises(
        UserError,
        match=r"no data/agent_pos; its data keys are \['action', 'img', 'keypoint', 'state'\]",
    ):
        import_dp(
            tmp_path / "p.zarr",
            tmp_path / "t.zarr",
            keys={"agent_pos": "proprio", "action": "action"},
        )
    assert not (tmp_path / "t.zarr").exists()


def test_dp_jpeg2000_images(tmp_path):
    pytest.importorskip(
        "imagecodecs",
        reason="imagecodecs is not installed (pip install imagecodecs) to write JPEG2000",
    )
    from imagecodecs.numcodecs import Jpeg2k, register_codecs

    register_codecs()
    make_pusht(tmp_path / "p.zarr", codec=Jpeg2k(level=50))
    zip_dir(tmp_path / "p.zarr", tmp_path / "p.zarr.zip")
    decoded = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")["data/img"][:]  # lossy, as stored
    import_dp(tmp_path / "p.zarr.zip", tmp_path / "s.zarr")
    store = DemoStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.array("image")[:], decoded)


def test_dp_jpeg2000_without_imagecodecs_says_what_to_install(tmp_path, monkeypatch):
    import numcodecs.registry

    import robo_s2.data.interop.dp_zarr as dz

    root = zarr.open_group(str(tmp_path / "p.zarr"), mode="w", zarr_format=2)
    root.create_group("meta").create_array("episode_ends", shape=(1,), dtype="int64")[:] = [2]
    root.create_group("data").create_array("action", shape=(2, 2), dtype="float32")[:] = 0
    meta = {"zarr_format": 2, "shape": [2, 8, 8, 3], "chunks": [1, 8, 8, 3], "dtype": "|u1",
            "compressor": {"id": "imagecodecs_jpeg2k", "level": 50}, "fill_value": 0,
            "filters": None, "order": "C", "dimension_separator": "."}  # fmt: skip
    (tmp_path / "p.zarr" / "data" / "img").mkdir()
    (tmp_path / "p.zarr" / "data" / "img" / ".zarray").write_text(json.dumps(meta))
    monkeypatch.setattr(dz, "register_image_codecs", lambda: False)
    monkeypatch.delitem(numcodecs.registry.codec_registry, "imagecodecs_jpeg2k", raising=False)
    with pytest.raises(UserError, match=r"cannot open data/img .*pip install imagecodecs"):
        import_dp(
            tmp_path / "p.zarr", tmp_path / "s.zarr", keys={"img": "image", "action": "action"}
        )
    assert not (tmp_path / "s.zarr").exists()


def test_dp_round_trips_are_exact(tmp_path):
    store = native_store(tmp_path / "s.zarr")
    for out in ("dp.zarr", "dp.zarr.zip"):
        res = export_dp(tmp_path / "s.zarr", tmp_path / out)
        assert res.n_episodes == 3
        back = tmp_path / f"back_{out}"
        import_dp(tmp_path / out, back)
        assert_same_store(store, DemoStore.open(back))
        assert DemoStore.open(back).attrs["env"] == store.attrs["env"]
    # their layout, zarr v2, readable as a plain zarr v2 group (what their zarr 2.x ReplayBuffer opens)
    root = zarr.open_group(str(tmp_path / "dp.zarr"), mode="r", zarr_format=2)
    assert root.metadata.zarr_format == 2
    assert (tmp_path / "dp.zarr" / ".zgroup").is_file()
    assert (tmp_path / "dp.zarr" / "data" / "image" / ".zarray").is_file()
    assert root["data/image"].chunks == (1, H, W, 3)
    np.testing.assert_array_equal(root["meta/episode_ends"][:], store.episode_ends)
    names = zipfile.ZipFile(tmp_path / "dp.zarr.zip").namelist()
    assert ".zgroup" in names and "meta/episode_ends/.zarray" in names
    assert DemoStore.open(tmp_path / "dp.zarr").n_episodes == 3  # ours reads theirs directly
    # renamed keys for their configs
    export_dp(
        tmp_path / "s.zarr",
        tmp_path / "renamed.zarr",
        keys={"image": "img", "proprio": "agent_pos"},
    )
    assert sorted(
        zarr.open_group(str(tmp_path / "renamed.zarr"), mode="r")["data"].array_keys()
    ) == ["action", "agent_pos", "image_wrist", "img", "state"]


def test_bad_dp_input_is_one_clear_error(tmp_path):
    make_pusht(tmp_path / "p.zarr")
    arr = zarr.open_array(str(tmp_path / "p.zarr" / "data" / "action"), mode="r+")
    arr[8, 1] = np.nan
    with pytest.raises(
        UserError,
        match=r"episode_2 of .*data/action has a non-finite value \(nan\) at step 1.*keeps the 2 episodes",
    ):
        import_dp(tmp_path / "p.zarr", tmp_path / "s.zarr")
    assert DemoStore.open(tmp_path / "s.zarr").n_episodes == 2
    img = zarr.open_array(str(tmp_path / "p.zarr" / "data" / "img"), mode="r+")
    img[0] = 0.25
    with pytest.raises(
        UserError, match=r"episode_0 of .*data/img is float32 in \[0, 255\], not uint8"
    ):
        import_dp(tmp_path / "p.zarr", tmp_path / "t.zarr")
    assert not (tmp_path / "t.zarr").exists()
    # a corrupt chunk
    make_pusht(tmp_path / "q.zarr")
    (tmp_path / "q.zarr" / "data" / "state" / "0.0").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"cannot read data/state of episode_0 of .*q\.zarr"):
        import_dp(tmp_path / "q.zarr", tmp_path / "u.zarr")
    (tmp_path / "bad.zarr.zip").write_bytes(b"PK-not-really")
    with pytest.raises(
        UserError, match=r"bad\.zarr\.zip is neither a zarr directory nor a \.zarr\.zip"
    ):
        import_dp(tmp_path / "bad.zarr.zip", tmp_path / "v.zarr")


# ------------------------------------------------------------------------------------------------
# CLI


def test_cli_import_export_and_one_line_errors(tmp_path):
    make_robomimic(tmp_path / "lift.hdf5")
    out = robo_s2(
        "import",
        "src=lift.hdf5",
        "out=s.zarr",
        "extra_image_keys=[robot0_eye_in_hand_image]",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()[-3:]
    assert lines[0].startswith("import: 3 episodes (12 frames) in s.zarr")
    # the closing lines: what was left out (and how to take it), what changed dtype
    assert lines[1].startswith("import: not taken from the source: dones (scalar) int64, ")
    assert "obs/object (10,) float64" in lines[1] and "(take them with extra_keys=all" in lines[1]
    assert lines[2].startswith("import: changed on the way in: actions float64 -> float32")
    out = robo_s2("import", "src=lift.hdf5", "out=all.zarr", "extra_keys=all", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    left = [x for x in out.stdout.splitlines() if x.startswith("import: not taken")]
    # every dataset is taken; what is left has no store key, and no option is suggested for it
    assert all("extra_keys=all" not in x and "dones" not in x for x in left), left
    assert left and all(x.endswith("(no store key holds them)") for x in left), left
    assert DemoStore.open(tmp_path / "s.zarr").keys() == [
        "action",
        "image",
        "image_robot0_eye_in_hand",
        "proprio",
        "state",
    ]
    out = robo_s2("export", "store=s.zarr", "out=x.hdf5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "export: 3 episodes (12 frames) of s.zarr -> x.hdf5 (robomimic HDF5" in out.stdout
    out = robo_s2("export", "store=s.zarr", "out=x.zarr.zip", "keys={image:img}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = robo_s2(
        "import",
        "src=x.zarr.zip",
        "out=dp.zarr",
        "keys={img:image,proprio:proprio,action:action}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert DemoStore.open(tmp_path / "dp.zarr").n_frames == 12

    for args, message in [
        (
            ("import", "src=lift.hdf5", "out=t.zarr", "proprio_keys=[joint_pos]"),
            "no 'joint_pos'; the keys there are",
        ),
        (("import", "src=nope.hdf5", "out=t.zarr"), "no such file"),
        (
            ("import", "src=lift.hdf5", "out=s.zarr", "proprio_keys=[robot0_eef_pos]"),
            "different import",
        ),
        (("export", "store=s.zarr", "out=x.hdf5"), "already exists"),
    ]:
        out = robo_s2(*args, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert not (tmp_path / "t.zarr").exists()


# ------------------------------------------------------------------------------------------------
# nothing dropped silently


def test_dp_import_states_what_it_leaves_out_and_keys_all_takes_it_with_its_shape(tmp_path):
    from robo_s2.commands.import_ import not_taken_lines

    arrays = make_pusht(tmp_path / "p.zarr")
    res = import_dp(tmp_path / "p.zarr", tmp_path / "a.zarr")
    assert res.not_taken == ["data/keypoint (9, 2) float32"]
    assert res.changed == ["data/img float32 -> uint8"]
    lines = not_taken_lines(res)
    assert lines[0].startswith("import: not taken from the source: data/keypoint (9, 2) float32")
    assert "keys=all" in lines[0]

    res = import_dp(tmp_path / "p.zarr", tmp_path / "b.zarr", keys="all")
    assert res.not_taken == []
    store = DemoStore.open(tmp_path / "b.zarr")
    assert store.keys() == ["action", "image", "keypoint", "proprio", "state"]
    np.testing.assert_array_equal(store.episode(1)["keypoint"], arrays["keypoint"][4:7])

    # both ways: the (T, 9, 2) array leaves in diffusion_policy's layout with its shape and
    # comes back with it (a robo_s2 store's own arrays are all taken)
    export_dp(tmp_path / "b.zarr", tmp_path / "out.zarr")
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["data/keypoint"].shape == (12, 9, 2)
    res = import_dp(tmp_path / "out.zarr", tmp_path / "c.zarr")
    assert res.not_taken == []
    np.testing.assert_array_equal(
        DemoStore.open(tmp_path / "c.zarr").episode(2)["keypoint"], arrays["keypoint"][7:12]
    )


def test_dp_import_states_when_a_multi_axis_array_is_flattened_into_proprio(tmp_path):
    make_pusht(tmp_path / "p.zarr")
    keys = {"img": "image", "keypoint": "proprio", "action": "action"}
    res = import_dp(tmp_path / "p.zarr", tmp_path / "s.zarr", keys=keys)
    assert "data/keypoint (9, 2) -> columns of proprio" in res.changed
    assert res.not_taken == ["data/state (5,) float32"]


def test_robomimic_import_states_every_dataset_it_leaves_out(tmp_path):
    make_robomimic(tmp_path / "r.hdf5")
    res = import_robomimic(tmp_path / "r.hdf5", tmp_path / "s.zarr")
    for left in (
        "obs/object (10,) float64",
        "obs/robot0_eye_in_hand_image (8, 8, 3) uint8",
        "rewards (scalar) float64",
        "dones (scalar) int64",
        "next_obs/object (10,) float64",
    ):
        assert left in res.not_taken
    assert not any(
        t.startswith(("actions ", "states ", "obs/agentview_image")) for t in res.not_taken
    )
    assert "actions float64 -> float32" in res.changed
    assert "obs/robot0_eef_pos float64 -> float32" in res.changed
    assert "extra_keys=all" in res.take_with


def test_robomimic_extra_keys_all_takes_every_dataset(tmp_path):
    written = make_robomimic(tmp_path / "r.hdf5")
    res = import_robomimic(tmp_path / "r.hdf5", tmp_path / "s.zarr", extra_keys="all")
    # only the next_obs frames stay out: they are the next step's obs frames
    assert sorted(res.not_taken) == [
        "next_obs/agentview_image (8, 8, 3) uint8",
        "next_obs/robot0_eye_in_hand_image (8, 8, 3) uint8",
    ]
    store = DemoStore.open(tmp_path / "s.zarr")
    keys = store.keys()
    assert {"image_robot0_eye_in_hand", "obs_object", "reward", "done"} <= set(keys)
    assert "next_obs_object" in keys
    first = store.attrs["robomimic"]["demos"][0]
    ep = store.episode(0)
    np.testing.assert_allclose(ep["obs_object"], written[first]["obs/object"], rtol=1e-6)
    np.testing.assert_array_equal(ep["reward"], written[first]["rewards"])  # (N,), as collected
    np.testing.assert_array_equal(ep["done"], written[first]["dones"])
    assert ep["done"].dtype == np.int64 and not any("dones" in c for c in res.changed)
    np.testing.assert_array_equal(
        ep["image_robot0_eye_in_hand"], written[first]["obs/robot0_eye_in_hand_image"]
    )


def test_robomimic_extra_keys_all_round_trips_every_dataset(tmp_path):
    """Imported with extra_keys=all and exported again, every dataset of every demo is back at
    its own path with its values: obs, next_obs (the recorded ones, not obs shifted), rewards,
    dones, states (it was obs/obs_object, obs/rewards, and zeros for the rewards)."""
    import h5py

    src = tmp_path / "r.hdf5"
    make_robomimic(src)
    with h5py.File(src, "r") as f:  # a last next_obs row a shift of obs could not rebuild
        written = {
            name: {path: ds[()] for path, ds in _h5_datasets(f["data"][name]).items()}
            for name in f["data"]
        }
    with h5py.File(src, "a") as f:
        for name in f["data"]:
            f["data"][name]["next_obs/object"][-1] = -7.0
            written[name]["next_obs/object"][-1] = -7.0
    import_robomimic(src, tmp_path / "s.zarr", extra_keys="all")
    export_robomimic(tmp_path / "s.zarr", tmp_path / "back.hdf5")
    with h5py.File(tmp_path / "back.hdf5", "r") as f:
        assert sorted(f["data"]) == sorted(written)
        for name, arrays in written.items():
            back = _h5_datasets(f["data"][name])
            assert sorted(back) == sorted(arrays), name
            for path, x in arrays.items():
                np.testing.assert_allclose(back[path], x, rtol=1e-6, err_msg=f"{name}/{path}")
            assert back["dones"].dtype == np.int64


def _h5_datasets(group, prefix=""):
    import h5py

    out = {}
    for key, node in group.items():
        if isinstance(node, h5py.Group):
            out.update(_h5_datasets(node, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = node
    return out


def test_every_format_is_one_registry_entry_the_commands_dispatch_through():
    from robo_s2.core.config import load_config, to_plain
    from robo_s2.data.interop.base import FORMATS

    import_cfg = to_plain(load_config("import"))
    export_cfg = to_plain(load_config("export"))
    for name, form in FORMATS.items():
        for verb, cfg in (("import", import_cfg), ("export", export_cfg)):
            fn = form.function(f"{verb}_{name}")
            options = form.function(f"{verb}_options")(cfg)
            assert set(options) <= set(inspect.signature(fn).parameters), (name, verb)
    for command in ("import_", "export"):
        source = (ROOT / "robo_s2" / "commands" / f"{command}.py").read_text()
        assert not any(f'"{name}"' in source for name in FORMATS), command
