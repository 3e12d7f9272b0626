"""robo-s2 collect: the store it writes, determinism, resume, and surviving a kill mid-run."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from robo_s2.data.collection import collect, stratified_placements
from robo_s2.data.store import DemoStore
from robo_s2.errors import UserError

SMALL_ENV = {"image_size": 64}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robo_s2", "collect", *args]


def test_collect_writes_the_demo_store_layout(tmp_path):
    out = tmp_path / "demos.zarr"
    res = collect(out, n_episodes=2, env_kwargs=SMALL_ENV, seed=0, workers=0)
    assert res.n_total == 2 and res.n_new == 2
    store = DemoStore.open(out)
    assert store.n_episodes == 2
    assert {"image", "proprio", "action", "state"} <= set(store.keys())
    ep = store.episode(0)
    n = len(ep["action"])
    assert ep["image"].shape == (n, 64, 64, 3) and ep["image"].dtype == np.uint8
    assert ep["proprio"].dtype == np.float32 and ep["action"].dtype == np.float32
    assert store.episode_ends[-1] == store.n_frames == res.n_frames
    attrs = store.attrs
    assert attrs["env"]["image_size"] == 64
    assert attrs["action_semantics"] and attrs["proprio_semantics"] and attrs["cameras"]
    assert attrs["control_hz"] > 0
    # the expert's episodes lift the cube: the last state rows show the cube high above its start
    assert res.successes == res.attempts - res.discarded


def test_workers_do_not_change_the_store(tmp_path):
    serial = collect(tmp_path / "a.zarr", n_episodes=2, env_kwargs=SMALL_ENV, seed=3, workers=0)
    parallel = collect(tmp_path / "b.zarr", n_episodes=2, env_kwargs=SMALL_ENV, seed=3, workers=2)
    assert serial.n_frames == parallel.n_frames
    a, b = DemoStore.open(tmp_path / "a.zarr"), DemoStore.open(tmp_path / "b.zarr")
    for i in range(2):
        ea, eb = a.episode(i), b.episode(i)
        for key in ("action", "proprio", "state", "image"):
            np.testing.assert_array_equal(ea[key], eb[key])


def test_rerun_resumes_and_is_a_noop_when_full(tmp_path):
    out = tmp_path / "demos.zarr"
    collect(out, n_episodes=1, env_kwargs=SMALL_ENV, seed=0, workers=0)
    first = DemoStore.open(out).episode(0)["state"]
    res = collect(out, n_episodes=2, env_kwargs=SMALL_ENV, seed=0, workers=0)
    assert res.n_new == 1 and res.n_total == 2
    store = DemoStore.open(out)
    np.testing.assert_array_equal(store.episode(0)["state"], first)
    # a resumed run continues the attempt sequence: no placement is collected twice
    assert not np.array_equal(store.episode(1)["state"][0], first[0])
    again = collect(out, n_episodes=2, env_kwargs=SMALL_ENV, seed=0, workers=0)
    assert again.attempts == 0 and DemoStore.open(out).n_episodes == 2


def test_a_full_store_is_not_locked_so_a_writer_elsewhere_does_not_block_it(tmp_path):
    # An experiment's collect step runs before its rows; a training run of another experiment
    # may be caching features in the same store (holding its append lock) meanwhile.
    out = tmp_path / "demos.zarr"
    collect(out, n_episodes=1, env_kwargs=SMALL_ENV, seed=0, workers=0)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom robo_s2.data.store import DemoStore\n"
         "s = DemoStore.open(sys.argv[1], mode='a')\nprint('locked', flush=True)\ntime.sleep(120)",
         str(out)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        full = collect(out, n_episodes=1, env_kwargs=SMALL_ENV, seed=0, workers=0)
        assert full.attempts == 0 and full.n_total == 1
        with pytest.raises(UserError, match="env"):  # a full store is still checked
            collect(out, n_episodes=1, env_kwargs={"image_size": 112}, seed=0, workers=0)
        with pytest.raises(UserError, match="open for appending by another process"):
            collect(out, n_episodes=2, env_kwargs=SMALL_ENV, seed=0, workers=0)
    finally:
        holder.kill()
        holder.wait()
    assert DemoStore.open(out).n_episodes == 1


def test_resume_with_other_env_or_seed_is_refused(tmp_path):
    out = tmp_path / "demos.zarr"
    collect(out, n_episodes=1, env_kwargs=SMALL_ENV, seed=0, workers=0)
    with pytest.raises(UserError, match="env"):
        collect(out, n_episodes=2, env_kwargs={"image_size": 112}, seed=0, workers=0)
    with pytest.raises(UserError, match="seed"):
        collect(out, n_episodes=2, env_kwargs=SMALL_ENV, seed=1, workers=0)
    assert DemoStore.open(out).n_episodes == 1


def test_stratified_placements_put_one_demo_in_every_cell():
    region = ((0.35, 0.65), (-0.15, 0.15))
    xy = np.array(stratified_placements(120, region, seed=0, n_attempts=300))
    assert xy.shape == (300, 2)
    assert np.all(
        (xy[:, 0] >= 0.35) & (xy[:, 0] <= 0.65) & (xy[:, 1] >= -0.15) & (xy[:, 1] <= 0.15)
    )
    # 120 cells on a square region -> an 11 x 11 grid; each pass of 121 visits every cell once
    cells = np.floor((xy - [0.35, -0.15]) / (0.3 / 11)).astype(int)
    first = {tuple(c) for c in cells[:121]}
    assert len(first) == 121 and len({tuple(c) for c in cells[121:242]}) == 121
    # even coverage: every point of the region is near a demo (iid draws leave 4-5 cm holes)
    g = np.stack(np.meshgrid(np.linspace(0.35, 0.65, 61), np.linspace(-0.15, 0.15, 61)), -1)
    gap = np.min(np.linalg.norm(g.reshape(-1, 1, 2) - xy[None, :120], axis=-1), axis=1).max()
    assert gap < 2 * 0.3 / 11
    again = stratified_placements(120, region, seed=0, n_attempts=300)
    assert np.array_equal(xy, np.array(again))
    assert not np.array_equal(xy, np.array(stratified_placements(120, region, 1, 300)))


def test_stratified_collection_places_the_cubes_and_resumes_only_the_same_layout(tmp_path):
    out = tmp_path / "demos.zarr"
    env = {**SMALL_ENV, "render_images": False}
    collect(out, n_episodes=2, env_kwargs=env, seed=0, workers=0, placement="stratified")
    store = DemoStore.open(out)
    cube_xy = np.array([store.episode(i)["state"][0, :2] for i in range(store.n_episodes)])
    region = ((0.4, 0.6), (-0.1, 0.1))  # the env's default
    np.testing.assert_allclose(cube_xy, stratified_placements(2, region, 0, 2), atol=1e-4)
    assert store.attrs["collect"]["placement"] == "stratified"
    with pytest.raises(UserError, match="placement=stratified over 2 cells"):
        collect(out, n_episodes=3, env_kwargs=env, seed=0, workers=0, placement="stratified")
    with pytest.raises(UserError, match="placement=stratified over 2 cells, not placement=random"):
        collect(out, n_episodes=3, env_kwargs=env, seed=0, workers=0)
    with pytest.raises(UserError, match="unknown"):
        collect(tmp_path / "x.zarr", n_episodes=1, env_kwargs=env, placement="grid")


def test_out_path_that_is_not_a_store_is_refused(tmp_path):
    out = tmp_path / "not_a_store"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    result = subprocess.run(
        _cli(f"out={out}", "n_episodes=1", "env.image_size=64"),
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert (out / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_collection_keeps_finished_episodes_and_resumes(tmp_path, sig):
    out = tmp_path / "demos.zarr"
    args = _cli(f"out={out}", "n_episodes=6", "workers=1", "env.image_size=64")
    # Ctrl-C's default action in the child even when this suite was started as a background job
    # (which starts every process with SIGINT ignored, so Python never raises KeyboardInterrupt)
    proc = subprocess.Popen(
        args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 120
    # kill once at least two episodes are committed, while more are being written
    while time.time() < deadline:
        if out.exists():
            try:
                if DemoStore.open(out).n_episodes >= 2:
                    break
            except UserError:
                pass  # the store is being created
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("collection made no progress")
    os.kill(proc.pid, sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    if sig == signal.SIGINT:
        assert "Traceback" not in stderr.decode()
    store = DemoStore.open(out)  # valid after the kill
    kept = store.n_episodes
    assert 2 <= kept < 6
    before = [store.episode(i)["action"] for i in range(kept)]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("collect: 6 episodes")
    store = DemoStore.open(out)
    assert store.n_episodes == 6
    for i in range(kept):
        np.testing.assert_array_equal(store.episode(i)["action"], before[i])
