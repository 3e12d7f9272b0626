"""Feature cache: correct features, keyed by encoder fingerprint, resumable, never stale."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import random_store

from robo_s2.encoders import create_encoder
from robo_s2.encoders.feature_cache import cache_status, encode_store, load_features
from robo_s2.errors import UserError

IMG = 32


def tiny_encoder(**overrides):
    torch.manual_seed(0)
    # fp32: these tests are about the cache, not precision (auto would pick bf16 on a CPU with
    # native bf16 for 64-frame passes and fp32 for 4-frame ones; tests/test_frame_cost.py)
    kwargs = dict(
        model="vit_tiny_patch16_224", pretrained=False, image_size=IMG, pooling="mean",
        precision="fp32",
    )  # fmt: skip
    return create_encoder("timm", **{**kwargs, **overrides})


def test_cached_features_equal_the_encoder_output(tmp_path):
    store = random_store(tmp_path / "s.zarr")
    enc = tiny_encoder()
    status = encode_store(store, enc, batch_size=4)
    assert status.complete and status.n_encoded_now == store.n_frames
    feats = load_features(store, enc)
    with torch.no_grad():
        expected = enc(torch.from_numpy(store.array("image")[:]).permute(0, 3, 1, 2) / 255.0)
    np.testing.assert_allclose(feats, expected.numpy(), atol=1e-5)


def test_rerun_is_a_noop_and_a_changed_encoder_gets_a_new_entry(tmp_path):
    store = random_store(tmp_path / "s.zarr")
    enc = tiny_encoder()
    encode_store(store, enc)
    assert encode_store(store, enc).n_encoded_now == 0
    other = tiny_encoder()
    with torch.no_grad():
        other.model.blocks[0].mlp.fc1.weight.add_(0.1)  # same config, other weights
    assert cache_status(store, other).key != cache_status(store, enc).key
    with pytest.raises(UserError, match="robo-s2 encode"):
        load_features(store, other)
    assert encode_store(store, other).n_encoded_now == store.n_frames
    assert not np.allclose(load_features(store, other), load_features(store, enc))


def test_interrupted_encoding_resumes_and_growth_is_encoded(tmp_path):
    store = random_store(tmp_path / "s.zarr")
    enc = tiny_encoder()

    class Stop(Exception):
        pass

    def stop_after_first(status):
        raise Stop

    with pytest.raises(Stop):
        encode_store(store, enc, batch_size=4, on_batch=stop_after_first)
    assert cache_status(store, enc).n_done == 4
    resumed = encode_store(store, enc, batch_size=4)
    assert resumed.n_encoded_now == store.n_frames - 4
    full = load_features(store, enc)
    store.append_episode(
        {
            "image": np.zeros((2, IMG, IMG, 3), np.uint8),
            "proprio": np.zeros((2, 4), np.float32),
            "action": np.zeros((2, 3), np.float32),
        }
    )
    grown = encode_store(store, enc)
    assert grown.n_encoded_now == 2
    np.testing.assert_array_equal(load_features(store, enc)[: len(full)], full)


def test_bad_inputs(tmp_path):
    store = random_store(tmp_path / "s.zarr", size=16)
    with pytest.raises(UserError, match="needs 32x32"):
        encode_store(store, tiny_encoder())  # frames smaller than the encoder input
    with pytest.raises(UserError, match="no data/image_wrist"):
        encode_store(store, tiny_encoder(), image_key="image_wrist")


def test_encode_cli(tmp_path):
    random_store(tmp_path / "s.zarr", size=64).close()
    args = [
        sys.executable, "-m", "robo_s2", "encode", f"store={tmp_path}/s.zarr", "encoder=vit_t",
        "encoder.image_size=64", "batch_size=8",
    ]  # fmt: skip
    first = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1].startswith("encode: 15 frames")
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "already has features" in again.stdout
    missing = subprocess.run(
        [*args[:4], f"store={tmp_path}/none.zarr", *args[5:]],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
