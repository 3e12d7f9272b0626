"""No command writes over what it reads: export onto (or around) its store, compare into a source's
directory, eval merge into a shard's — each refused in one line before anything is written, with
``overwrite=true`` too (issue "Every file we read is hostile until checked", item 3)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers import robo_s2

from robo_s2.core.io import refuse_output_over_input
from robo_s2.errors import UserError


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_the_guard_resolves_real_paths(tmp_path):
    store = tmp_path / "demos" / "x.zarr"
    store.mkdir(parents=True)
    (tmp_path / "link.zarr").symlink_to(store)
    for out in (store, tmp_path / "link.zarr", tmp_path / "demos" / "." / "x.zarr"):
        with pytest.raises(UserError, match="would be its input"):
            refuse_output_over_input(out, [store], "cmd")
    with pytest.raises(UserError, match="would overlap its input"):
        refuse_output_over_input(tmp_path / "demos", [store], "cmd")  # out holds the input
    with pytest.raises(UserError, match="would overlap its input"):
        refuse_output_over_input(store / "sub.hdf5", [store], "cmd")  # out inside the input
    refuse_output_over_input(tmp_path / "demos", [store], "cmd", nested=False)  # compare's rule
    refuse_output_over_input(tmp_path / "y.zarr", [store], "cmd")  # elsewhere: fine


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("alias")
    out = robo_s2(
        "collect", f"out={work / 'demos' / 'x.zarr'}", "n_episodes=1", "workers=0",
        "env.image_size=32", f"hydra.run.dir={work / 'c'}", cwd=work,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return work / "demos" / "x.zarr"


@pytest.mark.parametrize(
    "out, fmt",
    [
        ("{store}", "dp"),
        ("{store}", "lerobot"),
        ("{demos}", "lerobot"),
        ("{store}/x.hdf5", "robomimic"),
    ],
)
def test_export_never_replaces_its_store(store, tmp_path, out, fmt):
    before = digest(store)
    target = out.format(store=store, demos=store.parent)
    proc = robo_s2(
        "export", f"store={store}", f"out={target}", f"format={fmt}", "overwrite=true",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: robo-s2 export: the output"), proc.stderr
    assert digest(store) == before


def test_compare_and_eval_merge_never_write_into_a_source(tmp_path):
    """(Hydra's own .hydra/ and log land in any run directory; the inputs stay as they were.)"""
    source = tmp_path / "exp"
    source.mkdir()
    (source / "results.json").write_text('{"rows": []}')
    proc = robo_s2("compare", f"results=[{source}]", f"hydra.run.dir={source}", cwd=tmp_path)
    assert proc.returncode == 2 and "robo-s2 compare: the output" in proc.stderr, proc.stderr
    assert (source / "results.json").read_text() == '{"rows": []}'
    assert not (source / "results.md").exists()
    shard = tmp_path / "shard0"
    shard.mkdir()
    (shard / "eval_info.json").write_text("{}")
    proc = robo_s2(
        "eval", f"merge=[{shard / 'eval_info.json'},{tmp_path / 'shard1'}]",
        f"hydra.run.dir={shard}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "robo-s2 eval merge: the output" in proc.stderr, proc.stderr
    assert (shard / "eval_info.json").read_text() == "{}"
    assert not (shard / "positions.png").exists()
