"""Weights load strictly or not at all, and every bad file or input is one clear line.

Covers the audit: timm weights under a wrapper prefix or with tensors missing (once 0 of 150 and
136 of 150 tensors loaded without an error), a ViT-S state dict loaded as ViT-T, garbage and
truncated files, timm's own weights with the wrong pixel statistics, bf16 and 0-255 float frames,
an empty store, unknown config-group options and ``+key`` additions the config does not have.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import robo_s2
from safetensors.torch import save_file

from robo_s2.data.store import DemoStore
from robo_s2.encoders import create_encoder, to_float_images
from robo_s2.errors import UserError
from robo_s2.safe_io import load_state, save_state

IMG = 32
TINY_VIT = {"model": "vit_tiny_patch16_224", "image_size": IMG, "pretrained": True}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def one_line(out: subprocess.CompletedProcess, *words: str) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def vit_t() -> dict[str, torch.Tensor]:
    """timm's ViT-Ti at 32 px with a classifier head (150 backbone tensors + head)."""
    torch.manual_seed(1)
    net = timm.create_model("vit_tiny_patch16_224", img_size=IMG, num_classes=10)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def timm_enc(path: Path, **kw):
    return create_encoder("timm", **TINY_VIT, weights=str(path), **kw)


def test_every_tensor_loads_and_the_count_is_logged(tmp_path, vit_t, caplog):
    path = tmp_path / "vit.safetensors"
    save_file(vit_t, str(path))
    with caplog.at_level(logging.INFO, logger="robo_s2.weights"):
        enc = timm_enc(path)
    own = enc.model.state_dict()
    assert len(own) == 150 and all(torch.equal(own[k], vit_t[k]) for k in own)
    assert "loaded 150/150 tensors" in caplog.text and "left unused 2 classifier" in caplog.text


@pytest.mark.parametrize("prefix", ["encoder.", "module.", "model.", "module.encoder."])
def test_known_wrapper_prefixes_are_stripped_and_load_fully(tmp_path, vit_t, prefix):
    path = tmp_path / "wrapped.pth"
    torch.save({f"{prefix}{k}": v for k, v in vit_t.items()}, path)
    own = timm_enc(path).model.state_dict()
    assert all(torch.equal(own[k], vit_t[k]) for k in own)


def test_a_file_missing_tensors_is_refused(tmp_path, vit_t):
    partial = {k: v for k, v in vit_t.items() if not k.startswith(("norm.", "blocks.11."))}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(UserError) as err:
        timm_enc(path)
    msg = str(err.value)
    assert "\n" not in msg and "could not be loaded from" in msg
    assert "missing keys [blocks.11." in msg and "+10 more" in msg  # 14 missing of 150


def test_unknown_keys_are_refused(tmp_path, vit_t):
    path = tmp_path / "renamed.pth"
    torch.save({f"backbone.{k}": v for k, v in vit_t.items()}, path)  # not a known prefix
    with pytest.raises(UserError, match=r"missing keys \[cls_token.*unexpected keys \[backbone"):
        timm_enc(path)


def test_a_vit_s_state_dict_as_vit_t_names_the_mismatch_and_the_architecture(tmp_path):
    torch.manual_seed(0)
    vit_s = timm.create_model("vit_small_patch16_224", img_size=IMG, num_classes=0)
    path = tmp_path / "vit_s.pth"
    torch.save({"model": vit_s.state_dict()}, path)
    with pytest.raises(UserError) as err:
        timm_enc(path)
    msg = str(err.value)
    assert "shape mismatches cls_token: file (1, 1, 384) vs model (1, 1, 192)" in msg
    assert "looks like a ViT of width 384, depth 12, patch 16 (timm: vit_small_patch16_224)" in msg


def test_position_table_of_another_size_is_resampled(tmp_path, vit_t):
    path = tmp_path / "vit32.pth"
    torch.save(vit_t, path)
    enc = create_encoder("timm", **{**TINY_VIT, "image_size": 64}, weights=str(path))
    assert enc.model.pos_embed.shape == (1, 17, 192)


@pytest.mark.parametrize("kind", ["garbage", "truncated_pth", "truncated_safetensors"])
def test_corrupt_weights_files_are_one_line(tmp_path, vit_t, kind):
    path = tmp_path / ("w.safetensors" if kind.endswith("safetensors") else "w.pth")
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4000))
    elif kind == "truncated_pth":
        torch.save(vit_t, path)
        path.write_bytes(path.read_bytes()[:20_000])
    else:
        save_file(vit_t, str(path))
        path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(UserError) as err:
        timm_enc(path)
    msg = str(err.value)
    assert str(path) in msg and "re-save or delete it" in msg and "\n" not in msg
    assert "weights_only" not in msg  # never advice to turn the safety off


