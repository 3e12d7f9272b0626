"""format=lerobot: LeRobotDataset v3.0 export (mp4 and PNG) and import (v3.0 and v2.1).

The exports are checked against lerobot's layout with pyarrow; the v2.1 dataset is written here in
lerobot's v2.1 layout (jsonl metadata, one parquet and one mp4 per episode).
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import assert_same_store, robo_s2

import robo_s2.data.store as store_mod
from robo_s2.data.interop.lerobot import export_lerobot, import_lerobot
from robo_s2.data.store import DemoStore
from robo_s2.errors import UserError

H, W = 16, 24
LENGTHS = (5, 7, 6)


def smooth_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frames of colour gradients (what a video codec keeps well; noise it would not)."""
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        a, b, c = rng.uniform(2, 8, 3)
        out[t, ..., 0] = (x * a + t * 9) % 256
        out[t, ..., 1] = (y * b + 40) % 256
        out[t, ..., 2] = ((x + y) * c) % 256
    return out


def make_store(path: Path, seed: int = 0) -> DemoStore:
    """A store with two cameras, proprio, action, float64 state and an extra reward key."""
    rng = np.random.default_rng(seed)
    attrs = {
        "env": {"id": "robo_s2/CubePick-v0", "image_size": H},
        "source": "test",
        "control_hz": 10,
        "cameras": ["front", "wrist"],
        "action_semantics": ["dx", "dy", "dz", "gripper"],
        "episode_tasks": [["pick the cube"], ["pick the cube"], ["lift the cube"]],
    }
    store = DemoStore.create(path, attrs=attrs)
    for n in LENGTHS:
        store.append_episode(
            {
                "image": smooth_frames(rng, n),
                "image_wrist": smooth_frames(rng, n),
                "proprio": rng.standard_normal((n, 5)).astype(np.float32),
                "action": rng.standard_normal((n, 4)).astype(np.float32),
                "state": rng.standard_normal((n, 3)),
                "reward": rng.standard_normal(n).astype(np.float32),
            }
        )
    store.close()
    return DemoStore.open(path)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    store = make_store(root / "s.zarr")
    export_lerobot(store.path, root / "png", video=False)
    res = export_lerobot(store.path, root / "vid")
    return root, store, res


