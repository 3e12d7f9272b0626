"""Property-based fuzzing of the readers of files a user may be handed (issue 32 item 9).

Each reader starts from a valid file and reads it after hypothesis has changed one place in it:
a value replaced by any JSON value (deep nesting and NaN included), a key deleted, a list
emptied. The property, for every such file: the reader either works or raises one
:class:`UserError` on one line, never another exception, and writes nothing outside its output.
A bounded number of examples runs in the default suite (``FUZZ_EXAMPLES``); set
``ROBO_S2_FUZZ_EXAMPLES`` for a longer run (``pytest -m slow tests/test_fuzz_long.py`` runs 500).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robo_s2.errors import UserError

FUZZ_EXAMPLES = int(os.environ.get("ROBO_S2_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip

SLOWER_FUZZ = settings(FUZZ, max_examples=max(3, FUZZ_EXAMPLES // 3))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document, as a key path (of a long list only the first two items
    and the last, so that a 625-number RNG state does not take most of the examples)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i in sorted({0, 1, len(doc) - 1} & set(range(len(doc)))):
            out += _paths(doc[i], (*prefix, i))
    return out


class Mutated:
    """A mutated document; its repr (what hypothesis prints for a failing example) says what was
    changed where, since the document itself may nest too deep to print."""

    def __init__(self, doc: Any, what: str) -> None:
        self.doc, self.what = doc, what

    def __repr__(self) -> str:
        return self.what


@st.composite
def mutated(draw: Any, doc: Any) -> Mutated:
    """``doc`` with one place changed: replaced, deleted, emptied or buried in deep nesting."""
    doc = copy.deepcopy(doc)
    path = draw(st.sampled_from(_paths(doc)))
    op = draw(st.sampled_from(["replace", "delete", "empty", "nest"]))
    if not path:
        if op == "nest":
            return Mutated([[[[[[[[doc]]]]]]]], "the whole document nested 8 deep")
        value = draw(json_values)
        return Mutated(value, f"the whole document replaced by {value!r}")
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    where = "/".join(map(str, path))
    if op == "replace":
        parent[key] = draw(json_values)
        what = f"{where} replaced by {parent[key]!r}"
    elif op == "delete":
        del parent[key]
        what = f"{where} deleted"
    elif op == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], dict | list) else ""
        what = f"{where} emptied"
    else:
        value = parent[key]
        depth = draw(st.integers(min_value=1, max_value=2000))
        for _ in range(depth):
            value = [value]
        parent[key] = value
        what = f"{where} nested {depth} lists deep"
    return Mutated(doc, what)


def _dump(doc: Any) -> str:
    try:
        return json.dumps(doc)
    except RecursionError:  # deeper than json can write: the file is then a truncated one
        return "[" * 5000


def one_line_or_fine(fn: Any) -> None:
    """The property: ``fn()`` works or raises a one-line UserError."""
    try:
        fn()
    except UserError as e:
        assert "\n" not in str(e).strip(), str(e)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- robo-s2 compare: results.json ------------------------------------------------------------


def _results(label: str) -> dict[str, Any]:
    runs = [
        {"row": label, "seed": s, "run_dir": f"runs/{label}/seed{s}", "n_success": 3,
         "n_episodes": 4, "train_seconds": 1.0, "eval_seconds": 2.0, "val_ratio": 0.5,
         "reused": False, "episodes": "1101"}
        for s in (0, 1)
    ]  # fmt: skip
    return {
        "name": "fuzz",
        "rows": [{"label": label, "encoder": "vit_t", "params": 5_000_000, "gflops": 0.3,
                  "feature_dim": 192, "runs": runs, "reference": None, "note": ""}],
        "setup": {"demos": {"store": "demos.zarr", "n_episodes": 4}, "eval": {"seed": 1},
                  "train_overrides": []},
        "provenance": {}, "protocol": "",
    }  # fmt: skip


@FUZZ
@given(data=st.data())
def test_compare_reads_any_results_json_to_a_table_or_one_line(tmp_path, data):
    from robo_s2.experiments.compare import run_compare

    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    (good / "results.json").write_text(json.dumps(_results("A")))
    (bad / "results.json").write_text(_dump(data.draw(mutated(_results("B"))).doc))
    before = {d: _tree(d) for d in (good, bad)}
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(
        lambda: run_compare([str(good), str(bad)], out, rows=[], name="fuzz", title="fuzz", vary=[])
    )
    assert {d: _tree(d) for d in (good, bad)} == before  # the sources are never written


# --- robo-s2 eval merge=: shard eval_info.json ----------------------------------------------------


def _shard(index: int) -> dict[str, Any]:
    same = {"checkpoint": "ck", "policy": {}, "policy_config": {}, "execution": {},
            "encoder": "vit_t", "render_profile": "default", "image_key": "image",
            "train_step": 10, "expert": None, "positions": {"n": 4, "name": "random"},
            "env": {}, "env_overrides": {}}  # fmt: skip
    return {
        **same, "shard": {"index": index, "count": 2},
        "per_episode": [{"index": 2 * index + j, "success": j == 0, "steps": 10 + j} for j in (0, 1)],
        "eval_s": 1.0, "rollout_s": 0.5, "startup_s": 0.1, "env_steps": 21, "workers": 1,
        "video_paths": [],
    }  # fmt: skip


@FUZZ
@given(data=st.data())
def test_shard_merge_reads_any_eval_info_to_a_merge_or_one_line(tmp_path, data):
    from robo_s2.evaluation.shards import merge_eval_infos

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir(exist_ok=True)
    (a / "eval_info.json").write_text(json.dumps(_shard(0)))
    (b / "eval_info.json").write_text(_dump(data.draw(mutated(_shard(1))).doc))
    one_line_or_fine(lambda: merge_eval_infos([a, b]))


# --- robo-s2 import format=lerobot: meta/info.json and the episode list ---------------------------


@pytest.fixture(scope="module")
def lerobot_export(tmp_path_factory):
    from robo_s2.data.interop.lerobot import export_lerobot
    from robo_s2.data.store import DemoStore

    root = tmp_path_factory.mktemp("lerobot_fuzz")
    rng = np.random.default_rng(0)
    store = DemoStore.create(root / "s.zarr", attrs={"control_hz": 10, "task": "pick"})
    for n in (3, 4):
        store.append_episode({
            "image": rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8),
            "proprio": rng.standard_normal((n, 3)).astype(np.float32),
            "action": rng.standard_normal((n, 2)).astype(np.float32),
        })  # fmt: skip
    store.close()
    export_lerobot(root / "s.zarr", root / "lr", video=False)
    return root / "lr"


@FUZZ
@given(data=st.data())
def test_lerobot_import_reads_any_info_json_to_a_store_or_one_line(tmp_path, lerobot_export, data):
    from robo_s2.data.interop.lerobot import import_lerobot

    src = tmp_path / "lr"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(lerobot_export, src)
    info = json.loads((src / "meta/info.json").read_text())
    (src / "meta/info.json").write_text(_dump(data.draw(mutated(info)).doc))
    (src / "meta/robo_s2.json").unlink()  # a dataset of theirs: nothing of ours to lean on
    out = tmp_path / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(lambda: import_lerobot(src, out))


@FUZZ
@given(data=st.data())
def test_lerobot_import_reads_any_episode_list_to_a_store_or_one_line(
    tmp_path, lerobot_export, data
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robo_s2.data.interop.lerobot import import_lerobot

    src = tmp_path / "lr"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(lerobot_export, src)
    path = src / "meta/episodes/chunk-000/file-000.parquet"
    keep = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
    rows = pq.read_table(path, columns=keep).to_pylist()
    changed = data.draw(mutated(rows)).doc
    try:
        table = pa.Table.from_pylist(changed) if isinstance(changed, list) else None
    except (
        pa.ArrowException,
        AttributeError,
        TypeError,
        ValueError,
        OverflowError,
        RecursionError,
    ):
        table = None  # not a table parquet can hold: the file becomes garbage instead
    if table is None:
        path.write_bytes(b"PAR1 not a parquet file")
    else:
        pq.write_table(table, path)
    out = tmp_path / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(lambda: import_lerobot(src, out))


# --- robo-s2 train resume=: the training state's JSON header ----------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 2-step run of the tiny policy on a synthetic store (its features cached)."""
    from helpers import smooth_action_store, train_cfg

    from robo_s2.training.trainer import train

    root = tmp_path_factory.mktemp("train_fuzz")
    store = smooth_action_store(root / "s.zarr", n_episodes=4, length=6)
    cfg = train_cfg(store, "train.steps=2", "train.save_every=2", "train.eval_every=0")
    train(cfg, root / "run")
    return store, root / "run"