def test_timm_weights_with_other_pixel_statistics_need_normalize_model(tmp_path, vit_t):
    # timm's own loading path (pretrained=true without weights=); here fed from a local file
    path = tmp_path / "timm.pth"
    torch.save(vit_t, path)
    kwargs = {"pretrained_cfg_overlay": {"file": str(path)}}
    cfg = {**TINY_VIT, "model_kwargs": kwargs}
    with pytest.raises(UserError, match="mean = std|mean \\(0.5, 0.5, 0.5\\).*normalize=model"):
        create_encoder("timm", **cfg)
    enc = create_encoder("timm", **cfg, normalize="model")
    assert enc.pixel_mean.flatten().tolist() == [0.5, 0.5, 0.5]
    # and a partial file through timm's path is refused as well (timm only logs missing keys)
    partial = {k: v for k, v in vit_t.items() if not k.startswith("norm.")}
    torch.save(partial, path)
    with pytest.raises(UserError, match="could not load pretrained weights .* fully"):
        create_encoder("timm", **cfg, normalize="model")


def test_frames_bf16_and_0_255_floats(one_torch_thread):
    x = torch.rand(2, 3, 8, 8)
    out = to_float_images(x.to(torch.bfloat16))
    assert out.dtype == torch.float32 and torch.allclose(out, x, atol=1e-2)
    with pytest.raises(UserError, match=r"in \[0,1\], got values up to 255"):
        to_float_images(x * 0 + 255.0)
    enc = create_encoder("timm", model="vit_tiny_patch16_224", image_size=16)
    with torch.no_grad():
        assert enc(torch.rand(1, 3, 16, 16).to(torch.bfloat16)).shape == (1, 192)


def test_state_files_round_trip_and_refuse_damage(tmp_path):
    import random

    state = {
        "step": 3, "t": torch.arange(4.0), "empty": torch.zeros(0), "tuple": (1, 2.5, None),
        "int_keys": {0: {"exp_avg": torch.ones(2)}, 7: "x"}, "nan": float("nan"),
        "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
        "__dunder": True,
    }  # fmt: skip
    path = save_state(tmp_path / "s.safetensors", state)
    back = load_state(path)
    assert (
        back["step"] == 3 and torch.equal(back["t"], state["t"]) and back["tuple"] == (1, 2.5, None)
    )
    assert set(back["int_keys"]) == {0, 7} and torch.equal(
        back["int_keys"][0]["exp_avg"], torch.ones(2)
    )
    assert back["python_rng"] == state["python_rng"] and back["__dunder"] is True
    np.random.set_state(back["numpy_rng"])
    a = np.random.rand(3)
    np.random.set_state(state["numpy_rng"])
    assert np.array_equal(a, np.random.rand(3))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated or corrupt.*re-save or delete it"):
        load_state(path)


# ------------------------------------------------------------------------------------------------
# the CLI: one line each


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("empty") / "e.zarr"
    DemoStore.create(path, attrs={"env": {"id": "synthetic"}}).close()
    return path


def test_encode_on_an_empty_store_is_an_error(tmp_path, empty_store):
    out = robo_s2("encode", f"store={empty_store}", "encoder=vit_t", cwd=tmp_path)
    one_line(out, "has no episodes to encode")


@pytest.mark.parametrize(
    "override, words",
    [
        ("encoder=vit_tt", ["unknown encoder 'vit_tt'", "did you mean vit_t", "vit_t_s2"]),
        ("policy=mpl", ["unknown policy 'mpl'", "available: chunk_transformer, mlp"]),
        ("+train.stepz=5", ["'train' has no key 'stepz'", "did you mean train.steps"]),
    ],
)
def test_bad_overrides_are_one_line(tmp_path, override, words):
    one_line(robo_s2("train", override, "--cfg", "job", cwd=tmp_path), *words)


def test_additions_that_exist_or_are_checked_downstream_pass(tmp_path):
    out = robo_s2(
        "train", "++train.steps=7", "+encoder.model_kwargs.drop_path_rate=0.1", "--cfg", "job",
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "steps: 7" in out.stdout and "drop_path_rate: 0.1" in out.stdout


def test_a_truncated_policy_file_at_eval_is_one_line(tmp_path):
    from envs import ENV_ID
    from policies import create_policy
    from robo_s2.training.checkpoint import save_checkpoint

    enc = create_encoder("vit_t", image_size=IMG)
    policy = create_policy("mlp", feature_dim=enc.feature_dim, proprio_dim=2, action_dim=3)
    meta = {"env": {"id": ENV_ID, "kwargs": {"image_size": IMG}}}
    ckpt = save_checkpoint(tmp_path / "ckpt", policy, enc, meta)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = robo_s2("eval", f"checkpoint={ckpt}", "positions=random", "n_episodes=1",
                  "workers=0", "n_videos=0", cwd=tmp_path)  # fmt: skip
    one_line(out, str(weights), "re-save or delete it")
