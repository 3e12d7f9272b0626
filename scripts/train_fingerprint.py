"""Fingerprint of what training writes, for refactors that must not change it.

Runs tiny fixed-seed trainings on one synthetic store (a frozen encoder from cached features with
EMA, a trainable encoder from images, a run stopped half way and resumed, and a short MAE
pre-training) and prints, per run, the sha256 of every checkpoint tensor and the logged losses.
Run it before and after a change and diff the outputs: equal output = bit-identical training.

    python scripts/train_fingerprint.py before.json
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from robo_s2.data.store import DemoStore
from robo_s2.paths import config_dir

IMG = 64
TINY = [
    "encoder=vit_t",
    f"encoder.image_size={IMG}",
    "encoder.pooling=grid:2",
    "policy.d_model=32",
    "policy.n_layers=1",
    "policy.n_heads=2",
    "policy.history=4",
    "policy.chunk=4",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.steps=10",
    "train.eval_every=5",
    "train.save_every=5",
    "train.log_every=5",
    "data.val_fraction=0.25",
]


def make_store(path: Path, n_episodes: int = 6, length: int = 10) -> Path:
    rng = np.random.default_rng(0)
    store = DemoStore.create(path, attrs={"env": {"id": "synthetic", "image_size": IMG}})
    for _ in range(n_episodes):
        t = np.arange(length, dtype=np.float32)
        goal = rng.uniform(-1, 1, size=2).astype(np.float32)
        proprio = np.stack([t / length, np.full(length, goal[0]), np.full(length, goal[1])], 1)
        action = np.stack([np.sin(t / 3) + goal[0], np.cos(t / 3) + goal[1], t / length], 1)
        store.append_episode(
            {
                "image": rng.integers(0, 256, (length, IMG, IMG, 3), dtype=np.uint8),
                "proprio": proprio.astype(np.float32),
                "action": action.astype(np.float32),
            }
        )
    store.close()
    return path


def digest(t: torch.Tensor) -> str:
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def tensor_hashes(directory: Path) -> dict[str, str]:
    out = {}
    for f in sorted(directory.rglob("*.safetensors")):
        for k, v in sorted(load_file(str(f)).items()):
            out[f"{f.relative_to(directory)}:{k}"] = digest(v)
    return out


def train_run(store: Path, run: Path, *overrides: str) -> dict[str, Any]:
    from robo_s2.training.trainer import train

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("train", overrides=[f"data.store={store}", *TINY, *overrides])
    res = train(cfg, run)
    return {
        "train_loss": res.train_loss,
        "history": res.history,
        "tensors": tensor_hashes(run / "checkpoints"),
    }


def pretrain_run(store: Path, run: Path) -> dict[str, Any]:
    from robo_s2.pretraining.pretrainer import pretrain

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose(
            "pretrain",
            overrides=[
                f"images=[{store}]",
                "arch=vit_tiny_patch16_224",
                f"image_size={IMG}",
                "train.epochs=2",
                "train.batch_size=16",
                "decoder.dim=32",
                "decoder.depth=1",
                "decoder.heads=2",
                "recon_images=0",
            ],
        )
    res = pretrain(cfg, run)
    # the tensors, not the file: torch.save writes a random serialization id into every file
    weights = torch.load(res.encoder_path, map_location="cpu", weights_only=True)["model"]
    return {"history": res.history, "encoder": {k: digest(v) for k, v in sorted(weights.items())}}


def main() -> None:
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        frozen = make_store(root / "frozen.zarr")
        out["frozen_ema"] = train_run(frozen, root / "a", "train.ema=0.9")
        train_run(frozen, root / "b", "train.stop_at=5")
        out["frozen_resumed"] = train_run(frozen, root / "b", "resume=true")
        images = make_store(root / "images.zarr")
        out["trainable_encoder"] = train_run(
            images,
            root / "c",
            "encoder=resnet18_e2e",
            f"encoder.image_size={IMG}",
            "encoder.pooling=mean",
        )
        out["pretrain"] = pretrain_run(frozen, root / "d")
    for run in out.values():  # timings differ from run to run; everything else must not
        for h in run["history"]:
            for k in [k for k in h if k.endswith("_per_s") or k.endswith("_s")]:
                del h[k]
    Path(sys.argv[1]).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