def check_layout(root: Path, store: DemoStore, video: bool) -> None:
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 18, 2)
    feats = info["features"]
    cam = "observation.images.front"
    assert feats[cam]["dtype"] == ("video" if video else "image")
    assert feats[cam]["shape"] == [H, W, 3]
    assert feats["action"] == {
        "dtype": "float32",
        "shape": [4],
        "names": ["dx", "dy", "dz", "gripper"],
    }
    assert feats["observation.state"]["shape"] == [5]
    assert feats["observation.environment_state"]["dtype"] == "float64"
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    want = {"action", "observation.state", "observation.environment_state", "next.reward"}
    want |= {"next.done"}  # lerobot's names; done (the store has none) marks each episode's end
    want |= {"timestamp", "frame_index", "episode_index", "index", "task_index"}
    if not video:
        want |= {cam, "observation.images.wrist"}
    assert set(data.column_names) == want
    # the datasets features, which a plain load_dataset("parquet") (lerobot 0.3) decodes with
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert set(hf) == want and hf["index"] == {"dtype": "int64", "_type": "Value"}
    assert hf["action"] == {
        "feature": {"dtype": "float32", "_type": "Value"},
        "length": 4,
        "_type": "List",
    }
    if not video:
        assert hf[cam] == {"_type": "Image"}
    assert data.column("index").to_pylist() == list(range(18))
    ends = np.cumsum(LENGTHS)
    assert np.flatnonzero(data.column("next.done").to_numpy(zero_copy_only=False)).tolist() == [
        e - 1 for e in ends
    ]
    assert info["features"]["next.done"] == {"dtype": "bool", "shape": [1], "names": None}
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for i, ep in enumerate(eps):
        start = int(ends[i] - LENGTHS[i])
        assert (ep["episode_index"], ep["length"]) == (i, LENGTHS[i])
        assert (ep["dataset_from_index"], ep["dataset_to_index"]) == (start, int(ends[i]))
        rows = data.slice(start, LENGTHS[i])
        assert set(rows.column("episode_index").to_pylist()) == {i}
        assert rows.column("frame_index").to_pylist() == list(range(LENGTHS[i]))
        np.testing.assert_allclose(
            rows.column("timestamp").to_numpy(), np.arange(LENGTHS[i]) / 10, atol=1e-6
        )
        if video:
            assert ep[f"videos/{cam}/from_timestamp"] == pytest.approx(start / 10)
            assert ep[f"videos/{cam}/to_timestamp"] == pytest.approx(ends[i] / 10)
    assert [ep["tasks"] for ep in eps] == [["pick the cube"], ["pick the cube"], ["lift the cube"]]
    assert data.column("task_index").to_pylist() == [0] * 12 + [1] * 6
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column("task").to_pylist() == ["pick the cube", "lift the cube"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    stats = json.loads((root / "meta/stats.json").read_text())
    action = store.array("action")[:]
    np.testing.assert_allclose(stats["action"]["min"], action.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], action.std(0), rtol=1e-5)
    assert stats["action"]["count"] == [18]
    img = store.array("image")[:] / 255.0
    assert np.array(stats[cam]["mean"]).shape == (3, 1, 1)
    np.testing.assert_allclose(np.array(stats[cam]["max"])[:, 0, 0], img.max((0, 1, 2)))
    # the dataset's quantiles are the episodes' weighted by frames (lerobot's aggregate), and
    # cameras have them too, per channel
    per_episode = [np.quantile(ep["action"], 0.5, axis=0) for ep in map(store.episode, range(3))]
    np.testing.assert_allclose(
        stats["action"]["q50"], np.average(per_episode, axis=0, weights=LENGTHS), rtol=1e-6
    )
    assert np.array(stats[cam]["q99"]).shape == (3, 1, 1)
    assert stats["index"]["max"] == [17] and isinstance(stats["index"]["min"][0], int)
    assert stats["next.done"]["max"] == [True]
    if video:
        mp4 = root / f"videos/{cam}/chunk-000/file-000.mp4"
        with av.open(str(mp4)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 18


def test_export_png_layout_and_exact_round_trip(exported, tmp_path):
    root, store, _ = exported
    check_layout(root / "png", store, video=False)
    res = import_lerobot(root / "png", tmp_path / "back.zarr")
    assert res.not_taken == ["next.done"] and res.changed == []
    back = DemoStore.open(tmp_path / "back.zarr")
    assert_same_store(store, back)  # every key (reward, float64 state too) and dtype, exactly
    assert back.attrs["episode_tasks"] == store.attrs["episode_tasks"]
    assert back.attrs["control_hz"] == 10 and back.attrs["env"] == store.attrs["env"]


def test_export_video_layout_and_round_trip(exported, tmp_path):
    root, store, res = exported
    check_layout(root / "vid", store, video=True)
    assert any("lossy" in note for note in res.notes)
    imp = import_lerobot(root / "vid", tmp_path / "back.zarr")
    assert imp.changed == [  # lerobot's own codec, the default
        "observation.images.front av1 video -> uint8 frames",
        "observation.images.wrist av1 video -> uint8 frames",
    ]
    assert imp.not_taken == ["next.done"]  # written for lerobot; the store marks ends itself
    back = DemoStore.open(tmp_path / "back.zarr")
    np.testing.assert_array_equal(back.episode_ends, store.episode_ends)
    for key in ("action", "proprio", "state", "reward"):
        np.testing.assert_array_equal(back.array(key)[:], store.array(key)[:])
        assert back.array(key).dtype == store.array(key).dtype
    for key in ("image", "image_wrist"):
        # AV1 at lerobot's crf 30 on these 16x24 gradient frames: 28.1 dB; on 64x64 renders of
        # the cube scene 32.4 dB (x264 crf 18: 34.8); below, x264 on these frames keeps > 30
        assert psnr(back.array(key)[:], store.array(key)[:]) > 27


def test_export_with_libx264_when_asked(exported, tmp_path):
    _, store, _ = exported
    res = export_lerobot(store.path, tmp_path / "x264", codec="libx264")
    assert any("libx264 mp4 (crf 18)" in note for note in res.notes)
    imp = import_lerobot(tmp_path / "x264", tmp_path / "back.zarr")
    assert imp.changed[0] == "observation.images.front h264 video -> uint8 frames"
    back = DemoStore.open(tmp_path / "back.zarr")
    for key in ("image", "image_wrist"):
        assert psnr(back.array(key)[:], store.array(key)[:]) > 30


def test_tasks_come_from_the_frames_when_the_episode_list_has_none(exported, tmp_path):
    """lerobot's convert_image_to_video_dataset rewrites meta/episodes without a tasks column;
    the tasks are still in each frame's task_index (they imported as empty, issue 33 item 5)."""
    import shutil

    root, store, _ = exported
    shutil.copytree(root / "png", tmp_path / "lr")
    path = tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["tasks"]), path)
    (tmp_path / "lr/meta/robo_s2.json").unlink()  # a dataset of theirs, not our export
    import_lerobot(tmp_path / "lr", tmp_path / "back.zarr")
    back = DemoStore.open(tmp_path / "back.zarr")
    assert back.attrs["episode_tasks"] == store.attrs["episode_tasks"]
    tasks = tmp_path / "lr/meta/tasks.parquet"  # a frame's task_index the task list lacks
    pq.write_table(pq.read_table(tasks).slice(0, 1), tasks)
    with pytest.raises(UserError, match="task_index 1 is not in the dataset's task list"):
        import_lerobot(tmp_path / "lr", tmp_path / "bad.zarr")


