"""The end-to-end ResNet-18 reference row (encoder=resnet18_e2e): GroupNorm, crops, weights files,
and the train / checkpoint / eval / cache / experiment paths every encoder takes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from robo_s2.encoders import IMAGENET_MEAN, IMAGENET_STD, create_encoder, list_encoders
from robo_s2.encoders.resnet import ResNetE2EEncoder
from robo_s2.errors import UserError

IMG = 64
CROP = 58  # round(0.9 * 64)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _frames(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, IMG, IMG, generator=g)


# ------------------------------------------------------------------------------------------------
# architecture, features, crops


def test_groupnorm_everywhere_no_classifier_and_feature_shapes():
    enc = create_encoder("resnet18_e2e", image_size=IMG)
    assert isinstance(enc, ResNetE2EEncoder) and enc.label == "resnet18_e2e"
    assert enc.trainable and all(p.requires_grad for p in enc.parameters())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    norms = [m for m in enc.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 20  # stem + 2 per block x 8 blocks + 3 downsamples
    assert all(m.num_groups == m.num_channels // 16 for m in norms)
    assert isinstance(enc.model.fc, nn.Identity) and enc.num_parameters() == 11_176_512
    assert enc.crop_size == CROP and enc.feature_dim == 512
    enc.eval()
    assert enc(_frames(2)).shape == (2, 512)
    assert enc.forward_tokens(_frames(2)).shape == (2, 4, 512)  # 58 px -> a 2x2 map
    # the store's uint8 (B,H,W,3) frames work the same
    u8 = (_frames(2) * 255).round().to(torch.uint8)
    torch.testing.assert_close(enc(u8.permute(0, 2, 3, 1)), enc(u8.float() / 255))
    kp = create_encoder("resnet18_e2e", image_size=IMG, pooling="spatial_softmax", num_kp=8).eval()
    out = kp(_frames(2))
    assert kp.feature_dim == 16 and out.shape == (2, 16) and out.abs().max() <= 1.0
    # larger frames are area-downsized to the encoder's input (one policy for every encoder),
    # smaller ones refused: upsampling would fake detail
    big = torch.rand(2, 3, 2 * IMG, 2 * IMG)
    torch.testing.assert_close(enc(big), enc(torch.nn.functional.avg_pool2d(big, 2)))
    with pytest.raises(UserError, match="32x32 frames; the encoder needs 64x64"):
        enc(torch.rand(1, 3, 32, 32))
    with pytest.raises(UserError, match="crop_ratio=1.5 must be in"):
        create_encoder("resnet18_e2e", crop_ratio=1.5)
    with pytest.raises(UserError, match="is not a timm ResNet"):
        create_encoder("resnet18_e2e", model="vit_tiny_patch16_224")
    with pytest.raises(UserError, match="unknown pooling 'cls'"):
        create_encoder("resnet18_e2e", pooling="cls")
    assert "resnet_e2e" in list_encoders() and "resnet18_e2e" in list_encoders(True)


def test_train_mode_crops_randomly_and_eval_mode_takes_the_centre():
    enc = create_encoder("resnet18_e2e", image_size=IMG)
    # pixels that say where they are: a crop's top-left value gives its offsets
    rows = torch.arange(IMG, dtype=torch.float32)[:, None].expand(IMG, IMG)
    cols = torch.arange(IMG, dtype=torch.float32)[None, :].expand(IMG, IMG)
    x = torch.stack([rows, cols, rows + cols]).expand(16, 3, IMG, IMG)
    enc.train()
    torch.manual_seed(0)
    a = enc.crop(x)
    assert a.shape == (16, 3, CROP, CROP)
    offsets = {(int(c[0, 0, 0]), int(c[1, 0, 0])) for c in a}
    assert len(offsets) > 1 and all(
        0 <= t <= IMG - CROP and 0 <= lf <= IMG - CROP for t, lf in offsets
    )
    for c in a:  # each crop is one contiguous window
        t, lf = int(c[0, 0, 0]), int(c[1, 0, 0])
        torch.testing.assert_close(c, x[0, :, t : t + CROP, lf : lf + CROP])
    torch.manual_seed(0)  # drawn from torch's global RNG: seeded training crops the same way
    torch.testing.assert_close(enc.crop(x), a)
    frames = _frames(4)
    f1, f2 = enc(frames), enc(frames)
    assert not torch.allclose(f1, f2)  # another crop every call
    enc.eval()
    lo = (IMG - CROP) // 2
    torch.testing.assert_close(enc.crop(x), x[:, :, lo : lo + CROP, lo : lo + CROP])
    with torch.no_grad():
        e1, e2 = enc(frames), enc(frames)
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        net_in = (frames[:, :, lo : lo + CROP, lo : lo + CROP] - mean) / std
        direct = enc.model.forward_features(net_in).mean(dim=(2, 3))
    assert torch.equal(e1, e2)
    torch.testing.assert_close(e1, direct)
    # crop_ratio 1: the whole frame, in both modes
    full = create_encoder("resnet18_e2e", image_size=IMG, crop_ratio=1.0).train()
    assert torch.equal(full.crop(x), x)


# ------------------------------------------------------------------------------------------------
# weights files


def test_weights_files_in_torchvision_and_timm_names_load_strictly(tmp_path):
    import timm
    import torchvision
    from safetensors.torch import save_file

    tv = torchvision.models.resnet18()  # BatchNorm, with its fc classifier
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    enc = create_encoder("resnet18_e2e", image_size=IMG, pretrained=True,
                         weights=str(tmp_path / "tv.pth"))  # fmt: skip
    tv_state = tv.state_dict()
    own = enc.model.state_dict()
    assert set(own) == {k for k in tv_state if not k.startswith("fc.")} - {
        k for k in tv_state if k.rsplit(".", 1)[-1] in ("running_mean", "running_var",
                                                         "num_batches_tracked")
    }  # fmt: skip
    for k, v in own.items():  # convs, and the BatchNorm gains/biases as GroupNorm's
        assert torch.equal(v, tv_state[k]), k
    # timm's resnet18 under a wrapper prefix, as safetensors
    net = timm.create_model("resnet18", num_classes=0)
    save_file({f"model.{k}": v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "timm.safetensors"))  # fmt: skip
    enc2 = create_encoder("resnet18_e2e", image_size=IMG, pretrained=True,
                          weights=str(tmp_path / "timm.safetensors"))  # fmt: skip
    assert torch.equal(enc2.model.conv1.weight, net.conv1.weight)
    assert enc2.fingerprint() != enc.fingerprint()


def test_a_weights_file_that_does_not_fit_is_a_clear_error(tmp_path):
    import torchvision

    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError) as err:
        create_encoder("resnet18_e2e", pretrained=True, weights=str(tmp_path / "r34.pth"))
    msg = str(err.value)
    assert "could not be loaded from" in msg and "unexpected keys [layer1.2." in msg
    assert "looks like a ResNet with basic blocks [3, 4, 6, 3] (resnet34)" in msg
    state = torchvision.models.resnet18().state_dict()
    state.pop("layer4.1.conv2.weight")
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(UserError, match=r"missing keys \[layer4.1.conv2.weight\]"):
        create_encoder("resnet18_e2e", pretrained=True, weights=str(tmp_path / "partial.pth"))
    with pytest.raises(UserError, match="set pretrained=true to load it"):
        create_encoder("resnet18_e2e", weights=str(tmp_path / "r34.pth"))
    with pytest.raises(UserError, match="does not exist"):
        create_encoder("resnet18_e2e", pretrained=True, weights=str(tmp_path / "nope.pth"))


# ------------------------------------------------------------------------------------------------
# every path an encoder takes: train, checkpoint, eval, cache, experiment, profile

TINY = [
    "encoder=resnet18_e2e",
    f"encoder.image_size={IMG}",
    "policy.d_model=32",
    "policy.n_layers=1",
    "policy.n_heads=2",
    "policy.history=4",
    "policy.chunk=4",
    "train.batch_size=8",
    "train.warmup_steps=1",
    "train.eval_every=2",
    "train.log_every=2",
    "data.val_fraction=0.34",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """3 expert demos of the cube-picking env at 64 px, cheap render profile (~3 s)."""
    from robo_s2.data.collection import collect

    os.environ.setdefault("MUJOCO_GL", "egl")
    out = tmp_path_factory.mktemp("demos") / "cube.zarr"
    env = {"image_size": IMG, "shadows": False, "msaa_samples": 0}
    collect(out, n_episodes=3, env_kwargs=env, seed=0, workers=0)
    return out


def _cfg(store, *overrides: str):
    from hydra import compose, initialize_config_dir

    from robo_s2.paths import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        return compose("train", overrides=[f"data.store={store}", *TINY, *overrides])


def test_trains_end_to_end_saves_reloads_and_evaluates(tmp_path, store, monkeypatch):
    from robo_s2.encoders.preprocess import frames_to_input
    from robo_s2.evaluation.runner import evaluate
    from robo_s2.training.checkpoint import load_checkpoint
    from robo_s2.training.trainer import Trainer

    modes: list[bool] = []
    crop = ResNetE2EEncoder.crop

    def spy(self, x):
        modes.append(self.training)
        return crop(self, x)

    monkeypatch.setattr(ResNetE2EEncoder, "crop", spy)
    cfg = _cfg(store, "train.steps=4")
    initial = create_encoder(dict(cfg.encoder)).state_dict()  # the seeded init train starts from
    trainer = Trainer(cfg, tmp_path / "run", encoder_name="resnet18_e2e")  # as the CLI names it
    try:
        res = trainer.run()
        trained = trainer.eval_model().encoder  # what the checkpoint holds (EMA weights)
        frames = frames_to_input(trainer.frames(np.arange(6)), IMG, torch.device("cpu"))
    finally:
        trainer.close()
    assert res.step == 4 and res.feature_source.startswith("images")
    # random crops in the 4 training steps only; normalizer fit and validation see centre crops
    assert modes.count(True) == 4 and modes.count(False) >= 3 and not modes[0]
    monkeypatch.setattr(ResNetE2EEncoder, "crop", crop)

    last = tmp_path / "run" / "checkpoints" / "last"
    assert (last / "encoder.safetensors").is_file()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial[k])]
    assert "model.conv1.weight" in changed and "model.layer4.1.bn2.weight" in changed
    assert len(changed) == len(initial)  # every tensor of the ResNet trained
    ckpt = load_checkpoint(last)  # strict, fingerprint-checked
    assert not ckpt.encoder.training and ckpt.encoder.config["name"] == "resnet_e2e"
    with torch.no_grad():
        assert torch.equal(ckpt.encoder(frames), trained.eval()(frames))  # bit-identical
    meta = json.loads((last / "robo_s2.json").read_text())
    assert meta["encoder"]["trainable"] and meta["encoder"]["label"] == "resnet18_e2e"

    out = evaluate(last, n_episodes=1, positions="random", seed=0, workers=0, n_videos=0,
                   env_overrides={"max_episode_steps": 5})  # fmt: skip
    assert out.n_episodes == 1 and out.info["encoder"]["label"] == "resnet18_e2e"


def test_random_crops_resume_exactly(tmp_path, store):
    """The crops come from torch's global RNG, which the training state saves: N/2 + resume to N
    trains the same encoder weights as N straight."""
    from safetensors.torch import load_file

    from robo_s2.training.trainer import train

    quick = ["train.steps=2", "data.val_fraction=0", "data.norm_frames=16"]
    train(_cfg(store, *quick), tmp_path / "straight")
    train(_cfg(store, *quick, "train.stop_at=1"), tmp_path / "split")
    train(_cfg(store, *quick, "resume=true"), tmp_path / "split")
    a, b = (
        load_file(tmp_path / run / "checkpoints" / "last" / "encoder.safetensors")
        for run in ("straight", "split")
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cache_refuses_it_and_experiment_and_profile_report_its_cost(store):
    import timm

    from robo_s2.data.store import DemoStore
    from robo_s2.encoders.feature_cache import encode_store
    from robo_s2.encoders.profile import count_gflops, profile_encoder
    from robo_s2.experiments.runner import encoder_cost

    enc = create_encoder("resnet18_e2e", image_size=IMG)
    s = DemoStore.open(store, mode="a")
    try:
        with pytest.raises(UserError, match="has trainable parts; its features change"):
            encode_store(s, enc)
    finally:
        s.close()
    params, gflops, dim, note = encoder_cost(_cfg(store))
    assert note == "trained end to end"
    plain = timm.create_model("resnet18", num_classes=0).eval()  # BatchNorm twin, same params
    assert params == sum(p.numel() for p in plain.parameters()) and dim == 512

    class Net(nn.Module):  # the bare network on the centre crop it sees
        def forward(self, x):
            return plain(x[:, :, 3 : 3 + CROP, 3 : 3 + CROP])

    net = Net()
    net.example_input = lambda b, d=None: torch.rand(b, 3, IMG, IMG)
    assert gflops == pytest.approx(count_gflops(net), rel=1e-6) and 0.2 < gflops < 0.4
    assert gflops == pytest.approx(count_gflops(enc.eval()))
    prof = profile_encoder(enc, batch_sizes=(2,), device="cpu", min_time=0.05, min_iters=1)
    assert prof.params == params and prof.fps[2] > 0 and prof.image_size == IMG


@pytest.mark.slow  # ~16 s, most of it starting the CLI; the path is the in-process one above
def test_cli_trains_it(tmp_path, store):
    from helpers import robo_s2

    out = robo_s2("train", f"data.store={store}", *TINY, "train.steps=2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    last_line = out.stdout.strip().splitlines()[-1]
    assert last_line.startswith("train: 2 steps (to 2/2)"), last_line
    assert (tmp_path / "run_out" / "checkpoints" / "last" / "encoder.safetensors").is_file()
    assert "encoder trained end to end" in out.stdout


@pytest.mark.parametrize("name", ["resnet18_e2e", "vit_t"])
def test_a_weights_file_without_pretrained_is_refused(name):
    with pytest.raises(UserError, match="was given with pretrained=false; set pretrained=true"):
        create_encoder(name, weights="/no/such/file.pth")
