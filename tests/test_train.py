"""robo-s2 train: data windows, split, errors, learning on real demos, checkpoints, exact resume,
training from images, the CLI and DistributedDataParallel."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMG, TINY_TRAIN_CFG, robo_s2, smooth_action_store, train_cfg
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from robo_s2.data.windows import split_episodes
from robo_s2.errors import UserError
from robo_s2.paths import config_dir
from robo_s2.safe_io import load_state
from robo_s2.training.data import SequenceData, previous_actions
from robo_s2.training.optim import (
    EMA,
    BatchSampler,
    load_partial_state,
    trainable_state,
    warmup_cosine,
)
from robo_s2.training.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    return smooth_action_store(tmp_path_factory.mktemp("synthetic") / "s.zarr")


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory) -> Path:
    """20 expert demos of the real cube-picking env at 64 px (~20 s to collect)."""
    from robo_s2.data.collection import collect

    os.environ.setdefault("MUJOCO_GL", "egl")
    out = tmp_path_factory.mktemp("demos") / "cube_pick.zarr"
    res = collect(out, n_episodes=20, env_kwargs={"image_size": IMG}, seed=0, workers=0)
    assert res.n_total == 20
    return out


# ------------------------------------------------------------------------------------------------
# data, split, schedule, sampler


def test_windows_follow_the_batch_conventions():
    ends = np.array([3, 8])
    action = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    proprio = np.arange(8, dtype=np.float32)[:, None]
    data = SequenceData(ends, action, proprio, history=3, chunk=4)
    b = data.batch(torch.tensor([0, 4, 7]))
    # window of frame 0: two padded steps before it, chunk = actions 0,1,2 then past the end
    assert b["valid"][0].tolist() == [False, False, True]
    assert b["chunk_valid"][0].tolist() == [True, True, True, False]
    assert torch.equal(b["action_chunk"][0, :3], torch.from_numpy(action[0:3]))
    # prev_action: the action at t-1 in the same episode, zeros at an episode's first step
    assert torch.equal(b["prev_action"][0, -1], torch.zeros(2))
    assert b["valid"][1].tolist() == [False, True, True]  # frame 4: episode 1 starts at 3
    assert torch.equal(b["prev_action"][1, -1], torch.from_numpy(action[3]))
    assert torch.equal(b["prev_action"][1, -2], torch.zeros(2))  # frame 3 = episode start
    assert torch.equal(b["proprio"][1, -1], torch.tensor([4.0]))
    assert b["chunk_valid"][2].tolist() == [True, False, False, False]  # last frame
    prev = previous_actions(action, ends)
    assert np.all(prev[[0, 3]] == 0) and np.array_equal(prev[4], action[3])


def test_split_is_seeded_disjoint_and_needs_two_episodes():
    a, b = split_episodes(20, 0.2, seed=3), split_episodes(20, 0.2, seed=3)
    assert np.array_equal(a.train, b.train) and len(a.val) == 4
    assert sorted(np.concatenate([a.train, a.val]).tolist()) == list(range(20))
    assert not np.array_equal(a.val, split_episodes(20, 0.2, seed=4).val)
    assert len(split_episodes(2, 0.01, 0).val) == 1 and len(split_episodes(3, 0.9, 0).train) == 1
    assert len(split_episodes(1, 0.0, 0).val) == 0  # no validation: no split needed
    with pytest.raises(UserError, match="too few episodes for a split: need ≥2, store has 1"):
        split_episodes(1, 0.1, 0)
    with pytest.raises(UserError, match="val_fraction"):
        split_episodes(10, 1.0, 0)


def test_schedule_and_sampler():
    lrs = [warmup_cosine(s, 10, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == 1.0 and lrs[-1] < 0.01
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:], strict=False))
    s = BatchSampler(np.arange(10, 20), batch_size=4, seed=0)
    first = torch.cat([s.next() for _ in range(5)])  # 20 ids = exactly two epochs
    assert sorted(first[:10].tolist()) == list(range(10, 20))
    state = s.state_dict()
    after = [s.next() for _ in range(3)]
    s2 = BatchSampler(np.arange(10, 20), batch_size=4, seed=99)
    s2.load_state_dict(state)
    assert all(torch.equal(x, s2.next()) for x in after)


# ------------------------------------------------------------------------------------------------
# bad input


def test_bad_input_is_a_clear_error(tmp_path, synthetic_store):
    with pytest.raises(UserError, match="no demo store at"):
        train(train_cfg(tmp_path / "missing.zarr"), tmp_path / "r0")
    one = smooth_action_store(tmp_path / "one.zarr", n_episodes=1)
    with pytest.raises(UserError, match="too few episodes for a split: need ≥2, store has 1"):
        train(train_cfg(one, "train.steps=1"), tmp_path / "r1")
    with pytest.raises(UserError, match="unknown policy 'nope'"):
        train(train_cfg(synthetic_store, "policy.name=nope"), tmp_path / "r2")
    # a store without the encoder's features, with encoding switched off
    with pytest.raises(UserError, match="robo-s2 encode store=.* encoder=timm") as e:
        train(train_cfg(one, "data.encode=false", "data.val_fraction=0"), tmp_path / "r3")
    assert "data.encode=false" in str(e.value)


def test_nan_in_actions_or_proprio_names_episode_and_step(tmp_path):
    import zarr

    path = smooth_action_store(tmp_path / "nan.zarr", n_episodes=3, length=10)
    zarr.open_array(str(path / "data" / "action"), mode="r+")[13, 1] = np.nan  # episode 1 step 3
    with pytest.raises(UserError, match=r"data/action has NaN/inf at episode 1 step 3"):
        train(train_cfg(path), tmp_path / "r")
    path = smooth_action_store(tmp_path / "inf.zarr", n_episodes=3, length=10)
    zarr.open_array(str(path / "data" / "proprio"), mode="r+")[29, 0] = np.inf  # episode 2 step 9
    with pytest.raises(UserError, match=r"data/proprio has NaN/inf at episode 2 step 9"):
        train(train_cfg(path), tmp_path / "r")


def test_features_cached_by_encode_are_used(tmp_path):
    """robo-s2 encode and train agree on the cache key: data.encode=false finds the features."""
    from robo_s2.commands import encode

    path = smooth_action_store(tmp_path / "s.zarr", n_episodes=3, length=6)
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        enc_cfg = compose("encode", overrides=[f"store={path}", *TINY_TRAIN_CFG[:3]])
    assert encode.run(enc_cfg).n_encoded_now == 18
    res = train(train_cfg(path, "data.encode=false", "train.steps=2"), tmp_path / "run")
    assert res.step == 2 and res.feature_source.startswith("cached features")
    meta = json.loads((tmp_path / "run" / "checkpoints" / "last" / "robo_s2.json").read_text())
    from robo_s2.device import cpu_bf16_supported

    # auto with batches of 64 frames: bf16 where the CPU has it natively, else fp32
    assert meta["feature_precision"] == ("bf16" if cpu_bf16_supported() else "fp32")
    # an fp32 cache is never taken for bf16 features: bf16 asks for its own entry
    other = "fp32" if meta["feature_precision"] == "bf16" else "bf16"
    with pytest.raises(UserError, match=rf"no cached features .*-{other}-"):
        train(
            train_cfg(path, "data.encode=false", "train.steps=2", f"encoder.precision={other}"),
            tmp_path / "run_other",
        )
    res = train(train_cfg(path, "train.steps=2", f"encoder.precision={other}"), tmp_path / "run_b")
    assert f"-{other}-" in res.feature_source
    meta = json.loads((tmp_path / "run_b" / "checkpoints" / "last" / "robo_s2.json").read_text())
    assert meta["feature_precision"] == other


# ------------------------------------------------------------------------------------------------
# learning on real demos, checkpoints


def test_policy_beats_the_mean_action_on_real_demos(tmp_path, demo_store):
    from robo_s2.training.checkpoint import load_checkpoint

    cfg = train_cfg(
        demo_store,
        "policy.history=16",
        "policy.chunk=16",
        "policy.d_model=64",
        "policy.n_layers=2",
        "policy.n_heads=4",
        "policy.dropout=0.0",
        "train.steps=300",
        "train.batch_size=32",
        "train.lr=1e-3",
        "train.warmup_steps=30",
        "train.eval_every=100",
        "train.save_every=0",
        "train.log_every=25",
        "data.val_fraction=0.2",
    )
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        res = trainer.run()
    finally:
        trainer.close()
    final = res.final
    print(
        f"\nval ratio {final['ratio']:.3f} (raw units {final['ratio_raw']:.3f}), {res.seconds:.1f} s"
    )
    # the recorded actions carry the expert's N(0, 0.05) noise: a perfect policy's normalized
    # ratio is ~0.45 here (measured with the true cube position as the feature), raw ~0.2
    assert final["ratio_raw"] < 0.5 and final["ratio"] < 0.75
    assert final["l1"] < final["baseline_l1"] and len(res.history) == 3
    assert res.best["loss"] == min(h["loss"] for h in res.history)

    last = tmp_path / "run" / "checkpoints" / "last"
    assert (last / "training_state.safetensors").is_file() and (last / "config.yaml").is_file()
    assert not (tmp_path / "run" / "checkpoints" / "best" / "training_state.safetensors").exists()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    ckpt = load_checkpoint(last)
    meta = ckpt.meta
    assert meta["step"] == 300 and meta["env"]["image_size"] == IMG and ckpt.image_key == "image"
    assert sorted(meta["data"]["train_episodes"] + meta["data"]["val_episodes"]) == list(range(20))
    assert meta["metrics"]["l1"] == pytest.approx(final["l1"])
    # the loaded checkpoint reproduces the trained (EMA) policy exactly
    saved = trainer.eval_model().policy.eval()
    batch = trainer.data.batch(torch.as_tensor(trainer.val_windows[:64]))
    with torch.no_grad():
        assert torch.equal(ckpt.policy.eval().predict_chunk(batch), saved.predict_chunk(batch))
    assert ckpt.policy.config == saved.config
    assert ckpt.policy.config["execution"]["mode"] == "ensemble"


# ------------------------------------------------------------------------------------------------
# exact resume


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = run / "checkpoints" / "last"
    state = load_state(ckpt / "training_state.safetensors")
    out = {f"ema.{k}": v for k, v in load_file(str(ckpt / "model.safetensors")).items()}
    out.update({f"raw.{k}": v for k, v in state["model"].items()})
    for i, s in state["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def test_resume_is_bit_identical(tmp_path, synthetic_store, monkeypatch):
    import signal

    import robo_s2.training.trainer as train_module

    common = ["train.steps=20", "policy.dropout=0.2", "train.eval_every=4", "train.save_every=3"]
    straight = train(train_cfg(synthetic_store, *common), tmp_path / "a")
    assert straight.step == 20
    half = train(train_cfg(synthetic_store, *common, "train.stop_at=10"), tmp_path / "b")
    assert half.step == 10 and [h["step"] for h in half.history] == [4, 8]  # none at the stop
    # resume, then Ctrl-C during step 14: the step completes, is saved, and training stops
    calls = []

    def step_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            signal.raise_signal(signal.SIGINT)
        return real_step(*args, **kwargs)

    real_step = train_module.train_step
    monkeypatch.setattr(train_module, "train_step", step_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(train_cfg(synthetic_store, *common, "resume=true"), tmp_path / "b")
    monkeypatch.setattr(train_module, "train_step", real_step)
    state = load_state(tmp_path / "b/checkpoints/last/training_state.safetensors")
    assert state["step"] == 14
    resumed = train(train_cfg(synthetic_store, *common, "resume=true"), tmp_path / "b")
    assert resumed.start_step == 14 and resumed.step == 20
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.best == resumed.best and straight.history == resumed.history
    # resuming a finished run does nothing; resume_from continues into another directory
    again = train(train_cfg(synthetic_store, *common, "resume=true"), tmp_path / "b")
    assert again.steps_run == 0
    more = train(
        train_cfg(synthetic_store, *common, "train.steps=24", f"resume_from={tmp_path / 'b'}"),
        tmp_path / "c",
    )
    assert more.start_step == 20 and more.step == 24
    assert (tmp_path / "c" / "checkpoints" / "last").is_dir()


def test_sigterm_saves_last_and_resumes_exactly(tmp_path, synthetic_store, monkeypatch):
    """A job scheduler's SIGTERM during step 3: the step completes, checkpoints/last holds it
    (save_every is far away) and resuming ends where a straight run does."""
    import signal

    import robo_s2.training.trainer as train_module

    common = ["train.steps=6", "train.save_every=100", "train.eval_every=0"]
    real_step, calls = train_module.train_step, []

    def step_then_sigterm(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGTERM)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", step_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        train(train_cfg(synthetic_store, *common), tmp_path / "b")
    monkeypatch.setattr(train_module, "train_step", real_step)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert load_state(tmp_path / "b/checkpoints/last/training_state.safetensors")["step"] == 3
    resumed = train(train_cfg(synthetic_store, *common, "resume=true"), tmp_path / "b")
    train(train_cfg(synthetic_store, *common), tmp_path / "a")  # straight
    assert resumed.start_step == 3
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_feature_width_or_a_missing_checkpoint(tmp_path, synthetic_store):
    train(train_cfg(synthetic_store, "train.steps=2"), tmp_path / "a")
    with pytest.raises(UserError, match="feature width 192 .* does not match the 768-wide"):
        train(train_cfg(synthetic_store, "resume=true", "encoder.pooling=cls"), tmp_path / "a")
    with pytest.raises(UserError, match="nothing to resume in"):
        train(train_cfg(synthetic_store, "resume=true"), tmp_path / "empty")
    with pytest.raises(UserError, match="policy differs"):
        train(train_cfg(synthetic_store, "resume=true", "policy.d_model=64"), tmp_path / "a")


# ------------------------------------------------------------------------------------------------
# training from images (trainable encoder parts)

TINY_PIIP = [
    "encoder=piip_ts_tiny",
    f"encoder.resolutions=[{IMG},{IMG // 2}]",
    "encoder.interactions=2",
    "encoder.pooling=mean",
    "encoder.branches=[{model:deit_tiny_patch16_224,model_kwargs:{depth:2}},"
    "{model:deit_small_patch16_224,model_kwargs:{depth:2}}]",
]


def test_trainable_encoder_trains_from_images(tmp_path, synthetic_store):
    from robo_s2.encoders.preprocess import frames_to_input
    from robo_s2.training.checkpoint import load_checkpoint

    base = [x for x in TINY_TRAIN_CFG if not x.startswith("encoder")] + TINY_PIIP
    # fp32: with auto, a CPU with native bf16 would run the deduplicated pass (fewer tokens) and
    # the naive one in different precisions; what is compared here is the deduplication
    cfg = train_cfg(synthetic_store, "train.steps=6", "encoder.precision=fp32", base=base)
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        trainer.setup()
        assert trainer.trainable_encoder and trainer.data.feature is None
        initial = {n: p.detach().clone() for n, p in trainer.model.encoder.named_parameters()}
        # one forward over the distinct frames == encoding every step of every window
        windows = torch.as_tensor(trainer.train_windows[:5])
        batch = trainer._make_batch(windows)
        assert batch["frames"].shape[0] < batch["inverse"].numel()
        trainer.model.eval()
        with torch.no_grad():
            loss, _ = trainer.model(batch)
            hist = trainer.data.history_frames(windows)
            x = frames_to_input(trainer.frames(hist.flatten().numpy()), IMG, torch.device("cpu"))
            feats = trainer.model.encoder(x).view(*hist.shape, -1)
            naive, _ = trainer.model.policy.compute_loss(trainer.data.batch(windows, feats))
        torch.testing.assert_close(loss, naive)
        trainer.model.train()
    finally:
        trainer.close()
    res = train(cfg, tmp_path / "run2")
    assert res.step == 6 and res.feature_source.startswith("images")
    ckpt = load_checkpoint(tmp_path / "run2" / "checkpoints" / "last")  # fingerprint-checked
    assert (tmp_path / "run2" / "checkpoints" / "last" / "encoder.safetensors").is_file()
    changed = [
        n for n, p in ckpt.encoder.named_parameters() if not torch.equal(p, initial[n].cpu())
    ]
    assert changed and all(not n.startswith("branches.") for n in changed)


def test_a_trained_piip_loads_frozen_and_trains_from_cached_features(tmp_path, synthetic_store):
    """PIIP's affordable form: train the interactions once with a policy, then freeze them
    (``encoder.weights=<checkpoint>``, ``encoder.trainable=false``) and train from cached features."""
    from robo_s2.encoders.preprocess import frames_to_input
    from robo_s2.training.checkpoint import load_checkpoint

    base = [x for x in TINY_TRAIN_CFG if not x.startswith("encoder")] + TINY_PIIP
    first = train(train_cfg(synthetic_store, "train.steps=4", base=base), tmp_path / "stage1")
    assert first.feature_source.startswith("images")
    ckpt_dir = tmp_path / "stage1" / "checkpoints" / "last"
    trained = load_checkpoint(ckpt_dir).encoder
    # beside its encoder's weights the checkpoint keeps the run's own config (what resume reads)
    saved = OmegaConf.load(ckpt_dir / "config.yaml")
    assert saved.train.steps == 4 and saved.encoder.name == "piip"
    frozen = [f"encoder.weights={ckpt_dir}", "encoder.trainable=false"]
    second = train(train_cfg(synthetic_store, "train.steps=4", *frozen, base=base), tmp_path / "s2")
    assert not second.feature_source.startswith("images")  # features cached, not re-encoded
    ckpt = load_checkpoint(tmp_path / "s2" / "checkpoints" / "last")  # fingerprint-checked
    assert not ckpt.encoder.trainable and not (ckpt.path / "encoder.safetensors").exists()
    x = frames_to_input(torch.randint(0, 255, (2, IMG, IMG, 3), dtype=torch.uint8), IMG,
                        torch.device("cpu"))  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(ckpt.encoder(x), trained.eval()(x), rtol=0, atol=0)
    for name, p in ckpt.encoder.state_dict().items():
        assert torch.equal(p, trained.state_dict()[name]), name


# ------------------------------------------------------------------------------------------------
# the CLI


def test_cli_trains_resumes_and_reports(tmp_path):
    store = smooth_action_store(tmp_path / "tiny.zarr", n_episodes=4, length=8)
    run = tmp_path / "run"
    args = [f"data.store={store}", *TINY_TRAIN_CFG, "train.steps=6", "train.stop_at=4"]
    out = robo_s2("train", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    last_line = out.stdout.strip().splitlines()[-1]
    assert last_line.startswith("train: 4 steps (to 4/6)") and "checkpoint" in last_line
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    # resume with only the run dir: the saved config (tiny policy, this store) is used
    out = robo_s2("train", "resume=true", f"hydra.run.dir={run}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    last_line = out.stdout.strip().splitlines()[-1]
    assert last_line.startswith("train: 2 steps (to 6/6)") and "ratio" in last_line, last_line
    assert str(run / "checkpoints" / "best") in last_line
    meta = json.loads((run / "checkpoints" / "last" / "robo_s2.json").read_text())
    assert meta["encoder"]["feature_dim"] == 768 and meta["step"] == 6
    best = json.loads((run / "checkpoints" / "best" / "robo_s2.json").read_text())
    assert best["step"] in (5, 6) and "ratio" in best["metrics"]
    # bad input: one line, no traceback
    out = robo_s2("train", f"data.store={tmp_path / 'nope.zarr'}", *TINY_TRAIN_CFG, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]
    assert out.stderr.startswith("error: no demo store at")


# ------------------------------------------------------------------------------------------------
# DistributedDataParallel on CPU (gloo): two ranks end with identical weights


_DDP_WORKER = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from hydra import compose, initialize_config_dir
    from robo_s2.paths import config_dir
    from robo_s2.training.trainer import Trainer
    store, run, out, *overrides = sys.argv[1:]
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None):
        cfg = compose("train", overrides=[f"data.store={store}", *overrides])
    trainer = Trainer(cfg, run)
    res = trainer.run()
    torch.save({"state": trainer.model.state_dict(), "ema": trainer.eval_model().state_dict(),
                "rank": trainer.dist.rank, "final": res.final, "step": res.step}, out)
    trainer.close()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_end_with_identical_weights(tmp_path, synthetic_store):
    # features cached up front so that the ranks only train
    train(train_cfg(synthetic_store, "train.steps=1"), tmp_path / "warm")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
        }
        # each rank is given its own run dir: rank 0's must win
        cmd = [
            sys.executable,
            "-c",
            _DDP_WORKER,
            str(synthetic_store),
            str(tmp_path / f"run{rank}"),
            str(tmp_path / f"rank{rank}.pt"),
            *TINY_TRAIN_CFG,
            "train.steps=8",
            "policy.dropout=0.1",
        ]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert (r0["rank"], r1["rank"]) == (0, 1) and r0["step"] == r1["step"] == 8
    for key in ("state", "ema"):
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    assert r0["final"] == r1["final"] and r0["final"]["l1"] > 0  # sharded validation, reduced
    assert (tmp_path / "run0" / "checkpoints" / "last").is_dir()
    assert not (tmp_path / "run1").exists()  # only rank 0 writes


@pytest.mark.slow
def test_torchrun_cli_two_processes(tmp_path):
    store = smooth_action_store(tmp_path / "tiny.zarr", n_episodes=4, length=8)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "robo_s2", "train", f"data.store={store}", *TINY_TRAIN_CFG, "train.steps=6",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    summaries = [line for line in out.stdout.splitlines() if line.startswith("train: 6 steps")]
    assert len(summaries) == 1, out.stdout  # rank 0 alone reports
    runs = [p for p in (tmp_path / "outputs" / "train").iterdir()]
    assert len(runs) == 1 and (runs[0] / "checkpoints" / "best").is_dir()
    meta = json.loads((runs[0] / "checkpoints" / "last" / "robo_s2.json").read_text())
    assert meta["train"]["world_size"] == 2


def test_a_state_that_does_not_fit_is_one_line(tmp_path):
    from robo_s2.training.resume import state_must_fit

    for exc in (KeyError("optimizer"), RuntimeError("size mismatch for policy.head.weight")):
        with pytest.raises(UserError) as err, state_must_fit(tmp_path):
            raise exc
        assert "does not fit this run" in str(err.value) and "\n" not in str(err.value)
        assert str(tmp_path) in str(err.value)


def test_saved_training_state_leaves_out_non_persistent_buffers():
    class WithConstants(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("count", torch.zeros(()))  # state
            self.register_buffer("mean", torch.ones(2), persistent=False)  # a constant

    model = WithConstants()
    with torch.no_grad():
        model.count += 3
    state = trainable_state(model)
    assert set(state) == {"lin.weight", "lin.bias", "count"}
    fresh = WithConstants()
    load_partial_state(fresh, state)  # a resume: no "entries the model lacks"
    assert fresh.count.item() == 3 and torch.equal(fresh.lin.weight, model.lin.weight)
    ema = EMA(model, 0.9)
    assert "mean" not in ema.trainable_state()
    ema.load_state_dict(ema.state_dict())


@pytest.mark.parametrize("impl", ["loop", "foreach", "fused"])
def test_adamw_resumes_exactly_through_a_state_file_with_channels_last_weights(tmp_path, impl):
    """A state file stores Adam's moments contiguous; a channels_last conv weight must get them
    back in its own layout, or the fused kernel pairs each weight with another element's moments."""
    import copy

    from robo_s2.safe_io import load_state, save_state
    from robo_s2.training.optim import make_optimizer, match_state_layout

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    net(torch.zeros(1, 3, 6, 6))
    net = net.to(memory_format=torch.channels_last)

    def run(split: bool) -> list[torch.Tensor]:
        model = copy.deepcopy(net)
        opt = make_optimizer(model, lr=1e-2, weight_decay=0.01, impl=impl)
        gen = torch.Generator().manual_seed(1)
        for i in range(4):
            if split and i == 2:
                save_state(
                    tmp_path / "s.safetensors", {"o": opt.state_dict(), "m": model.state_dict()}
                )
                state = load_state(tmp_path / "s.safetensors")
                model = copy.deepcopy(net)
                opt = make_optimizer(model, lr=1e-2, weight_decay=0.01, impl=impl)
                model.load_state_dict(state["m"])
                opt.load_state_dict(state["o"])
                match_state_layout(opt)
            x = torch.randn(2, 3, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="train.optimizer='adam'"):
        make_optimizer(net, lr=1e-3, weight_decay=0.0, impl="adam")
