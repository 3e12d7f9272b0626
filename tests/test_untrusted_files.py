"""Files are data, never code: planted pickles in every place robo_s2 loads a file from.

Each payload's ``__reduce__`` calls ``open(marker, "w")``: unpickling it creates the marker file.
Every case runs the real command (``python -m robo_s2 ...``) and asserts that the marker does not
exist afterwards, that the command exits non-zero, and that it says why in one line. Where a flag
of the user's can allow the load (``encoder.trust_weights=true``), a positive control shows that
the payload is live: with the flag the marker appears.
"""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import make_pusht, make_robomimic, robo_s2
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from robo_s2.data.store import DemoStore
from robo_s2.paths import config_dir

IMG = 32
EVAL_ONE = ["positions=random", "n_episodes=1", "workers=0", "n_videos=0"]


class Payload:
    """Unpickling this creates ``marker`` (it stands for any code an attacker would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def refused(out: subprocess.CompletedProcess, marker: Path, *words: str) -> str:
    """The command failed with one error line (containing ``words``) and ran nothing."""
    assert not marker.exists(), "the planted pickle ran"
    assert out.returncode != 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A two-episode store of random 32 px frames."""
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    rng = np.random.default_rng(0)
    s = DemoStore.create(path, attrs={"env": {"id": "synthetic"}})
    for _ in range(2):
        s.append_episode(
            {
                "image": rng.integers(0, 256, (6, IMG, IMG, 3), dtype=np.uint8),
                "action": rng.standard_normal((6, 3)).astype(np.float32),
                "proprio": rng.standard_normal((6, 2)).astype(np.float32),
            }
        )
    s.close()
    return path


# ------------------------------------------------------------------------------------------------
# encoder weights: MVP .pth, timm weights files, pre-training output


@pytest.mark.parametrize(
    "encoder, wrap",
    [
        ("mvp_s", lambda p: {"model": p}),  # an MVP checkpoint
        ("mae_t", lambda p: {"model": p, "robo_s2": {"epoch": 1}}),  # robo-s2 pretrain's output
        ("vit_t", lambda p: p),  # a timm weights file
    ],
)
def test_weights_files_that_need_pickle_are_refused(tmp_path, marker, store, encoder, wrap):
    evil = tmp_path / "weights.pth"
    torch.save(wrap(Payload(marker)), evil)
    args = ["encode", f"store={store}", f"encoder={encoder}", f"encoder.weights={evil}"]
    if encoder == "vit_t":
        args.append("encoder.pretrained=true")
    line = refused(robo_s2(*args, cwd=tmp_path), marker, str(evil), "encoder.trust_weights=true")
    assert "run code" in line and "weights_only=False" not in line
    # the user's word (and only that) loads it: the payload is live
    if encoder == "mvp_s":  # on the command line
        out = robo_s2(*args, "encoder.trust_weights=true", cwd=tmp_path)
        assert marker.exists() and out.returncode != 0
    else:  # in Python
        from robo_s2.encoders import create_encoder
        from robo_s2.errors import UserError
        from robo_s2.safe_io import trusted_weights

        with trusted_weights(), pytest.raises(UserError):
            create_encoder(encoder, weights=str(evil), pretrained=True)
        assert marker.exists()