def _rewrite_state_header(path: Path, header: str) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    save_file(tensors, str(path), metadata={**meta, "state": header})


@FUZZ
@given(data=st.data())
def test_train_resumes_from_any_training_state_header_or_says_one_line(
    tmp_path, trained_run, one_torch_thread, data
):
    from helpers import train_cfg
    from safetensors import safe_open

    from robo_s2.training.trainer import train

    store, run = trained_run
    src = tmp_path / "src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(run, src)
    state = src / "checkpoints/last/training_state.safetensors"
    with safe_open(str(state), framework="pt") as f:
        header = json.loads(f.metadata()["state"])
    _rewrite_state_header(state, _dump(data.draw(mutated(header)).doc))
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    before = _tree(src)
    cfg = train_cfg(store, "train.steps=3", "train.save_every=3", "train.eval_every=0")
    cfg.resume_from = str(src)
    one_line_or_fine(lambda: train(cfg, out))
    assert _tree(src) == before  # the run resumed from is never written


# --- a robo_s2 store's attributes (zarr.json), read by train and every export ----------------------

REAL_ATTRS = {
    "env": {"id": "robo_s2/CubePick-v0", "entry_point": "envs.cube_pick:CubePickEnv",
            "image_size": 64, "cameras": ["front"], "cube_size": 0.04, "control_hz": 10.0,
            "max_episode_steps": 120},
    "control_hz": 10.0,
    "action_semantics": ["a", "b", "g"],
    "proprio_semantics": ["t", "x", "y"],
    "cameras": ["front"],
    "source": "robo_s2 collect (scripted expert)",
    "collect": {"seed": 0, "expert": {"noise_std": 0.05}, "keep_failed": False,
                "placement": "random"},
    "robo_s2_version": "0.1.0",
    "created": "2026-12-07T12:27:35+00:00",
    "collect_progress": {"seed": 0, "placement": "random", "cells": None, "next_attempt": 4,
                         "attempts": 4, "discarded": 0},
}  # fmt: skip


