"""The demo store: layout, zarr v2/v3, attrs, validation, corrupt stores, crash safety, windows."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import robo_s2
from robo_s2.data import store as store_mod
from robo_s2.data.store import PENDING, DemoStore
from robo_s2.data.windows import frame_episode, sequence_indices
from robo_s2.errors import UserError

HERE = Path(__file__).parent
WORKER = HERE / "store_crash_worker.py"
_spec = importlib.util.spec_from_file_location("store_crash_worker", WORKER)
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
make_episode = worker.make_episode


def small_episode(i: int, T: int | None = None) -> dict[str, np.ndarray]:
    T = T or 3 + i % 4
    rng = np.random.default_rng(i)
    return {
        "image": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
        "action": (rng.standard_normal((T, 4)) + i).astype(np.float32),
        "proprio": rng.standard_normal((T, 5)).astype(np.float32),
    }


def assert_episode_equal(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def raw_root_attrs(path: Path) -> dict:
    return zarr.open_group(str(path), mode="r").attrs.asdict()


@pytest.fixture
def filled(tmp_path):
    """A v3 store with 3 small episodes (closed again)."""
    path = tmp_path / "demos.zarr"
    with DemoStore.create(path, attrs={"env": {"image_size": 16}}) as s:
        for i in range(3):
            s.append_episode(small_episode(i))
    return path


# ---------------------------------------------------------------------------- round trip, formats


def written(tmp_path, fmt):
    """Four small episodes written to a new store and closed; (path, episodes)."""
    path = tmp_path / "demos.zarr"
    eps = [small_episode(i) for i in range(4)]
    with DemoStore.create(path, attrs={"control_hz": 10}, format=fmt) as s:
        assert s.n_episodes == 0 and s.n_frames == 0 and s.keys() == []
        for i, ep in enumerate(eps):
            assert s.append_episode(ep) == i
    return path, eps


@pytest.mark.parametrize("fmt", [3, 2])
def test_round_trip_keeps_episodes_and_their_boundaries(tmp_path, fmt):
    path, eps = written(tmp_path, fmt)
    s = DemoStore.open(path)
    assert s.format == fmt and s.mode == "r" and len(s) == 4
    lengths = [len(ep["action"]) for ep in eps]
    np.testing.assert_array_equal(s.episode_lengths, lengths)
    np.testing.assert_array_equal(s.episode_ends, np.cumsum(lengths))
    assert s.episode_ends.dtype == np.int64 and s.n_frames == sum(lengths)
    assert s.keys() == ["action", "image", "proprio"]
    for i, ep in enumerate(eps):
        assert_episode_equal(s.episode(i), ep)


@pytest.mark.parametrize("fmt", [3, 2])
def test_episode_access_by_slice_negative_index_and_keys(tmp_path, fmt):
    path, eps = written(tmp_path, fmt)
    s = DemoStore.open(path)
    lengths = [len(ep["action"]) for ep in eps]
    assert s.episode_slice(1) == slice(lengths[0], lengths[0] + lengths[1])
    assert_episode_equal(s.episode(-1), eps[-1])
    assert list(s.episode(2, keys=["action"])) == ["action"]
    for got, want in zip(s.iter_episodes(["proprio"]), eps, strict=True):
        np.testing.assert_array_equal(got["proprio"], want["proprio"])


@pytest.mark.parametrize("fmt", [3, 2])
def test_layout_is_diffusion_policys_and_readable_with_plain_zarr(tmp_path, fmt):
    path, eps = written(tmp_path, fmt)
    lengths = [len(ep["action"]) for ep in eps]
    raw = zarr.open_group(str(path), mode="r", zarr_format=fmt)
    assert raw["meta/episode_ends"].dtype == np.int64
    np.testing.assert_array_equal(raw["meta/episode_ends"][:], np.cumsum(lengths))
    image = raw["data/image"]
    assert image.dtype == np.uint8 and image.chunks == (1, 16, 16, 3)
    assert raw["data/action"].dtype == np.float32 and raw["data/action"].chunks[0] >= 1000
    if fmt == 2:
        zarray = json.loads((path / "data" / "image" / ".zarray").read_text())
        assert zarray["zarr_format"] == 2 and zarray["compressor"]["cname"] == "zstd"
        assert (path / ".zgroup").is_file() and (
            path / "meta" / "episode_ends" / ".zarray"
        ).is_file()
    else:
        meta = json.loads((path / "data" / "image" / "zarr.json").read_text())
        assert any(c["name"] == "blosc" for c in meta["codecs"])


def test_reads_a_v2_store_written_like_diffusion_policy(tmp_path):
    """zarr v2, other compressors, uncompressed int64 episode_ends, other keys: read and append."""
    import numcodecs

    path = tmp_path / "pusht.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data, meta = root.create_group("data"), root.create_group("meta")
    ends = np.array([5, 12, 20], dtype=np.int64)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8)
    action = rng.standard_normal((20, 2)).astype(np.float32)
    state = rng.standard_normal((20, 5)).astype(np.float32)
    lz4 = numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.NOSHUFFLE)
    data.create_array("img", data=img, chunks=(1, 12, 12, 3), compressors=lz4)
    data.create_array("action", data=action, chunks=(100, 2), compressors=numcodecs.Zstd())
    data.create_array("state", data=state, chunks=(7, 5), compressors=None)
    meta.create_array("episode_ends", data=ends, chunks=(3,), compressors=None)

    s = DemoStore.open(path)
    assert s.format == 2 and s.n_episodes == 3 and s.n_frames == 20
    assert s.keys() == ["action", "img", "state"] and s.attrs == {}
    np.testing.assert_array_equal(s.episode(1)["img"], img[5:12])
    np.testing.assert_array_equal(s.episode(2)["action"], action[12:20])
    # and append to it: the arrays keep their compressors and stay zarr v2
    with DemoStore.open(path, mode="a") as s:
        new = {
            "img": np.ones((4, 12, 12, 3), np.uint8),
            "action": np.zeros((4, 2), np.float64),  # cast to the stored float32
            "state": np.ones((4, 5), np.float32),
        }
        assert s.append_episode(new) == 3
    raw = zarr.open_group(str(path), mode="r", zarr_format=2)
    np.testing.assert_array_equal(raw["meta/episode_ends"][:], [5, 12, 20, 24])
    assert raw["data/action"].dtype == np.float32 and raw["data/action"].shape == (24, 2)
    np.testing.assert_array_equal(raw["data/img"][:20], img)
    np.testing.assert_array_equal(raw["data/state"][20:], 1.0)
    assert PENDING not in raw.attrs


def test_store_opened_by_diffusion_policy_style_reader_after_pending_marker(filled):
    """A reader that ignores our marker still sees consistent data up to episode_ends[-1]."""
    raw = zarr.open_group(str(filled), mode="r")
    n = raw["meta/episode_ends"][-1]
    for _key, arr in raw["data"].arrays():
        assert arr[:n].shape[0] == n


def test_other_groups_beside_data_and_meta_are_fine(filled):
    with DemoStore.open(filled, mode="a") as s:
        g = s.root.require_group("features/enc-abc")
        g.create_array("feature", shape=(s.n_frames, 8), dtype="float32", chunks=(64, 8))
        g.attrs["n_done"] = s.n_frames
        s.append_episode(small_episode(3))
    with DemoStore.open(filled, mode="a") as s:
        assert s.n_episodes == 4 and "features" in s.root
        assert s.keys() == ["action", "image", "proprio"]
    assert DemoStore.open(filled).n_episodes == 4


# ---------------------------------------------------------------------------- attrs, open_or_create


def test_attrs(tmp_path):
    path = tmp_path / "s.zarr"
    attrs = {"env": {"image_size": np.int64(64), "cameras": ("front", "wrist")}, "p": tmp_path}
    s = DemoStore.create(path, attrs=attrs)
    got = s.attrs
    assert got["env"] == {"image_size": 64, "cameras": ["front", "wrist"]}
    assert got["p"] == str(tmp_path)
    assert got["robo_s2_version"] == robo_s2.__version__ and got["created"].startswith("20")
    s.update_attrs({"collect_progress": {"next_attempt": 3}})
    s.append_episode(small_episode(0))
    assert PENDING not in s.attrs and PENDING not in raw_root_attrs(path)
    s.close()
    r = DemoStore.open(path)
    assert r.attrs["collect_progress"] == {"next_attempt": 3} and r.attrs["env"]["image_size"] == 64
    with pytest.raises(UserError, match="read-only.*mode='a'"):
        r.update_attrs({"x": 1})
    with DemoStore.open(path, mode="a") as a:
        with pytest.raises(UserError, match="not JSON-serialisable"):
            a.update_attrs({"bad": object()})
        with pytest.raises(UserError, match="reserved"):
            a.update_attrs({PENDING: 1})
    with pytest.raises(UserError, match="reserved"):
        DemoStore.create(tmp_path / "t.zarr", attrs={PENDING: {}})


def test_open_or_create(tmp_path):
    path = tmp_path / "s.zarr"
    env = {"image_size": 64, "cube": {"size": 0.04}}
    s = DemoStore.open_or_create(path, attrs={"env": env, "note": "a"}, check_attrs=("env",))
    s.append_episode(small_episode(0))
    s.close()
    # same env: resumes (other attrs are not compared)
    s = DemoStore.open_or_create(path, attrs={"env": env, "note": "b"}, check_attrs=("env",))
    assert s.mode == "a" and s.n_episodes == 1
    s.append_episode(small_episode(1))
    s.close()
    other = {"image_size": 112, "cube": {"size": 0.04}}
    with pytest.raises(
        UserError, match=r"different 'env' \(env.image_size: stored 64, given 112\)"
    ):
        DemoStore.open_or_create(path, attrs={"env": other}, check_attrs=("env",))
    with pytest.raises(UserError, match=r"env.cube.size.*resume with the same env"):
        DemoStore.open_or_create(
            path, attrs={"env": {**env, "cube": {"size": 0.05}}}, check_attrs=("env",)
        )
    # the refused open released its lock: appending still works here
    with DemoStore.open(path, mode="a") as s:
        assert s.n_episodes == 2
    # an empty directory is a fine place for a new store
    empty = tmp_path / "empty"
    empty.mkdir()
    with DemoStore.open_or_create(empty, format=2) as s:
        assert s.format == 2 and s.n_episodes == 0


def test_paths_that_are_not_stores_are_refused_untouched(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("precious")
    afile = tmp_path / "file.zarr"
    afile.write_text("not a dir")
    for fn in (
        lambda p: DemoStore.open_or_create(p),
        lambda p: DemoStore.open(p),
        lambda p: DemoStore.open(p, mode="a"),
        lambda p: DemoStore.create(p),
    ):
        with pytest.raises(UserError, match="not a demo store|already exists|is a file") as e:
            fn(plain)
        assert "\n" not in str(e.value)
        with pytest.raises(UserError, match="is a file|already exists"):
            fn(afile)
    assert (plain / "notes.txt").read_text() == "precious" and sorted(os.listdir(plain)) == [
        "notes.txt"
    ]
    assert afile.read_text() == "not a dir"
    with pytest.raises(UserError, match="does not exist"):
        DemoStore.open(tmp_path / "missing.zarr")
    with pytest.raises(UserError, match="mode='x'.*use 'r'"):
        DemoStore.open(tmp_path / "missing.zarr", mode="x")
    with pytest.raises(UserError, match="use 3.*or 2"):
        DemoStore.create(tmp_path / "new.zarr", format=4)
    assert not (tmp_path / "new.zarr").exists()
    # no leftovers of the temporary creation directory
    assert not [p for p in tmp_path.iterdir() if ".creating-" in p.name]


# ---------------------------------------------------------------------------- corrupt stores


def _break_ends(path):
    a = zarr.open_array(str(path / "meta" / "episode_ends"), mode="r+")
    a[1] = a[0]


def _short_data(path):
    a = zarr.open_array(str(path / "data" / "action"), mode="r+")
    a.resize((a.shape[0] - 2, a.shape[1]))


def _short_all(path):
    for key in ("action", "image", "proprio"):
        a = zarr.open_array(str(path / "data" / key), mode="r+")
        a.resize((a.shape[0] - 1, *a.shape[1:]))


def _long_one(path):
    a = zarr.open_array(str(path / "data" / "proprio"), mode="r+")
    a.resize((a.shape[0] + 3, a.shape[1]))


def _no_ends(path):
    import shutil

    shutil.rmtree(path / "meta" / "episode_ends")


def _no_data(path):
    import shutil

    shutil.rmtree(path / "data")


def _bad_marker(path):
    zarr.open_group(str(path), mode="r+").attrs[PENDING] = {"n_frames": 7, "n_episodes": 1}


@pytest.mark.parametrize(
    "damage, message",
    [
        (_break_ends, r"episode_ends is not strictly increasing \(entry 1"),
        (_short_data, r"data/action has \d+ rows but meta/episode_ends ends at \d+"),
        (_short_all, r"data/\w+ has \d+ rows but meta/episode_ends ends at \d+"),
        (_long_one, r"different lengths \(.*data/proprio: \d+\) and no append is pending"),
        (_no_ends, r"no meta/episode_ends"),
        (_no_data, r"no data/ group"),
        (_bad_marker, r"interrupted append recorded 7 committed frames"),
    ],
)
@pytest.mark.parametrize("mode", ["r", "a"])
def test_corrupt_stores_are_refused(filled, damage, message, mode, monkeypatch):
    damage(filled)
    slept = []
    monkeypatch.setattr(store_mod.time, "sleep", slept.append)
    with pytest.raises(UserError, match=message) as e:
        DemoStore.open(filled, mode=mode)
    assert "corrupt" in str(e.value) and "re-collect" in str(e.value) and "\n" not in str(e.value)
    assert sum(slept) < 1.0  # refused at once: an open retries (briefly) only while a store changes
    monkeypatch.undo()
    if mode == "a":  # the refused open released its lock
        with pytest.raises(UserError):
            DemoStore.open(filled, mode="a")


def test_equal_length_leftovers_past_episode_ends_are_ignored_then_trimmed(filled):
    """What a crashed diffusion_policy add_episode leaves: data longer than episode_ends[-1]."""
    n = DemoStore.open(filled).n_frames
    for key in ("action", "image", "proprio"):
        a = zarr.open_array(str(filled / "data" / key), mode="r+")
        a.resize((n + 4, *a.shape[1:]))
    r = DemoStore.open(filled)
    assert r.n_frames == n and r.array("action").shape[0] == n + 4
    with DemoStore.open(filled, mode="a") as s:
        assert s.array("action").shape[0] == n
        s.append_episode(small_episode(3))
    assert_episode_equal(DemoStore.open(filled).episode(3), small_episode(3))


# ---------------------------------------------------------------------------- append validation


def test_append_validation(filled):
    s = DemoStore.open(filled, mode="a")
    good = small_episode(5, T=4)

    def bad(**changes):
        ep = {**good, **changes}
        return {k: v for k, v in ep.items() if v is not None}

    nan = good["action"].copy()
    nan[2, 1] = np.nan
    with pytest.raises(
        UserError, match=r"episode\['action'\] has a non-finite value \(nan\) at step 2"
    ):
        s.append_episode(bad(action=nan))
    inf = good["proprio"].copy()
    inf[3, 0] = -np.inf
    with pytest.raises(UserError, match=r"'proprio'.*non-finite.*step 3"):
        s.append_episode(bad(proprio=inf))
    with pytest.raises(UserError, match=r"non-finite value \(inf\) at step 0"):  # float32 overflow
        s.append_episode(bad(action=np.full((4, 4), 1e39)))
    with pytest.raises(UserError, match=r"missing \['proprio'\], unexpected \[\]"):
        s.append_episode(bad(proprio=None))
    with pytest.raises(UserError, match=r"unexpected \['extra'\]"):
        s.append_episode(bad(extra=np.zeros((4, 1), np.float32)))
    with pytest.raises(UserError, match="differ in length"):
        s.append_episode(bad(action=good["action"][:3]))
    with pytest.raises(UserError, match="0 steps"):
        s.append_episode({k: v[:0] for k, v in good.items()})
    with pytest.raises(UserError, match=r"per-step shape \(5,\) but data/action holds \(4,\)"):
        s.append_episode(bad(action=np.zeros((4, 5), np.float32)))
    with pytest.raises(UserError, match=r"images must be uint8 \(T,H,W,3\)"):
        s.append_episode(bad(image=good["image"].astype(np.float32) / 255))
    with pytest.raises(UserError, match="scalar"):
        s.append_episode(bad(action=np.float32(1.0)))
    with pytest.raises(UserError, match="non-empty dict"):
        s.append_episode({})
    with pytest.raises(UserError, match="not a valid data key"):
        s.append_episode(bad(**{"a/b": np.zeros((4, 1))}))
    with pytest.raises(UserError, match="dtype <U1"):
        s.append_episode(bad(action=np.array([["a"] * 4] * 4)))
    n = s.n_frames
    assert s.n_episodes == 3 and PENDING not in raw_root_attrs(filled)
    # castable dtypes are converted: float64 -> float32, int -> float
    ok = bad(action=good["action"].astype(np.float64), proprio=np.ones((4, 5), np.int64))
    assert s.append_episode(ok) == 3
    got = s.episode(3)
    assert got["action"].dtype == np.float32 and got["proprio"].dtype == np.float32
    assert s.n_frames == n + 4
    s.close()
    with pytest.raises(UserError, match="read-only"):
        DemoStore.open(filled).append_episode(good)


def test_int_arrays_reject_uncastable_and_out_of_range(tmp_path):
    with DemoStore.create(tmp_path / "s.zarr") as s:
        s.append_episode({"label": np.array([1, 2], np.uint8)})
        with pytest.raises(UserError, match="does not convert to data/label's uint8"):
            s.append_episode({"label": np.array([1.5, 2.0])})
        with pytest.raises(UserError, match=r"values in \[-1, 300\].*uint8 range"):
            s.append_episode({"label": np.array([-1, 300], np.int64)})
        s.append_episode({"label": np.array([7], np.int64)})
        np.testing.assert_array_equal(s.episode(1)["label"], [7])


def test_first_episode_defines_keys_and_an_aborted_one_does_not(tmp_path):
    path = tmp_path / "s.zarr"
    s = DemoStore.create(path)
    with pytest.raises(KeyboardInterrupt):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(store_mod, "_crash_point", _crash_at("written:image", KeyboardInterrupt))
            s.append_episode(small_episode(0))
    assert s.n_episodes == 0 and s.keys() == []
    # other keys are fine for what is still an empty store
    s.append_episode({"action": np.zeros((2, 3), np.float32)})
    assert s.keys() == ["action"]
    s.close()
    assert DemoStore.open(path).keys() == ["action"]


# ---------------------------------------------------------------------------- crash safety


class _Crash(BaseException):
    """A simulated hard kill: nothing after it runs."""


def _crash_at(stage: str, exc: type[BaseException] = _Crash):
    def hook(s: str) -> None:
        if s == stage:
            raise exc(stage)

    return hook


def _no_rollback(*args, **kwargs):
    raise _Crash("the process is dead")


STAGES = [
    "marked",
    "resized:image",
    "written:image",
    "resized:action",
    "written:proprio",
    "ends_resized",
    "ends_written",
    "committed",
]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(
    "first, fmt", [(False, 3), (False, 2), (True, 3)], ids=["v3", "v2", "first"]
)
def test_hard_crash_at_every_step_of_an_append(tmp_path, monkeypatch, fmt, stage, first):
    """The on-disk state at each step: read shows the committed view, append rolls back."""
    path = tmp_path / "s.zarr"
    before = [] if first else [small_episode(i) for i in range(2)]
    s = DemoStore.create(path, format=fmt)
    for ep in before:
        s.append_episode(ep)
    new = small_episode(7, T=6)
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "_crash_point", _crash_at(stage))
        mp.setattr(store_mod, "_rollback", _no_rollback)  # dead processes do not clean up
        with pytest.raises(_Crash):
            s.append_episode(new)
    s.close()
    kept = before + ([new] if stage == "committed" else [])
    pending = stage != "committed"
    assert (PENDING in raw_root_attrs(path)) == pending
    r = DemoStore.open(path)  # read-only: committed view, nothing modified
    assert r.n_episodes == len(kept)
    for i, ep in enumerate(kept):
        assert_episode_equal(r.episode(i), ep)
    assert (PENDING in raw_root_attrs(path)) == pending
    with DemoStore.open(path, mode="a") as a:  # rolls back
        assert PENDING not in raw_root_attrs(path) and a.n_episodes == len(kept)
        for key in a.keys():
            assert a.array(key).shape[0] == a.n_frames
        assert a.append_episode(small_episode(8)) == len(kept)
    r = DemoStore.open(path)
    for i, ep in enumerate([*kept, small_episode(8)]):
        assert_episode_equal(r.episode(i), ep)
    assert not list(path.rglob("*.partial"))


@pytest.mark.parametrize("fmt", [3, 2])
def test_rollback_removes_temp_files_of_killed_writes(tmp_path, monkeypatch, fmt):
    path = tmp_path / "s.zarr"
    s = DemoStore.create(path, format=fmt)
    s.append_episode(small_episode(0, T=3))
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "_crash_point", _crash_at("written:image"))
        mp.setattr(store_mod, "_rollback", _no_rollback)
        with pytest.raises(_Crash):
            s.append_episode(small_episode(1, T=4))
    s.close()
    image = zarr.open_array(str(path / "data" / "image"), mode="r")
    chunk = path / "data" / "image" / image.metadata.encode_chunk_key((5, 0, 0, 0))
    leftovers = [path / "zarr.0123abcd.partial", chunk.with_suffix(".4567cdef.partial")]
    for p in leftovers:
        p.write_bytes(b"half a file")
    keep = path / "data" / "image" / "notes.txt"
    keep.write_text("not ours to delete")
    DemoStore.open(path, mode="a").close()
    assert not any(p.exists() for p in leftovers) and keep.exists()


@pytest.mark.parametrize("stage", ["marked", "written:image", "ends_written", "committed"])
def test_ctrl_c_inside_append_rolls_back_at_once(filled, monkeypatch, stage):
    s = DemoStore.open(filled, mode="a")
    monkeypatch.setattr(store_mod, "_crash_point", _crash_at(stage, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        s.append_episode(small_episode(3))
    monkeypatch.undo()
    assert PENDING not in raw_root_attrs(filled)
    expected = 4 if stage == "committed" else 3
    assert s.n_episodes == expected == DemoStore.open(filled).n_episodes
    assert s.append_episode(small_episode(9)) == expected
    assert_episode_equal(DemoStore.open(filled).episode(expected), small_episode(9))
    s.close()


def _reader(proc: subprocess.Popen, lines: list[str]) -> None:
    for line in proc.stdout:
        lines.append(line.strip())


def _run_until(path, image_size, n_max, begin_count, delay, fmt=3):
    """Start a worker and SIGKILL it ``delay`` s after its ``begin_count``-th ``begin`` line."""
    args = [sys.executable, str(WORKER), str(path), str(n_max), str(image_size), str(fmt)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    t = threading.Thread(target=_reader, args=(proc, lines), daemon=True)
    t.start()
    deadline = time.time() + 60
    while sum(x.startswith("begin") for x in lines) < begin_count:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"worker ended early: {lines} {proc.stderr.read()}")
        time.sleep(0.001)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    t.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    return [int(x.split()[1]) for x in lines if x.startswith("committed")]


def _check_store(path, image_size, at_least: int) -> int:
    s = DemoStore.open(path)
    assert s.n_episodes >= at_least
    for i in range(s.n_episodes):
        assert_episode_equal(s.episode(i), make_episode(i, image_size))
    return s.n_episodes


def test_sigkill_at_random_moments_never_loses_or_tears_an_episode(tmp_path):
    """A worker appending 224x224 episodes is SIGKILLed again and again, mostly mid-append."""
    path, size = tmp_path / "crash.zarr", 224
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    # (kill after the n-th "begin" line of the run, then wait this long): from right after the
    # marker through the image writes to the end of an append; the first hits the first episode.
    schedule = [(1, 0.01), (2, 0.0), (2, 0.02), (1, 0.05), (2, rng.uniform(0, 0.12))]
    schedule += [(rng.randint(1, 2), rng.uniform(0, 0.12))]
    committed, pending_seen, mid_image = -1, 0, 0
    for n, (count, delay) in enumerate(schedule):
        reported = _run_until(path, size, 1000, count, delay)
        if reported:
            committed = max(committed, *reported)
        if path.exists():
            attrs = raw_root_attrs(path)
            if PENDING in attrs:
                pending_seen += 1
                image_rows = zarr.open_array(str(path / "data" / "image"), mode="r").shape[0]
                if image_rows > attrs[PENDING]["n_frames"]:
                    mid_image += 1
            assert _check_store(path, size, committed + 1) >= committed + 1, (seed, n)
    print(f"kills: {len(schedule)}, inside an append: {pending_seen}, mid-image: {mid_image}")
    assert pending_seen >= 1, f"no kill landed inside an append (seed {seed})"
    n_before = DemoStore.open(path).n_episodes
    done = subprocess.run(
        [sys.executable, str(WORKER), str(path), str(n_before + 2), str(size), "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("done"), done.stderr
    assert _check_store(path, size, n_before + 2) == n_before + 2
    with DemoStore.open(path, mode="a") as s:
        assert all(s.array(k).shape[0] == s.n_frames for k in s.keys())
    assert not list(path.rglob("*.partial"))


def test_readers_see_only_committed_episodes_while_a_writer_appends(tmp_path):
    path, size, n_max = tmp_path / "live.zarr", 96, 8
    args = [sys.executable, str(WORKER), str(path), str(n_max), str(size), "2"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, opens = 0, 0
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if not path.exists():
                time.sleep(0.01)
                continue
            s = DemoStore.open(path)  # never a UserError, never a torn episode
            opens += 1
            assert s.n_episodes >= seen
            seen = s.n_episodes
            if seen:
                assert_episode_equal(s.episode(seen - 1), make_episode(seen - 1, size))
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
    assert opens > 5 and DemoStore.open(path).n_episodes == n_max


def test_read_only_open_retries_a_read_torn_by_a_concurrent_append(filled, monkeypatch):
    s = DemoStore.open(filled, mode="a")
    with monkeypatch.context() as mp:
        mp.setattr(store_mod, "_crash_point", _crash_at("resized:image"))
        mp.setattr(store_mod, "_rollback", _no_rollback)
        with pytest.raises(_Crash):
            s.append_episode(small_episode(3))
    s.close()
    real, calls = store_mod._read_state, []

    def read_attrs_before_the_marker(path, mode):
        state = real(path, mode)
        calls.append(state.marker)
        if len(calls) == 1:
            state.marker = None  # this read saw the root attributes before the marker was written
        return state

    monkeypatch.setattr(store_mod, "_read_state", read_attrs_before_the_marker)
    assert DemoStore.open(filled).n_episodes == 3 and len(calls) == 2


def test_second_writing_process_is_refused(filled):
    with DemoStore.open(filled, mode="a") as s:
        again = DemoStore.open(filled, mode="a")  # the same process may hold several handles
        again.close()
        code = (
            "import sys\nfrom robo_s2.data.store import DemoStore\n"
            "from robo_s2.errors import UserError\n"
            f"try: DemoStore.open({str(filled)!r}, mode='a')\n"
            "except UserError as e: print(e); sys.exit(3)\n"
            f"print(DemoStore.open({str(filled)!r}).n_episodes)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 3 and "open for appending by another process" in out.stdout
        s.append_episode(small_episode(3))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "4", out.stderr


def test_a_waiting_writer_gets_the_store_once_the_first_one_is_done(filled):
    code = (
        "import sys, time\nfrom robo_s2.data.store import DemoStore\n"
        "from robo_s2.errors import UserError\n"
        "t = time.monotonic()\n"
        "try: s = DemoStore.open(sys.argv[1], mode='a', wait_s=float(sys.argv[2]))\n"
        "except UserError as e: print(e); sys.exit(3)\n"
        "print('got', s.n_episodes, round(time.monotonic() - t, 1)); s.close()"
    )
    with DemoStore.open(filled, mode="a") as s:
        short = subprocess.run(
            [sys.executable, "-c", code, str(filled), "0.5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert short.returncode == 3 and "open for appending by another process" in short.stdout
        waiter = subprocess.Popen(
            [sys.executable, "-c", code, str(filled), "60"], stdout=subprocess.PIPE, text=True
        )
        time.sleep(3.0)  # the waiter is blocked on the lock meanwhile
        assert waiter.poll() is None
        s.append_episode(small_episode(3))
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and "being written by another process; waiting" in out
    assert "got 4" in out  # it sees the episode the first writer committed


def test_a_large_episode_round_trips(tmp_path):  # speed: benchmarks/store_speed.py
    ep = {
        "image": np.random.default_rng(0).integers(0, 256, (60, 224, 224, 3), dtype=np.uint8),
        "action": np.zeros((60, 7), np.float32),
        "proprio": np.zeros((60, 9), np.float32),
    }
    with DemoStore.create(tmp_path / "s.zarr") as s:
        s.append_episode(ep)
        s.append_episode(ep)
        got = s.episode(1)
    np.testing.assert_array_equal(got["image"], ep["image"])
    np.testing.assert_array_equal(got["action"], ep["action"])


# ---------------------------------------------------------------------------- windows


def _loop_reference(ends, history, future):
    idx, valid = [], []
    start = 0
    for end in ends:
        for t in range(start, end):
            row, ok = [], []
            for j in range(t - history + 1, t + future + 1):
                row.append(min(max(j, start), end - 1))
                ok.append(start <= j < end)
            idx.append(row)
            valid.append(ok)
        start = end
    width = history + future
    return np.array(idx, np.int64).reshape(-1, width), np.array(valid, bool).reshape(-1, width)


@pytest.mark.parametrize("history, future", [(1, 0), (1, 3), (4, 0), (16, 16), (3, 5)])
def test_sequence_indices_match_a_loop(history, future):
    rng = np.random.default_rng(history * 100 + future)
    for _ in range(5):
        lengths = rng.integers(1, 25, size=rng.integers(1, 8))
        lengths[0] = 1  # single-step episodes too
        ends = np.cumsum(lengths)
        idx, valid = sequence_indices(ends, history, future)
        ref_idx, ref_valid = _loop_reference(ends, history, future)
        assert idx.dtype == np.int64 and valid.dtype == bool
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_array_equal(valid, ref_valid)
        np.testing.assert_array_equal(idx[:, history - 1], np.arange(ends[-1]))


def test_sequence_indices_edges():
    idx, valid = sequence_indices(np.array([], np.int64), 2, 3)
    assert idx.shape == valid.shape == (0, 5)
    idx, valid = sequence_indices([3], 2, 1)
    np.testing.assert_array_equal(idx, [[0, 0, 1], [0, 1, 2], [1, 2, 2]])
    np.testing.assert_array_equal(valid, [[0, 1, 1], [1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(frame_episode([2, 5]), [0, 0, 1, 1, 1])
    for h, f in [(0, 1), (2, -1), (1.5, 0)]:
        with pytest.raises(UserError, match="must be an integer"):
            sequence_indices([3], h, f)
    with pytest.raises(UserError, match="non-decreasing"):
        sequence_indices([3, 2], 1, 1)


def test_sequence_indices_cover_a_large_store():  # speed: benchmarks/store_speed.py
    ends = np.cumsum(np.full(2000, 100))  # 200k frames
    idx, _ = sequence_indices(ends, 16, 16)
    assert idx.shape == (200_000, 32)
    assert idx[150, 15] == 150 and idx[150, 0] == 135 and idx[150, 31] == 166
    assert idx[100, 0] == 100 and idx[199, 31] == 199  # clamped at the episode start and end


def test_iter_windows(filled):
    s = DemoStore.open(filled)
    windows = list(s.iter_windows(["action", "image"], history=2, future=3))
    assert len(windows) == s.n_frames
    idx, valid = sequence_indices(s.episode_ends, 2, 3)
    action = s.array("action")[: s.n_frames]
    for w, row, ok in zip(windows, idx, valid, strict=True):
        assert w["action"].shape == (5, 4) and w["image"].shape == (5, 16, 16, 3)
        np.testing.assert_array_equal(w["action"], action[row])
        np.testing.assert_array_equal(w["_valid"], ok)
        assert w["_frame"] == row[1] and w["_episode"] == np.searchsorted(
            s.episode_ends, w["_frame"], side="right"
        )
    only = list(s.iter_windows(None, 1, 0, episodes=[2]))
    assert len(only) == s.episode_lengths[2] and {w["_episode"] for w in only} == {2}
    with pytest.raises(UserError, match="no data key"):
        next(s.iter_windows(["nope"], 1, 0))
    with pytest.raises(UserError, match="history"):
        next(s.iter_windows(["action"], 0, 0))
    with pytest.raises(UserError, match="out of range.*has 3 episodes"):
        s.episode(3)
