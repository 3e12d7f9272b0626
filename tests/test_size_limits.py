"""Sizes a file declares are checked before anything is allocated (issue 32 item 6): a store whose
meta/episode_ends declares 10^12 episodes, a policy config.json asking for d_model 200000 and a
tile scorer whose metadata says hidden 10^6 are one-line errors, not MemoryError tracebacks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_store, robo_s2

from robo_s2.data.store import MAX_EPISODES, DemoStore
from robo_s2.errors import UserError


def _small_store(path: Path) -> Path:
    store = DemoStore.create(path)
    for _ in range(3):
        store.append_episode(
            {"image": np.zeros((4, 8, 8, 3), np.uint8), "action": np.zeros((4, 2), np.float32)}
        )
    store.close()
    return path


def test_a_store_declaring_10e12_episodes_is_refused_before_reading(tmp_path):
    store = _small_store(tmp_path / "s.zarr")
    meta = store / "meta" / "episode_ends" / "zarr.json"
    spec = json.loads(meta.read_text())
    spec["shape"] = [10**12]
    meta.write_text(json.dumps(spec))
    with pytest.raises(
        UserError, match=f"declares 1,000,000,000,000 episodes, over the {MAX_EPISODES:,}"
    ) as err:
        DemoStore.open(store)
    assert "\n" not in str(err.value)
    out = robo_s2("train", f"data.store={store}", "encoder=oracle", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if line.startswith("error:")], out.stderr


@pytest.mark.parametrize("array", ["data/action", "data/image", "meta/episode_ends"])
def test_a_chunk_shape_of_10e9_rows_is_refused_before_reading(tmp_path, array):
    """Reading one row of a zarr array decompresses its whole chunk: a chunk declared 10^9 rows
    would allocate gigabytes (MemoryError) for a store of a few kB."""
    store = _small_store(tmp_path / "s.zarr")
    meta = store / array / "zarr.json"
    spec = json.loads(meta.read_text())
    spec["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**9
    meta.write_text(json.dumps(spec))
    with pytest.raises(UserError, match=f"{array} declares chunks of .* over the 1 GiB") as err:
        DemoStore.open(store).episode(0)
    assert "\n" not in str(err.value)


def test_a_policy_config_asking_for_a_huge_model_is_refused(tmp_path):
    from policies import create_policy, load_policy

    saved = create_policy("chunk_transformer", feature_dim=8, proprio_dim=3, action_dim=4)
    saved.save_pretrained(tmp_path / "p")
    config = tmp_path / "p" / "config.json"
    spec = json.loads(config.read_text())
    spec["d_model"] = 200_000
    config.write_text(json.dumps(spec))
    with pytest.raises(UserError, match="asks for a model of .* parameters, more than") as err:
        load_policy(tmp_path / "p")
    assert "\n" not in str(err.value)


def test_a_tile_scorer_declaring_a_huge_head_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from robo_s2.encoders.tile_scorer import (
        METADATA_KEY,
        TileScorer,
        load_tile_scorer,
        save_tile_scorer,
    )

    good = save_tile_scorer(TileScorer(48, [2, 4], 8), tmp_path / "s.safetensors",
                            {"backbone_fingerprint": "f" * 64})  # fmt: skip
    with safe_open(str(good), "pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    meta["hidden"] = 10**6
    bad = tmp_path / "bad.safetensors"
    shutil.copy(good, bad)
    save_file(tensors, str(bad), metadata={METADATA_KEY: json.dumps(meta)})
    with pytest.raises(UserError, match="asks for a model of .* parameters, more than") as err:
        load_tile_scorer(bad, "f" * 64, 48, [2, 4])
    assert "\n" not in str(err.value)
    assert isinstance(load_tile_scorer(good, "f" * 64, 48, [2, 4]), torch.nn.Module)


def test_an_hdf5_header_declaring_10e9_rows_is_refused_unread(tmp_path):
    import h5py
    from helpers import make_robomimic

    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    with h5py.File(src, "a") as f:
        del f["data/demo_0/actions"]
        f.create_dataset("data/demo_0/actions", shape=(10**9, 7), dtype="f8", chunks=(1024, 7))
    out = robo_s2("import", f"src={src}", f"out={tmp_path / 'o.zarr'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "declares shape (1000000000, 7)" in errors[0], out.stderr
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.parametrize("hostile", ["chunk of 10^9 rows", "n_done not a count"])
def test_a_feature_cache_entry_declaring_a_huge_chunk_or_a_bad_count_is_one_line(tmp_path, hostile):
    from robo_s2.encoders import create_encoder
    from robo_s2.encoders.feature_cache import cache_status, encode_store, load_features

    store_path = tmp_path / "s.zarr"
    store = random_store(store_path, size=32)
    encoder = create_encoder("vit_t", image_size=32, pooling="cls")
    status = encode_store(store, encoder, device="cpu")
    store.close()
    entry = store_path / "features" / status.key
    if hostile.startswith("chunk"):
        meta = entry / "feature" / "zarr.json"
        spec = json.loads(meta.read_text())
        spec["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**9
        meta.write_text(json.dumps(spec))
        match = "declares chunks of .* over the 1 GiB"
    else:
        meta = entry / "zarr.json"
        spec = json.loads(meta.read_text())
        spec["attributes"]["n_done"] = "12"
        meta.write_text(json.dumps(spec))
        match = "n_done='12' is not a frame count; delete .* and encode again"
    store = DemoStore.open(store_path)
    with pytest.raises(UserError, match=match) as err:
        cache_status(store, encoder)
        load_features(store, encoder)
    assert "\n" not in str(err.value)