@pytest.fixture(scope="module")
def attrs_store(tmp_path_factory):
    from helpers import smooth_action_store

    from robo_s2.data.store import DemoStore

    path = smooth_action_store(tmp_path_factory.mktemp("attrs_fuzz") / "s.zarr", 4, 6)
    store = DemoStore.open(path, mode="a")
    store.update_attrs(REAL_ATTRS)
    store.close()
    return path


def _set_root_attrs(store: Path, attrs_text: str) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    text = json.dumps({k: v for k, v in meta.items() if k != "attributes"})
    (store / "zarr.json").write_text(text[:-1] + ', "attributes": ' + attrs_text + "}")


@pytest.fixture(scope="module")
def export_cfg():
    """``robo-s2 export``'s composed config per format, as the command passes it on."""
    from hydra import compose, initialize_config_dir

    from robo_s2.core.config import to_plain
    from robo_s2.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return {
            fmt: to_plain(compose("export", overrides=[f"format={fmt}", "store=s", "out=o"]))
            for fmt in ("robomimic", "dp", "lerobot")
        }


@SLOWER_FUZZ  # each example trains a step and exports three ways (~3 s)
@given(data=st.data())
def test_train_and_export_read_any_store_attributes_or_say_one_line(
    tmp_path, attrs_store, export_cfg, one_torch_thread, data
):
    from helpers import train_cfg

    from robo_s2.data.interop.base import FORMATS
    from robo_s2.training.trainer import train

    store = tmp_path / "s.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(attrs_store, store)
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    _set_root_attrs(store, _dump(data.draw(mutated(attrs)).doc))
    before = _tree(store)
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cfg = train_cfg(store, "train.steps=1", "train.eval_every=0")
    one_line_or_fine(lambda: train(cfg, out / "run"))
    for fmt, name in (("robomimic", "x.hdf5"), ("dp", "x.zarr"), ("lerobot", "lr")):
        export = partial(FORMATS[fmt].function(f"export_{fmt}"), store, out / name)
        one_line_or_fine(lambda: export(**FORMATS[fmt].function("export_options")(export_cfg[fmt])))  # noqa: B023
    after = {k: v for k, v in _tree(store).items() if not k.startswith("features/")}
    assert after == before  # its demos and attributes are read, never written (train caches
    # features beside them, by design)


