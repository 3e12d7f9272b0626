"""Scaling out: an experiment's (row, seed) jobs through Hydra's launchers give the serial run's
results; two processes encoding one store write its feature cache once."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN, listed, robo_s2
from safetensors.torch import load_file

from robo_s2.experiments import launch

TINY_TRAIN_LISTED = listed(TINY_TRAIN)


def _tiny(store: Path) -> list[str]:
    """table8_tiny cut down on the command line: one 64² ViT-T row, two seeds, 3 demos; one env
    process per evaluation (a job's own processes must start inside a joblib worker)."""
    return [
        "experiment=table8_tiny", f"experiment.demos.store={store}",
        "experiment.demos.n_episodes=3", "experiment.demos.env.image_size=64",
        "experiment.rows=[{label:ViT-T,encoder:vit_t,overrides:{image_size:64,pooling:'grid:2'}}]",
        "experiment.seeds=[0,1]", f"experiment.train_overrides={TINY_TRAIN_LISTED}",
        "experiment.eval.positions=random", "experiment.eval.n_episodes=2",
        "experiment.eval.seed=3", "experiment.eval.n_videos=0",
        "+experiment.eval.env_overrides.max_episode_steps=8", "workers=1", "device=cpu",
    ]  # fmt: skip


@pytest.mark.skipif(
    launch.missing_launcher(["hydra/launcher=joblib", "hydra/launcher=submitit_local"]) is not None,
    reason='needs the cluster extra: pip install -e ".[cluster]"',
)
def test_launched_jobs_give_the_serial_results(tmp_path):
    args = _tiny(tmp_path / "demos.zarr")
    runs = {
        "serial": [],
        "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
        "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
    }
    for name, extra in runs.items():
        out = robo_s2("experiment", *args, *extra, f"hydra.run.dir={tmp_path / name}",
                      cwd=tmp_path, timeout=600)  # fmt: skip
        # both ends of stderr: a launcher's own failure (a job controller's traceback) comes
        # before Hydra's summary of it
        assert out.returncode == 0, out.stderr[:3000] + "\n...\n" + out.stderr[-3000:]
    # submitit_local's jobs share one existing folder: with its default ".submitit/%j" a job's
    # controller raced this process to create its folder (FileNotFoundError, no job output)
    jobs = tmp_path / "submitit_local" / "jobs" / ".submitit"
    assert sorted(p.name for p in jobs.iterdir() if p.is_dir()) == [], list(jobs.iterdir())
    assert len(list(jobs.glob("*_0_result.pkl"))) == 2
    ckpt = Path("checkpoints/best/model.safetensors")
    for seed in (0, 1):
        run = Path("runs/ViT-T") / f"seed{seed}"
        first = load_file(tmp_path / "serial" / run / ckpt)
        episodes = json.loads((tmp_path / "serial" / run / "eval/eval_info.json").read_text())
        for name in ("joblib", "submitit_local"):
            # each job has its own run directory and its own Hydra files
            assert (tmp_path / name / "jobs" / f"ViT-T_seed{seed}" / ".hydra").is_dir()
            other = load_file(tmp_path / name / run / ckpt)
            assert all(torch.equal(first[k], other[k]) for k in first)
            info = json.loads((tmp_path / name / run / "eval/eval_info.json").read_text())
            assert info["per_episode"] == episodes["per_episode"]
    tables = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in runs}
    for name in ("joblib", "submitit_local"):
        assert tables[name]["table"] == tables["serial"]["table"]
        assert not any(r["reused"] for r in tables[name]["rows"][0]["runs"])
    # a rerun reads the finished jobs back
    again = robo_s2("experiment", *args, *runs["joblib"], f"hydra.run.dir={tmp_path / 'joblib'}",
                    cwd=tmp_path, timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    rows = json.loads((tmp_path / "joblib" / "results.json").read_text())["rows"]
    assert all(r["reused"] for r in rows[0]["runs"])


def test_a_launcher_that_is_not_installed_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(launch.LAUNCHER_PLUGINS, "joblib", ("no_such_plugin_module", "pkg-x"))
    line = launch.missing_launcher(["a=1", "hydra/launcher=joblib"])
    assert line is not None and line.startswith("hydra/launcher=joblib needs the pkg-x plugin")
    assert 'pip install -e ".[cluster]"' in line
    assert launch.missing_launcher(["hydra/launcher=basic", "x=1"]) is None
    for job, message in (("job.row=nope", "job.row=nope is not a row of table8_tiny: ViT-T,"),
                         ("job.row=ViT-T", "job.seed=None must be a training seed")):  # fmt: skip
        out = robo_s2("experiment", "hydra/launcher=basic", job, cwd=tmp_path)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stderr


def _encoder():
    from robo_s2.encoders import create_encoder

    torch.manual_seed(0)  # the same weights in every process
    return create_encoder(
        "timm", model="vit_tiny_patch16_224", pretrained=False, image_size=32, pooling="mean",
        precision="fp32",
    ).eval()  # fmt: skip


def _encode(store: str, barrier, results) -> None:
    from robo_s2.data.store import DemoStore
    from robo_s2.encoders.feature_cache import encode_store

    torch.set_num_threads(1)
    encoder = _encoder()
    barrier.wait()  # both start together: one encodes, the other waits for the append lock
    with DemoStore.open(store, mode="a", wait_s=120) as writable:
        status = encode_store(writable, encoder, batch_size=4, device="cpu")
    results.put((status.n_encoded_now, status.n_done))


def test_two_concurrent_encodes_of_one_store_write_the_cache_once(tmp_path):
    from robo_s2.data.store import DemoStore
    from robo_s2.encoders.feature_cache import encode_frames, load_features

    store = tmp_path / "s.zarr"
    rng = np.random.default_rng(0)
    with DemoStore.create(store, attrs={"env": {"id": "test"}}) as s:
        for _ in range(3):
            t = 7
            s.append_episode({
                "image": rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8),
                "proprio": rng.normal(size=(t, 8)).astype(np.float32),
                "action": rng.normal(size=(t, 7)).astype(np.float32),
            })  # fmt: skip
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_encode, args=(str(store), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    done = sorted(results.get(timeout=5) for _ in procs)
    assert done == [(0, 21), (21, 21)]  # the second found the cache complete
    encoder = _encoder()
    cached = load_features(DemoStore.open(store), encoder, precision="fp32")
    images = np.asarray(DemoStore.open(store).array("image")[:])
    expect = encode_frames(encoder, images, torch.device("cpu"))
    np.testing.assert_allclose(cached, expect, rtol=1e-5, atol=1e-5)
    assert os.path.isdir(store / "features")


@pytest.mark.skipif(
    launch.missing_launcher(["hydra/launcher=submitit_local"]) is not None,
    reason='needs the cluster extra: pip install -e ".[cluster]"',
)
def test_slurm_without_slurm_is_refused_before_any_work(tmp_path):
    """It used to collect the demos, then fail: now one line before anything starts."""
    import shutil

    if shutil.which("sbatch") is not None:
        pytest.skip("this machine has Slurm")
    out = robo_s2(
        "experiment", *_tiny(tmp_path / "demos.zarr"), "hydra/launcher=submitit_slurm",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "needs Slurm, but this machine has no sbatch" in lines[0]
    assert not (tmp_path / "demos.zarr").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


LAUNCHERS = {
    "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"],
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_jobs_end_when_the_experiment_is_killed(tmp_path, launcher):
    """SIGKILL of the launching experiment leaves no job training on, whichever local launcher
    started it (issue 32 item 4)."""
    import signal
    import subprocess
    import sys
    import time

    if launch.missing_launcher([f"hydra/launcher={launcher}"]) is not None:
        pytest.skip('needs the cluster extra: pip install -e ".[cluster]"')
    long = TINY_TRAIN_LISTED.replace("'train.steps=6'", "'train.steps=100000'")
    args = [a if not a.startswith("experiment.train_overrides=") else
            f"experiment.train_overrides={long}" for a in _tiny(tmp_path / "demos.zarr")]  # fmt: skip
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "robo_s2", "experiment", *args,  # two seeds: two jobs
         *LAUNCHERS[launcher], f"hydra.run.dir={out}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    jobs: list[int] = []
    try:
        deadline = time.monotonic() + 240
        while not (out / "runs" / "ViT-T" / "seed0" / "tb").exists():  # the job is training
            assert proc.poll() is None and time.monotonic() < deadline, "the job never started"
            time.sleep(0.5)
        time.sleep(2)  # (both jobs under way)
        jobs = [p for p in _descendants(proc.pid) if "resource_tracker" not in _cmdline(p)]
        assert len(jobs) >= 2, "no job processes found"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in jobs) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [f"{p}: {_cmdline(p)[:200]}" for p in jobs if _alive(p)]
        assert not left, f"outlived their experiment: {left}"
    finally:
        proc.kill()
        for pid in jobs:  # a failing run must not leave its orphans training on the CI machine
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert not (out / "results.json").exists()


def test_a_grandchild_knows_its_ancestors():
    """submitit_local puts a controller between the experiment and its job: the job's watch
    must find the experiment among its ancestors, not only as its parent."""
    import subprocess
    import sys

    from robo_s2.core.process import ancestors

    inner = "from robo_s2.core.process import ancestors; print(ancestors())"
    outer = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {inner!r}])"
    out = subprocess.run([sys.executable, "-c", outer], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    chain = [int(x) for x in out.stdout.strip()[1:-1].split(",")]
    assert chain[1] == os.getpid() and chain[2:] == ancestors()