@pytest.mark.parametrize("video", [False, True])
def test_export_v21_layout_and_round_trip(exported, tmp_path, video):
    """version=2.1 writes lerobot 0.3's layout (a parquet and an mp4 per episode, jsonl
    metadata) and imports back: exactly as PNG, the cameras within the codec's loss as mp4."""
    _, store, _ = exported
    out = tmp_path / "v21"
    res = export_lerobot(store.path, out, video=video, version="2.1")
    assert any("v2.1" in note for note in res.notes)
    info = json.loads((out / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_chunks"] == 1
    assert info["total_videos"] == (6 if video else 0)
    for i, n in enumerate(LENGTHS):
        data = pq.read_table(out / f"data/chunk-000/episode_{i:06d}.parquet")
        assert data.num_rows == n and set(data.column("episode_index").to_pylist()) == {i}
        if video:
            mp4 = out / f"videos/chunk-000/observation.images.front/episode_{i:06d}.mp4"
            with av.open(str(mp4)) as c:
                assert sum(1 for _ in c.decode(video=0)) == n
    episodes = [json.loads(x) for x in (out / "meta/episodes.jsonl").read_text().splitlines()]
    assert [(e["episode_index"], e["length"]) for e in episodes] == list(enumerate(LENGTHS))
    assert [e["tasks"] for e in episodes] == store.attrs["episode_tasks"]
    ep_stats = [json.loads(x) for x in (out / "meta/episodes_stats.jsonl").read_text().splitlines()]
    first = store.episode(0)["action"]
    np.testing.assert_allclose(ep_stats[0]["stats"]["action"]["mean"], first.mean(0), rtol=1e-5)
    assert set(ep_stats[0]["stats"]["action"]) == {"min", "max", "mean", "std", "count"}
    tasks = [json.loads(x) for x in (out / "meta/tasks.jsonl").read_text().splitlines()]
    assert tasks == [
        {"task_index": 0, "task": "pick the cube"},
        {"task_index": 1, "task": "lift the cube"},
    ]
    import_lerobot(out, tmp_path / "back.zarr")
    back = DemoStore.open(tmp_path / "back.zarr")
    if not video:
        assert_same_store(store, back)
    else:
        np.testing.assert_array_equal(back.array("action")[:], store.array("action")[:])
        assert psnr(back.array("image")[:], store.array("image")[:]) > 27


def test_episodes_parquet_schema_is_lerobots(exported):
    """Column for column and type for type, our episodes parquet is what lerobot 0.4.4's own
    writer made for the same features (docs/interop/lerobot_verify/episodes_schema.py on a
    dataset it recorded): an append by lerobot to our export then loads (it was a CastError
    with double index stats and no camera quantiles)."""
    root, _, _ = exported
    ref = Path(__file__).resolve().parents[1] / "docs/interop/lerobot_verify"
    theirs = (ref / "episodes_schema_lerobot_0.4.4.tsv").read_text().splitlines()
    schema = pq.read_schema(root / "vid/meta/episodes/chunk-000/file-000.parquet")
    ours = sorted(f"{field.name}\t{field.type}" for field in schema)
    assert ours == theirs


def write_v21(root: Path, lengths=(4, 6), seed: int = 3, keypoints: bool = False) -> dict:
    """A LeRobotDataset v2.1 in lerobot's layout: a video camera, an image camera, reward/done;
    with ``keypoints``, a (4, 2) feature stored as LeRobot stores multi-axis ones: nested lists."""
    rng = np.random.default_rng(seed)
    fps = 15
    feats = {
        "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "observation.images.side": {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float64", "shape": [2], "names": {"motors": ["x", "y"]}},
        "action": {"dtype": "float32", "shape": [2], "names": ["vx", "vy"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        **{k: {"dtype": "int64", "shape": [1], "names": None} for k in ("frame_index", "episode_index", "index", "task_index")},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    }  # fmt: skip
    if keypoints:
        feats["observation.keypoints"] = {"dtype": "float32", "shape": [4, 2], "names": None}
    info = {
        "codebase_version": "v2.1", "robot_type": "koch", "fps": fps, "chunks_size": 1000,
        "total_episodes": len(lengths), "total_frames": sum(lengths), "total_tasks": 2,
        "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
        "features": feats,
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    tasks = ["push left", "push right"]
    (root / "meta/tasks.jsonl").write_text(
        "".join(json.dumps({"task_index": i, "task": t}) + "\n" for i, t in enumerate(tasks))
    )
    episodes, written, start = [], {}, 0
    for i, n in enumerate(lengths):
        episodes.append({"episode_index": i, "tasks": [tasks[i % 2]], "length": n})
        top, side = smooth_frames(rng, n), smooth_frames(rng, n)
        state = rng.standard_normal((n, 2))
        action = rng.standard_normal((n, 2)).astype(np.float32)
        cols = {
            "observation.images.side": pa.array(
                [{"bytes": png(f), "path": None} for f in side],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "observation.state": pa.array(state.tolist(), pa.list_(pa.float64())),
            "action": pa.array(action.tolist(), pa.list_(pa.float32())),
            "next.reward": pa.array(np.arange(n, dtype=np.float32)),
            "next.done": pa.array(np.arange(n) == n - 1),
            "timestamp": pa.array((np.arange(n) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(n)),
            "episode_index": pa.array(np.full(n, i)),
            "index": pa.array(start + np.arange(n)),
            "task_index": pa.array(np.full(n, i % 2)),
        }
        kp = rng.standard_normal((n, 4, 2)).astype(np.float32) if keypoints else None
        if kp is not None:
            cols["observation.keypoints"] = pa.array(kp.tolist(), pa.list_(pa.list_(pa.float32())))
        path = root / f"data/chunk-000/episode_{i:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), path)
        mp4 = root / f"videos/chunk-000/observation.images.top/episode_{i:06d}.mp4"
        mp4.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(mp4), mode="w") as c:
            s = c.add_stream("libx264", rate=fps, options={"crf": "18"})
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for f in top:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        written[i] = {"top": top, "side": side, "state": state, "action": action, "keypoints": kp}
        start += n
    (root / "meta/episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    return written


def png(img: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_v21_import_maps_features_and_states_what_it_left(tmp_path):
    written = write_v21(tmp_path / "koch")
    res = import_lerobot(tmp_path / "koch", tmp_path / "s.zarr", cameras=["side"])
    assert res.not_taken == [
        "observation.images.top (a camera: list it in cameras=)",
        "next.done",
    ]
    assert res.changed == ["observation.state float64 -> float32"]
    s = DemoStore.open(tmp_path / "s.zarr")
    assert s.keys() == ["action", "image", "proprio", "reward"]  # next.reward under our name
    np.testing.assert_array_equal(s.episode_ends, [4, 10])
    for i, w in written.items():
        ep = s.episode(i)
        np.testing.assert_array_equal(ep["image"], w["side"])  # PNG: exact
        np.testing.assert_array_equal(ep["action"], w["action"])
        np.testing.assert_array_equal(ep["proprio"], w["state"].astype(np.float32))
    a = s.attrs
    assert a["control_hz"] == 15 and a["env"]["id"] == "lerobot:koch" and a["env"]["foreign"]
    assert a["proprio_semantics"] == ["x", "y"] and a["action_semantics"] == ["vx", "vy"]
    assert a["episode_tasks"] == [["push left"], ["push right"]]
    assert a["image_keys"] == {"side": "image"}

    res = import_lerobot(tmp_path / "koch", tmp_path / "all.zarr", keys="all")
    assert res.not_taken == []
    s = DemoStore.open(tmp_path / "all.zarr")
    assert s.keys() == ["action", "done", "image", "image_side", "proprio", "reward"]
    for i, w in written.items():
        ep = s.episode(i)
        assert psnr(ep["image"], w["top"]) > 30
        n = len(w["action"])
        np.testing.assert_array_equal(ep["done"], np.arange(n) == n - 1)
        np.testing.assert_array_equal(ep["reward"], np.arange(n, dtype=np.float32))

    res = import_lerobot(tmp_path / "koch", tmp_path / "renamed.zarr", keys={"next.reward": "rew"})
    assert res.not_taken == ["next.done"]
    assert DemoStore.open(tmp_path / "renamed.zarr").keys() == [
        "action",
        "image",
        "image_side",
        "proprio",
        "rew",
    ]
    with pytest.raises(UserError, match="two features the same store key"):
        import_lerobot(tmp_path / "koch", tmp_path / "x.zarr", keys={"next.done": "reward"})


def test_a_multi_axis_feature_imports_with_its_shape(tmp_path):
    """LeRobot stores a (4, 2) feature as a list of lists per frame: it comes in as (T, 4, 2)."""
    written = write_v21(tmp_path / "koch", keypoints=True)
    import_lerobot(tmp_path / "koch", tmp_path / "s.zarr", keys="all")
    s = DemoStore.open(tmp_path / "s.zarr")
    key = next(k for k in s.keys() if "keypoints" in k)
    for i, w in written.items():
        np.testing.assert_array_equal(s.episode(i)[key], w["keypoints"])


def test_a_multi_axis_store_key_exports_with_its_shape_and_comes_back(tmp_path):
    """A (9, 2) key is exported as LeRobot writes a multi-axis feature (shape [9, 2], nested lists,
    stats of that shape), not flattened to [18], and imports back exactly."""
    rng = np.random.default_rng(0)
    store = DemoStore.create(tmp_path / "s.zarr", attrs={"control_hz": 10})
    for n in (4, 5):
        store.append_episode(
            {
                "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
                "action": rng.standard_normal((n, 2)).astype(np.float32),
                "keypoint": rng.standard_normal((n, 9, 2)).astype(np.float32),
            }
        )
    store.close()
    export_lerobot(tmp_path / "s.zarr", tmp_path / "lr", video=False)
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    name = next(k for k in info["features"] if "keypoint" in k)
    assert info["features"][name]["shape"] == [9, 2]
    table = pq.read_table(next((tmp_path / "lr/data").rglob("*.parquet")))
    assert np.asarray(table.column(name).to_pylist()[0]).shape == (9, 2)
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())[name]
    assert np.asarray(stats["mean"]).shape == (9, 2) and np.asarray(stats["q50"]).shape == (9, 2)
    import_lerobot(tmp_path / "lr", tmp_path / "back.zarr")
    assert_same_store(DemoStore.open(tmp_path / "s.zarr"), DemoStore.open(tmp_path / "back.zarr"))


def test_import_resumes_after_an_interruption(exported, tmp_path, monkeypatch):
    root, store, _ = exported

    def crash(stage):
        if stage == "written:action" and DemoStore.open(tmp_path / "s.zarr").n_episodes == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(store_mod, "_crash_point", crash)
    with pytest.raises(KeyboardInterrupt):
        import_lerobot(root / "vid", tmp_path / "s.zarr")
    monkeypatch.setattr(store_mod, "_crash_point", lambda stage: None)
    assert DemoStore.open(tmp_path / "s.zarr").n_episodes == 1
    res = import_lerobot(root / "vid", tmp_path / "s.zarr")
    assert (res.done_before, res.n_new, res.n_total) == (1, 2, 3)
    full = import_lerobot(root / "vid", tmp_path / "full.zarr")
    assert full.n_total == 3
    assert_same_store(DemoStore.open(tmp_path / "full.zarr"), DemoStore.open(tmp_path / "s.zarr"))
    assert DemoStore.open(tmp_path / "s.zarr").attrs["episode_tasks"][2] == ["lift the cube"]


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_input_is_one_clear_error(exported, tmp_path):
    root, _, _ = exported
    cases = []
    d = _copy(root / "vid", tmp_path / "no_info")
    (d / "meta/info.json").unlink()
    cases.append((d, "has no meta/info.json, so it is not a LeRobotDataset"))
    d = _copy(root / "vid", tmp_path / "version")
    info = json.loads((d / "meta/info.json").read_text())
    (d / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v9.0"}))
    cases.append((d, "codebase_version 'v9.0'; robo-s2 reads v2.0, v2.1, v3.0"))
    d = _copy(root / "vid", tmp_path / "no_video")
    (d / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    cases.append(
        (
            d,
            "observation.images.wrist/chunk-000/file-000.mp4 of observation.images.wrist is missing",
        )
    )
    d = _copy(root / "vid", tmp_path / "shape")
    info["features"]["action"]["shape"] = [6]
    (d / "meta/info.json").write_text(json.dumps(info))
    cases.append((d, "action has 4 values per frame, but meta/info.json says shape [6]"))
    for src, message in cases:
        with pytest.raises(UserError) as e:
            import_lerobot(src, tmp_path / f"{src.name}.zarr")
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
        assert not (tmp_path / f"{src.name}.zarr").exists()


@pytest.mark.parametrize(
    "key, template",
    [
        ("data_path", "../outside/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
        ("data_path", "{outside}/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"),
        ("video_path", "../outside/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"),
        ("data_path", "data/{chunk_index.__class__}/file-{file_index:03d}.parquet"),
        ("data_path", "data/{nope}/file.parquet"),
    ],
)
def test_paths_from_info_json_stay_inside_the_dataset(exported, tmp_path, key, template):
    """A hostile meta/info.json whose data_path / video_path leaves the dataset (../, an absolute
    path) is refused in one line naming the key, even when the file it points at exists; a
    template that does not fill is one line too."""
    root, _, _ = exported
    d = _copy(root / "vid", tmp_path / "ds")
    outside = tmp_path / "outside"
    _copy(d / ("data" if key == "data_path" else "videos"), outside)  # the bait exists
    info = json.loads((d / "meta/info.json").read_text())
    info[key] = template.replace("{outside}", str(outside))
    (d / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(UserError) as e:
        import_lerobot(d, tmp_path / "out.zarr")
    message = str(e.value)
    assert f"{key} " in message and "\n" not in message, message
    assert "outside the dataset" in message or "not a path template" in message
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("shift", [2.0, -0.2])
def test_a_shifted_video_span_is_refused(exported, tmp_path, shift):
    """An episode whose from_timestamp was moved would import another episode's frames: the
    episode list must tile each video file as its data rows say, within half a frame."""
    import pyarrow.parquet as pq

    root, _, _ = exported
    d = _copy(root / "vid", tmp_path / "shifted")
    (f,) = sorted((d / "meta/episodes").glob("chunk-*/file-*.parquet"))
    table = pq.read_table(f)
    cols = [c for c in table.column_names if c.endswith("/from_timestamp")]
    rows = table.to_pylist()
    for c in cols[:1]:
        rows[1][c] += shift
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), f)
    with pytest.raises(UserError) as e:
        import_lerobot(d, tmp_path / "out.zarr")
    message = str(e.value)
    assert "the episode list and the video disagree" in message  # (names the first episode off)
    assert "\n" not in message and not (tmp_path / "out.zarr").exists()


def test_fps_must_be_positive(exported, tmp_path):
    root, _, _ = exported
    d = _copy(root / "vid", tmp_path / "fps0")
    info = json.loads((d / "meta/info.json").read_text())
    (d / "meta/info.json").write_text(json.dumps({**info, "fps": 0}))
    with pytest.raises(UserError, match="fps 0 must be a positive number"):
        import_lerobot(d, tmp_path / "out.zarr")


def test_cli_export_and_import(exported, tmp_path):
    root, store, _ = exported
    out = robo_s2(
        "export", f"store={store.path}", "out=lr", "format=lerobot", "video=false", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "(LeRobotDataset," in out.stdout and "export: fps 10" in out.stdout
    out = robo_s2("import", "src=lr", "out=s.zarr", "cameras=[wrist]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "from LeRobotDataset" in out.stdout
    assert "import: not taken from the source: observation.images.front" in out.stdout
    assert DemoStore.open(tmp_path / "s.zarr").keys() == [
        "action",
        "image",
        "proprio",
        "reward",
        "state",
    ]


def test_an_interrupted_export_leaves_nothing(exported, tmp_path):
    _, store, _ = exported

    def boom(res):
        if res.n_episodes == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_lerobot(store.path, tmp_path / "lr", on_episode=boom)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="already exists; choose a new out= or pass overwrite=true"):
        export_lerobot(store.path, tmp_path)