# --- robo-s2 eval checkpoint=: the checkpoint's robo_s2.json and the policy's config.json ----------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from helpers import tiny_policy_checkpoint

    return tiny_policy_checkpoint(tmp_path_factory.mktemp("eval_fuzz") / "best")


@SLOWER_FUZZ  # each example may roll out an episode (~2 s)
@given(data=st.data(), name=st.sampled_from(["robo_s2.json", "config.json"]))
def test_eval_reads_any_checkpoint_metadata_or_says_one_line(
    tmp_path, checkpoint, one_torch_thread, data, name
):
    from robo_s2.evaluation.runner import evaluate

    os.environ.setdefault("MUJOCO_GL", "egl")
    src = tmp_path / "best"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(checkpoint, src)
    doc = json.loads((src / name).read_text())
    (src / name).write_text(_dump(data.draw(mutated(doc)).doc))
    before = _tree(src)
    out = tmp_path / "out"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(
        lambda: evaluate(src, n_episodes=1, positions="random", workers=0, n_videos=0,
                         env_overrides={"max_episode_steps": 5}, out_dir=out)
    )  # fmt: skip
    assert _tree(src) == before  # the checkpoint is read, never written


# --- robo-s2 experiment cells=: a committed cell's cell.json and records.json.gz -------------------


def _cell(tmp: Path) -> tuple[Path, dict[str, Any]]:
    from robo_s2.experiments.cells import write_cell

    key = {"row": {"label": "A"}, "seed": 0}
    per_episode = [
        {"index": i, "seed": 100 + i, "cube_pos": [0.5, 0.0, 0.02], "cube_yaw": 0.0,
         "success": i != 1, "steps": 30, "max_lift": 0.1}
        for i in range(3)
    ]  # fmt: skip
    outcome = {"row": "A", "seed": 0, "n_success": 2, "n_episodes": 3, "train_seconds": 1.0,
               "eval_seconds": 2.0, "val_ratio": 0.5, "episodes": "101"}  # fmt: skip
    directory = tmp / "cells" / "A" / "seed0"
    write_cell(directory, key, "ab" * 32, outcome, per_episode, {"commit": "c"}, {"shadows": True})
    return directory, key


@FUZZ
@given(data=st.data(), name=st.sampled_from(["cell.json", "records.json.gz"]))
def test_committed_cells_read_back_or_say_one_line(tmp_path, data, name):
    import gzip

    from robo_s2.experiments.cells import read_cell, read_records

    shutil.rmtree(tmp_path / "cells", ignore_errors=True)
    directory, key = _cell(tmp_path)
    path = directory / name
    if name == "cell.json":
        path.write_text(_dump(data.draw(mutated(json.loads(path.read_text()))).doc))
    else:
        doc = json.loads(gzip.decompress(path.read_bytes()))
        path.write_bytes(gzip.compress(_dump(data.draw(mutated(doc)).doc).encode()))
    before = _tree(directory)
    one_line_or_fine(lambda: read_cell(directory, key, "ab" * 32, {"shadows": True}))
    one_line_or_fine(lambda: read_records(directory))
    assert _tree(directory) == before


# --- an s2_select encoder's tile_scorer: the scorer file's metadata ---------------------------------


@FUZZ
@given(data=st.data())
def test_tile_scorer_loads_from_any_metadata_or_says_one_line(tmp_path, data):
    from robo_s2.encoders.tile_scorer import (
        METADATA_KEY,
        TileScorer,
        load_tile_scorer,
        save_tile_scorer,
    )
    from robo_s2.safe_io import read_safetensors, write_safetensors

    path = tmp_path / "tile_scorer.safetensors"
    save_tile_scorer(TileScorer(8, [2], hidden=4), path, {"backbone_fingerprint": "fp"})
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
    text = _dump(data.draw(mutated(meta)).doc)
    write_safetensors(path, read_safetensors(path, "scorer"), {METADATA_KEY: text})
    one_line_or_fine(lambda: load_tile_scorer(path, "fp", 8, [2]))


# --- robo-s2 import of robomimic HDF5: data.attrs['env_args'] and the demos' attributes ------------


