"""Faults of the machine as one line (issue 32 item 8): a read-only file system or a full disk
under the path a command writes to ends the command with exit code 2 and one ``error:`` line
naming the fault and the path, and leaves what was already there unchanged.

The fault is injected in a real ``robo-s2`` process: every way Python creates, writes, renames or
deletes a file under ``FAULT_DIR`` raises ``OSError(FAULT_ERRNO)``, as the kernel does for a
read-only mount (EROFS) or a full disk (ENOSPC: deleting and renaming still work); reading
stays possible.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import smooth_action_store

DRIVER = r"""
import builtins, errno, io, os, sys
root = os.path.realpath(os.environ["FAULT_DIR"])
code = int(os.environ["FAULT_ERRNO"])

def under(path):
    try:
        p = os.path.realpath(os.fspath(path))
    except TypeError:  # a file descriptor
        return False
    return p == root or p.startswith(root + os.sep)

def fault(path):
    raise OSError(code, os.strerror(code), os.fspath(path))

def guard_open(real):
    def opener(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and under(file):
            fault(file)
        return real(file, mode, *a, **k)
    return opener

builtins.open = io.open = guard_open(io.open)
_os_open = os.open
def os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and under(path):
        fault(path)
    return _os_open(path, flags, *a, **k)
os.open = os_open
# a full disk still lets files be deleted and renamed; a read-only mount does not
removals = ("rmdir", "unlink", "remove") if code == errno.EROFS else ()
for name in ("mkdir", *removals):
    def wrap(real):
        def f(path, *a, **k):
            if under(path):
                fault(path)
            return real(path, *a, **k)
        return f
    setattr(os, name, wrap(getattr(os, name)))
for name in ("replace", "rename") if code == errno.EROFS else ():
    def wrap2(real):
        def f(src, dst, *a, **k):
            if under(src) or under(dst):
                fault(dst if under(dst) else src)
            return real(src, dst, *a, **k)
        return f
    setattr(os, name, wrap2(getattr(os, name)))

from robo_s2.cli import main
main(sys.argv[1:])
"""


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256 of its bytes)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _faulty(cwd: Path, fault_dir: Path, code: int, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "0",
        "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        "FAULT_DIR": str(fault_dir),
        "FAULT_ERRNO": str(code),
    }
    return subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
    )


def _one_line(out: subprocess.CompletedProcess, *words: str) -> str:
    """The one ``error:`` line of a command that failed with exit code 2 (progress bars aside)."""
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


COLLECT = ["workers=0", "env.image_size=32"]


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    """A one-episode store made by ``robo-s2 collect`` (copied by each test that writes to it)."""
    from helpers import robo_s2

    root = tmp_path_factory.mktemp("collected")
    done = robo_s2("collect", f"out={root / 'demos.zarr'}", *COLLECT, "n_episodes=1", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "demos.zarr"


@pytest.mark.parametrize(
    "code, says", [(errno.EROFS, "read-only"), (errno.ENOSPC, "no space left")]
)
def test_collect_into_a_store_that_cannot_be_written_keeps_it(tmp_path, collected, code, says):
    store = tmp_path / "demos.zarr"
    shutil.copytree(collected, store)
    before = _tree(store)
    out = _faulty(
        tmp_path, store, code, "collect", f"out={store}", *COLLECT, "n_episodes=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    line = _one_line(out, says, str(store))
    assert "kept" in line
    assert _tree(store) == before


def test_train_whose_run_directory_is_read_only_is_one_line(tmp_path):
    from helpers import TINY_TRAIN_CFG

    store = smooth_action_store(tmp_path / "demos.zarr", n_episodes=4, length=8)
    mount = tmp_path / "ro"  # a read-only mount: the run directory cannot even be made in it
    mount.mkdir()
    run = mount / "run"
    out = _faulty(
        tmp_path, mount, errno.EROFS, "train", f"data.store={store}", *TINY_TRAIN_CFG,
        "train.steps=2", f"hydra.run.dir={run}",
    )  # fmt: skip
    _one_line(out, "read-only", str(run))
    assert not run.exists()


def test_export_to_a_full_disk_keeps_the_store_and_leaves_no_half_file(tmp_path):
    store = smooth_action_store(tmp_path / "demos.zarr", n_episodes=3, length=6)
    before = _tree(store)
    dest = tmp_path / "exports"
    dest.mkdir()
    # diffusion_policy's zarr layout: written by Python file calls, which the fault reaches
    # (HDF5 and parquet are written by C libraries, beyond this in-process injection)
    target = dest / "out.zarr"
    out = _faulty(
        tmp_path, dest, errno.ENOSPC, "export", f"store={store}", "format=dp",
        f"out={target}", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    _one_line(out, "no space left", str(dest))
    assert _tree(store) == before
    assert list(dest.iterdir()) == []