def test_piip_branch_weights_that_need_pickle_are_refused(tmp_path, marker):
    from robo_s2.encoders import create_encoder
    from robo_s2.errors import UserError

    evil = tmp_path / "branch.pth"
    torch.save({"model": Payload(marker)}, evil)
    branches = [
        {"model": "vit_tiny_patch16_224", "weights": str(evil)},
        {"model": "vit_small_patch16_224"},
    ]
    with pytest.raises(UserError, match="encoder.trust_weights=true"):
        create_encoder("piip_ts_tiny", branches=branches)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# checkpoints: robo_s2.json edited, config.yaml planted


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A real checkpoint directory (random-init ViT-T and an MLP policy), as train writes one."""
    from envs import ENV_ID
    from policies import create_policy
    from robo_s2.encoders import create_encoder
    from robo_s2.training.checkpoint import save_checkpoint

    enc = create_encoder("vit_t", image_size=IMG)
    policy = create_policy("mlp", feature_dim=enc.feature_dim, proprio_dim=2, action_dim=3)
    meta = {"env": {"id": ENV_ID, "kwargs": {"image_size": IMG}}, "image_key": "image"}
    return save_checkpoint(tmp_path / "ckpt", policy, enc, meta, config={"seed": 0})


def _edit_meta(ckpt: Path, **encoder_config) -> None:
    meta = json.loads((ckpt / "robo_s2.json").read_text())
    meta["encoder"]["config"] = encoder_config
    (ckpt / "robo_s2.json").write_text(json.dumps(meta))


def test_a_checkpoint_cannot_trust_its_own_weights(tmp_path, marker, checkpoint):
    evil = tmp_path / "mvp.pth"
    torch.save({"model": Payload(marker)}, evil)
    _edit_meta(
        checkpoint, name="mvp", arch="vit_s16", weights=str(evil), trust_checkpoint=True,
        trust_weights=True, pooling="cls",
    )  # fmt: skip
    args = ["eval", f"checkpoint={checkpoint}", *EVAL_ONE]
    refused(robo_s2(*args, cwd=tmp_path), marker, str(evil), "encoder.trust_weights=true")
    out = robo_s2(*args, "trust_weights=true", cwd=tmp_path)  # the user's word: it loads
    assert marker.exists() and out.returncode != 0


def test_a_checkpoint_config_cannot_instantiate(tmp_path, marker, checkpoint):
    _edit_meta(
        checkpoint, name="timm", model="vit_tiny_patch16_224", _target_="builtins.open",
        _args_=[str(marker), "w"],
    )  # fmt: skip
    (checkpoint / "config.yaml").write_text(
        f"_target_: builtins.open\n_args_: ['{marker}', 'w']\n"
        f"x: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    )
    args = ["eval", f"checkpoint={checkpoint}", *EVAL_ONE]
    refused(robo_s2(*args, cwd=tmp_path), marker, "_target_")


# ------------------------------------------------------------------------------------------------
# training state (train and pretrain resume), saved run configs


def _run_dir(tmp_path: Path, command: str, store: Path) -> Path:
    """A run directory as ``robo-s2 <command>`` leaves it: checkpoints/last/config.yaml."""
    last = tmp_path / "theirs" / "checkpoints" / "last"
    last.mkdir(parents=True)
    key = "data.store" if command == "train" else "images"
    value = str(store) if command == "train" else f"[{store}]"
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(command, overrides=[f"{key}={value}"])
    (last / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return tmp_path / "theirs"


@pytest.mark.parametrize("command", ["train", "pretrain"])
@pytest.mark.parametrize("name", ["training_state.pt", "training_state.safetensors"])
def test_a_pickled_training_state_is_never_loaded(tmp_path, marker, store, command, name):
    run = _run_dir(tmp_path, command, store)
    state = run / "checkpoints" / "last" / name
    torch.save({"version": 1, "step": 3, "rng": Payload(marker)}, state)
    out = robo_s2(command, f"resume_from={run}", cwd=tmp_path)
    words = ["old pickle format"] if name.endswith(".pt") else ["re-save or delete it"]
    refused(out, marker, str(state), *words)


def test_yaml_tags_in_a_saved_run_config_do_not_run(tmp_path, marker, store):
    run = _run_dir(tmp_path, "train", store)
    last = run / "checkpoints" / "last"
    (last / "training_state.safetensors").write_bytes(b"")
    config = last / "config.yaml"
    config.write_text(
        config.read_text() + f"evil: !!python/object/apply:builtins.open ['{marker}', 'w']\n"
    )
    refused(robo_s2("train", f"resume_from={run}", cwd=tmp_path), marker, str(config))


# ------------------------------------------------------------------------------------------------
# imported files: HDF5 and zarr attributes are JSON only, zarr arrays never unpickle


def test_hdf5_attributes_are_json_only(tmp_path, marker):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src)
    with h5py.File(src, "a") as f:
        f["data"].attrs["env_args"] = np.void(pickle.dumps(Payload(marker)))
    out = robo_s2("import", f"src={src}", f"out={tmp_path / 'o.zarr'}", cwd=tmp_path)
    refused(out, marker, "env_args", "not JSON")


def plant_pickle_array(arr: Path, n: int, marker: Path) -> None:
    """A zarr v2 object array of ``n`` Payloads with a pickle codec at ``arr``."""
    arr.mkdir()
    (arr / ".zarray").write_text(
        json.dumps(
            {
                "zarr_format": 2, "shape": [n], "chunks": [n], "dtype": "|O",
                "compressor": None, "fill_value": None, "order": "C",
                "filters": [{"id": "pickle", "protocol": 5}],
            }
        )
    )  # fmt: skip
    obj = np.empty(n, dtype=object)
    obj[:] = [Payload(marker)] * n
    (arr / "0").write_bytes(pickle.dumps(obj))


def test_zarr_arrays_with_a_pickle_codec_are_refused(tmp_path, marker):
    src = tmp_path / "pusht.zarr"
    make_pusht(src)
    plant_pickle_array(src / "data" / "evil", 12, marker)
    # zarr never unpickles: the array is unreadable, left out of a default import ...
    out = robo_s2("import", f"src={src}", f"out={tmp_path / 'o.zarr'}", cwd=tmp_path)
    assert out.returncode == 0 and not marker.exists(), out.stderr
    # ... and asking for it is one clear error
    keys = "keys={img:image,action:action,evil:proprio}"
    out = robo_s2("import", f"src={src}", f"out={tmp_path / 'p.zarr'}", keys, cwd=tmp_path)
    refused(out, marker, "cannot open data/evil")


def test_typed_errors_replace_message_matching(monkeypatch):
    """Callers branch on the error's type: timm refusing an option is ModelArgsRejected (MAE's
    architecture check turns it into its own message), a hub file that needs pickle is named so."""
    import pickle

    import timm

    from robo_s2.encoders.backbone import create_timm_model
    from robo_s2.errors import ModelArgsRejected, UserError
    from robo_s2.pretraining.mae import build_vit

    with pytest.raises(ModelArgsRejected, match="rejected model_kwargs"):
        create_timm_model("resnet18", False, None, {"img_size": 64})
    with pytest.raises(UserError, match="is not a plain ViT"):
        build_vit("resnet18", 64)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed")

    monkeypatch.setattr(timm, "create_model", refuse)
    with pytest.raises(UserError, match="the file needs pickle to load, which is refused"):
        create_timm_model("vit_tiny_patch16_224", True, None, {})


def test_a_store_array_with_a_pickle_codec_is_one_line(tmp_path, marker):
    """A robo_s2 store (zarr v2) whose data/ holds an object array with a pickle codec: zarr
    cannot open it (nothing is unpickled), and every command says so in one line naming it."""
    store = DemoStore.create(tmp_path / "s.zarr", format=2)
    for _ in range(2):
        store.append_episode(
            {"image": np.zeros((4, 32, 32, 3), np.uint8), "action": np.zeros((4, 2), np.float32)}
        )
    store.close()
    plant_pickle_array(tmp_path / "s.zarr" / "data" / "evil", 8, marker)
    out = robo_s2("train", f"data.store={tmp_path / 's.zarr'}", "encoder=oracle", cwd=tmp_path)
    refused(out, marker, "data/evil cannot be opened", "never unpickles")