@FUZZ
@given(data=st.data(), where=st.sampled_from(["env_args", "num_samples", "total"]))
def test_robomimic_import_reads_any_attributes_to_a_store_or_one_line(tmp_path, data, where):
    import h5py
    from helpers import ROBOMIMIC_ENV_ARGS, make_robomimic

    from robo_s2.data.interop.robomimic_hdf5 import import_robomimic

    src = tmp_path / "lift.hdf5"
    src.unlink(missing_ok=True)
    make_robomimic(src, {"demo_0": 3, "demo_1": 4})
    with h5py.File(src, "a") as f:
        if where == "env_args":
            f["data"].attrs["env_args"] = _dump(data.draw(mutated(ROBOMIMIC_ENV_ARGS)).doc)
        else:
            node = f["data"] if where == "total" else f["data/demo_1"]
            value = data.draw(json_values)
            try:
                node.attrs[where] = value
            except (TypeError, ValueError, OverflowError):
                node.attrs[where] = json.dumps(value)  # what h5py cannot store as is, as text
    before = src.read_bytes()
    out = tmp_path / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(lambda: import_robomimic(src, out))
    assert src.read_bytes() == before  # the source is read, never written


# --- robo-s2 import of a v2.1 LeRobotDataset: meta/episodes.jsonl and meta/tasks.jsonl --------------


@pytest.fixture(scope="module")
def lerobot_v21_export(tmp_path_factory, lerobot_export):
    from robo_s2.data.interop.lerobot import export_lerobot

    root = lerobot_export.parent
    export_lerobot(root / "s.zarr", root / "lr21", video=False, version="2.1")
    return root / "lr21"


@FUZZ
@given(data=st.data(), name=st.sampled_from(["episodes.jsonl", "tasks.jsonl"]))
def test_lerobot_v21_import_reads_any_jsonl_to_a_store_or_one_line(
    tmp_path, lerobot_v21_export, data, name
):
    from robo_s2.data.interop.lerobot import import_lerobot

    src = tmp_path / "lr"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(lerobot_v21_export, src)
    (src / "meta/robo_s2.json").unlink(missing_ok=True)
    path = src / "meta" / name
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    changed = data.draw(mutated(rows)).doc
    lines = changed if isinstance(changed, list) else [changed]
    path.write_text("".join(_dump(line) + "\n" for line in lines))
    out = tmp_path / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    one_line_or_fine(lambda: import_lerobot(src, out))


# --- the property at the command line: exit code 2, one error line, nothing written elsewhere -------


def _hostile_store(tmp: Path, attrs_store: Path) -> list[str]:
    store = tmp / "s.zarr"
    shutil.copytree(attrs_store, store)
    attrs = json.loads((store / "zarr.json").read_text())["attributes"]
    _set_root_attrs(store, json.dumps({**attrs, "control_hz": [10]}))
    return ["train", f"data.store={store}", "train.steps=1"]


def _hostile_checkpoint(tmp: Path, checkpoint: Path) -> list[str]:
    ckpt = tmp / "best"
    shutil.copytree(checkpoint, ckpt)
    meta = json.loads((ckpt / "robo_s2.json").read_text())
    meta["env"]["id"] = ["robo_s2/CubePick-v0"]
    (ckpt / "robo_s2.json").write_text(json.dumps(meta))
    return ["eval", f"checkpoint={ckpt}", "n_episodes=1", "workers=0", "n_videos=0"]


def _hostile_robomimic(tmp: Path, _: Path) -> list[str]:
    import h5py
    from helpers import make_robomimic

    src = tmp / "lift.hdf5"
    make_robomimic(src, {"demo_0": 3})
    with h5py.File(src, "a") as f:
        f["data"].attrs["env_args"] = json.dumps({"env_name": "Lift", "env_kwargs": [1, 2]})
    return ["import", f"src={src}", f"out={tmp / 'o.zarr'}"]


@pytest.mark.parametrize(
    "hostile, fixture",
    [(_hostile_store, "attrs_store"), (_hostile_checkpoint, "checkpoint"),
     (_hostile_robomimic, "attrs_store")],
    ids=["store attributes", "checkpoint metadata", "robomimic env_args"],
)  # fmt: skip
def test_a_hostile_file_is_exit_code_2_and_one_error_line(tmp_path, request, hostile, fixture):
    from helpers import robo_s2

    inputs = tmp_path / "in"
    inputs.mkdir()
    args = hostile(inputs, request.getfixturevalue(fixture))
    before = _tree(inputs)
    out = robo_s2(*args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert _tree(inputs) == before  # the inputs are untouched
    written = {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"in", "run_out"}, written  # nothing outside the run directory
