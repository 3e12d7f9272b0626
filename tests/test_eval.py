"""robo-s2 eval: statistics, position sets, rollouts (serial == parallel), outputs, one-line errors."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import robo_s2, tiny_policy_checkpoint

from robo_s2.errors import UserError
from robo_s2.evaluation.runner import episode_seed, evaluate, position_set
from robo_s2.evaluation.stats import (
    compare_rates,
    fisher_exact_p,
    newcombe_interval,
    wilson_interval,
)

REGION = ((0.4, 0.6), (-0.1, 0.1))
SHORT = {"max_episode_steps": 10}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- statistics ----------------------------------------------------------------------------------


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(12, 16)
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (50.5, 89.8)  # the summary-line example
    lo, hi = wilson_interval(0, 16)
    assert lo == 0.0 and hi == pytest.approx(0.1936, abs=1e-4)
    lo, hi = wilson_interval(16, 16)
    assert hi == 1.0 and lo == pytest.approx(0.8064, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(50, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_rate_comparison_known_values(tmp_path):
    # Newcombe (1998), method 10: 56/70 vs 48/80 -> 0.2000 (0.0524, 0.3339)
    d, lo, hi = newcombe_interval(56, 70, 48, 80)
    assert (d, lo, hi) == (
        pytest.approx(0.2),
        pytest.approx(0.0524, abs=1e-4),
        pytest.approx(0.3339, abs=1e-4),
    )
    assert fisher_exact_p(3, 4, 1, 4) == pytest.approx(0.4857, abs=1e-4)  # lady tasting tea
    assert fisher_exact_p(1, 12, 9, 12) == pytest.approx(0.002759, abs=1e-6)
    assert fisher_exact_p(8, 16, 8, 16) == pytest.approx(1.0)
    c = compare_rates(10, 16, 7, 16)  # the paper's 62.5% vs 43.8%: not distinguishable at n=16
    assert c.diff == pytest.approx(0.1875) and not c.significant and c.p_value > 0.05
    assert compare_rates(95, 100, 50, 100).significant
    # the experiment's bar plot of such rates, with the paper's values beside them
    from robo_s2.evaluation.plots import plot_success_bars

    png = plot_success_bars(["b", "b_s2"], [7, 10], [16, 16], tmp_path / "bars.png",
                            reference={"b": 43.8, "b_s2": 62.5})  # fmt: skip
    assert png.read_bytes()[:4] == b"\x89PNG"


# --- position sets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, n", [("paper16", None), ("random", 40), ("grid", 25)])
def test_position_sets_are_deterministic_and_inside_the_region(name, n):
    a = position_set(name, n, seed=3, region=REGION, randomize_yaw=True)
    assert a == position_set(name, n, seed=3, region=REGION, randomize_yaw=True)
    assert len(a) == {"paper16": 16, "random": 40, "grid": 25}[name]
    xy = np.array([(x, y) for x, y, _ in a])
    assert np.all((xy[:, 0] >= 0.4) & (xy[:, 0] <= 0.6) & (xy[:, 1] >= -0.1) & (xy[:, 1] <= 0.1))
    yaw = np.array([t for *_, t in a])
    assert np.all((yaw >= -math.pi / 4) & (yaw < math.pi / 4))
    no_yaw = position_set(name, n, seed=3, region=REGION)
    assert all(t == 0.0 for *_, t in no_yaw)
    assert [p[:2] for p in no_yaw] == [p[:2] for p in a]  # yaw does not shift x, y
    if name != "grid":
        assert position_set(name, n, seed=4, region=REGION) != no_yaw


def test_position_set_details():
    paper = position_set("paper16", seed=0)
    assert position_set("random", 100, seed=0)[:16] == paper  # nested sets
    grid = position_set("grid", 16, region=REGION)
    xs, ys = sorted({p[0] for p in grid}), sorted({p[1] for p in grid})
    assert np.allclose(xs, [0.425, 0.475, 0.525, 0.575]) and np.allclose(ys, np.array(xs) - 0.5)
    assert len(position_set("grid", 20)) == 16  # round(sqrt(20)) = 4 per side
    assert episode_seed(0, 1) == episode_seed(0, 1) != episode_seed(0, 2) != episode_seed(1, 2)
    with pytest.raises(UserError, match="unknown position set 'paper17'"):
        position_set("paper17", 16)
    with pytest.raises(UserError, match="must be an integer > 0"):
        position_set("random", 0)
    with pytest.raises(UserError, match="paper16 is the paper's 16 positions"):
        position_set("paper16", 20)


# --- rollouts ------------------------------------------------------------------------------------


def test_expert_succeeds_and_outputs_are_written(tmp_path):
    res = evaluate(
        "expert", n_episodes=3, positions="random", seed=0, workers=0,
        env_overrides={"image_size": 64}, n_videos=1, out_dir=tmp_path,
    )  # fmt: skip
    assert res.n_success == 3 and res.pc_success == 100.0
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert info["pc_success"] == 100.0 and info["n_success"] == info["n_episodes"] == 3
    assert info["policy"] == "scripted_expert"
    assert (tmp_path / "videos" / "episode_000.mp4").stat().st_size > 1000
    assert not (tmp_path / "videos" / "episode_001.mp4").exists()
    assert (tmp_path / "positions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.summary().startswith("eval: 3/3 success (100.0%, 95% CI 43.8\u2013100.0%) on random")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return tiny_policy_checkpoint(tmp_path_factory.mktemp("run") / "checkpoints" / "best")


def test_serial_and_parallel_rollouts_are_identical(tiny_checkpoint, tmp_path):
    kw = {"n_episodes": 3, "positions": "random", "seed": 1, "env_overrides": SHORT}
    serial = evaluate(tiny_checkpoint, workers=0, n_videos=1, out_dir=tmp_path / "s", **kw)
    pipelined = evaluate(tiny_checkpoint, workers=2, n_videos=0, **kw)
    lockstep = evaluate(tiny_checkpoint, workers=2, pipeline=False, n_videos=0, **kw)
    a = [r.to_dict() for r in serial.records]
    assert a == [r.to_dict() for r in pipelined.records] == [r.to_dict() for r in lockstep.records]
    assert pipelined.info["pipeline"] and not lockstep.info["pipeline"]
    assert [r["index"] for r in a] == [0, 1, 2] and all(r["steps"] == 10 for r in a)
    info = json.loads((tmp_path / "s" / "eval_info.json").read_text())
    for key in (
        "pc_success", "n_success", "n_episodes", "ci95", "avg_episode_length", "per_episode",
        "positions", "checkpoint", "encoder", "policy", "execution", "eval_s", "env_steps_per_s",
    ):  # fmt: skip
        assert key in info, key
    assert info["n_episodes"] == 3 and info["ci95"][0] == 0.0 and info["avg_episode_length"] == 10
    assert info["positions"] == {
        "name": "random", "seed": 1, "n": 3, "region": [[0.4, 0.6], [-0.1, 0.1]],
        "randomize_yaw": False,
    }  # fmt: skip
    assert info["per_episode"][0].keys() >= {
        "index", "seed", "cube_pos", "cube_yaw", "success", "steps"
    }  # fmt: skip
    assert info["encoder"]["label"] == "vit_t" and len(info["encoder"]["fingerprint"]) >= 12
    assert info["policy"] == "chunk_transformer" and info["execution"]["mode"] == "ensemble"
    assert info["env"]["kwargs"]["max_episode_steps"] == 10
    assert (tmp_path / "s" / "videos" / "episode_000.mp4").is_file()
    assert (tmp_path / "s" / "positions.png").is_file()
    # another execution mode runs through the same machinery
    rec = evaluate(tiny_checkpoint, workers=0, execution={"mode": "receding"}, **kw)
    assert rec.info["execution"]["mode"] == "receding" and rec.n_episodes == 3


class _LoggingActor:
    """Wraps an actor; logs every (proprio, action) pair under the episode seed it belongs to."""

    def __init__(self, inner, log):
        self.inner, self.log, self.seed_of = inner, log, {}
        self.obs_keys = inner.obs_keys
        self.frames = []  # whether each observation the actor got came with its image
        self.every_frame = False  # True: ask the envs for every frame (the reference)

    def fork(self):
        forked = _LoggingActor(self.inner.fork(), self.log)
        forked.frames, forked.every_frame = self.frames, self.every_frame
        return forked

    def begin(self, n_slots):
        self.inner.begin(n_slots)

    def start(self, slots, seeds):
        self.seed_of.update(zip(slots, seeds, strict=True))
        self.inner.start(slots, seeds)

    def act(self, slots, obs):
        actions = self.inner.act(slots, obs)
        for s, o, a in zip(slots, obs, actions, strict=True):
            self.log.setdefault(self.seed_of[s], []).append((o["proprio"].copy(), a.copy()))
            self.frames.append("image" in o)
        return actions

    def frames_needed(self, slots):
        return [True] * len(slots) if self.every_frame else self.inner.frames_needed(slots)


def _rollout_log(target, episodes, every_frame=False, **plan):
    """Per-episode (proprio, action) steps of ``target`` on ``episodes`` run under ``plan``, and
    whether each observation came with its image."""
    from robo_s2.evaluation.runner import run_episodes

    log = {}
    actor = _LoggingActor(target.actor, log)
    actor.frames, actor.every_frame = [], every_frame
    run_episodes(actor, target.env_kwargs, episodes, **plan)
    return log, actor.frames


def _assert_same_steps(a, b, n_steps):
    assert sorted(a) == sorted(b)
    for seed, steps in a.items():
        assert len(b[seed]) == len(steps) == n_steps
        for (p0, a0), (p1, a1) in zip(steps, b[seed], strict=True):
            np.testing.assert_array_equal(p0, p1)
            np.testing.assert_array_equal(a0, a1)


def _cpu_has_amx() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Known defect, not yet found: on an Intel Xeon with AMX (amx_bf16) the bf16 rollouts differ across
# worker counts by ~1e-3 in the actions at equal proprio, although the bf16 encoder alone is
# batch-size-, thread- and call-order-invariant there (measured); it fails at 939ef10 too. On the
# AMD EPYC CPUs (avx512_bf16, no AMX) this test has passed in CI. The assertion stays and runs.
_AMX_BF16 = pytest.mark.xfail(
    _cpu_has_amx(), reason="bf16 rollouts differ across worker counts on AMX CPUs (open defect)",
    strict=False,
)  # fmt: skip


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=_AMX_BF16)])
def test_trajectories_are_bit_identical_across_worker_counts(tiny_checkpoint, precision):
    from robo_s2.evaluation.runner import episode_specs, load_target, run_episodes

    target = load_target(
        tiny_checkpoint, torch.device("cpu"), env_overrides={"max_episode_steps": 6},
        precision=precision,
    )  # fmt: skip
    assert target.actor.precision == precision
    episodes = episode_specs(position_set("random", 3, seed=2, region=REGION), seed=2)
    logs = []
    for workers, pipeline in ((0, False), (2, True), (2, False)):
        log = {}
        run_episodes(_LoggingActor(target.actor, log), target.env_kwargs, episodes, workers,
                     pipeline=pipeline)  # fmt: skip
        logs.append(log)
    assert sorted(logs[0]) == sorted(e.seed for e in episodes)
    for log in logs[1:]:
        assert sorted(log) == sorted(logs[0])
        for seed, steps in logs[0].items():
            assert len(log[seed]) == len(steps) == 6
            for (p0, a0), (p1, a1) in zip(steps, log[seed], strict=True):
                np.testing.assert_array_equal(p0, p1)
                np.testing.assert_array_equal(a0, a1)
    # the untrained policy does act: its actions differ from episode to episode
    first = [steps[-1][1] for steps in logs[0].values()]
    assert not np.allclose(first[0], first[1])


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=_AMX_BF16)])
def test_trajectories_are_bit_identical_whatever_the_cpu_plan(tiny_checkpoint, precision):
    """Envs per process change the inference batch (1 to 5 frames here), lanes and slots change
    which envs share a batch: no episode may notice."""
    from robo_s2.evaluation.runner import episode_specs, load_target

    target = load_target(
        tiny_checkpoint, torch.device("cpu"), env_overrides={"max_episode_steps": 5},
        precision=precision,
    )  # fmt: skip
    episodes = episode_specs(position_set("random", 5, seed=4, region=REGION), seed=4)
    reference, _ = _rollout_log(target, episodes, workers=0, pipeline=False)
    for plan in (
        {"workers": 0, "envs_per_worker": 5, "pipeline": False},  # one batch of 5
        {"workers": 2, "envs_per_worker": 3, "pipeline": True},  # lanes of 3, one slot idle
        {"workers": 2, "envs_per_worker": 2, "pipeline": False},  # batches of 4, then 1
    ):
        log, _ = _rollout_log(target, episodes, **plan)
        _assert_same_steps(reference, log, 5)


def test_frames_are_rendered_only_when_the_policy_reads_them(tmp_path):
    """Receding horizon (re-plan every 4 steps) with a 2-step history reads the frames of steps
    3, 4, 7, 8, ... and of step 0: the others are neither rendered nor encoded, and every action
    is bit-identical to rendering every step. Temporal ensembling reads every frame."""
    from robo_s2.evaluation.actors import frame_read
    from robo_s2.evaluation.runner import episode_specs, load_target

    ckpt = tiny_policy_checkpoint(tmp_path / "ckpt", history=2, chunk=8)
    receding = {"mode": "receding", "n_action_steps": 4, "k": 0.0}
    target = load_target(
        ckpt, torch.device("cpu"), env_overrides={"max_episode_steps": 10}, execution=receding
    )
    episodes = episode_specs(position_set("random", 3, seed=5, region=REGION), seed=5)
    for plan in ({"workers": 0}, {"workers": 2, "envs_per_worker": 2}):
        # (compared within a plan: this policy's first linear layer rounds differently at
        # different batch sizes, by ~1e-6, so its actions are batch-invariant only to that)
        every, every_frames = _rollout_log(target, episodes, every_frame=True, **plan)
        needed, frames = _rollout_log(target, episodes, **plan)
        _assert_same_steps(every, needed, 10)
        assert all(every_frames) and sum(frames) == 3 * 5  # steps 0, 3, 4, 7, 8 of 3 episodes
    assert [t for t in range(10) if frame_read(t, receding, 2)] == [0, 3, 4, 7, 8]
    assert all(frame_read(t, {"mode": "ensemble"}, 2) for t in range(10))
    assert all(frame_read(t, {"mode": "receding", "n_action_steps": 4}, 4) for t in range(10))


def test_the_cpu_plan_fills_the_cores_without_oversubscribing_them():
    from robo_s2.evaluation.cpu_plan import plan_cpu

    two = plan_cpu(200, cores=2)
    assert (two.workers, two.envs_per_worker, two.lanes, two.torch_threads) == (2, 16, 2, 1)
    assert two.batch == 16 and two.raster_threads == 0  # each renderer in its own thread
    many = plan_cpu(200, cores=16)
    assert (many.workers, many.envs_per_worker, many.torch_threads) == (16, 2, 8)
    assert plan_cpu(3, cores=2).n_envs == 2  # no env without an episode
    assert plan_cpu(200, cores=2, pipeline=False).torch_threads == 1  # lockstep: one lane
    assert plan_cpu(200, cores=4, device_type="cuda").torch_threads == 1
    serial = plan_cpu(200, cores=2, workers=0)
    assert (serial.workers, serial.torch_threads, serial.raster_threads) == (0, 2, None)
    mine = plan_cpu(200, cores=2, workers=3, envs_per_worker=2, torch_threads=2)
    assert (mine.workers, mine.envs_per_worker, mine.torch_threads) == (3, 2, 2)  # kept
    with pytest.raises(UserError, match="envs_per_worker=0 must be an integer >= 1 or auto"):
        plan_cpu(10, envs_per_worker=0)


def test_checkpoint_for_another_env_is_refused(tmp_path):
    foreign = tiny_policy_checkpoint(tmp_path / "foreign", env_id="robomimic/Lift")
    with pytest.raises(
        UserError, match="trained on robomimic/Lift demos; evaluation needs robo_s2/"
    ):
        evaluate(foreign, n_episodes=1, positions="random", workers=0)
    yaw = tiny_policy_checkpoint(tmp_path / "yaw", action_dim=5, env_kwargs={"randomize_yaw": True})
    with pytest.raises(UserError, match="5-D actions but the env takes 4-D"):
        evaluate(
            yaw, n_episodes=1, positions="random", workers=0, env_overrides={"randomize_yaw": False}
        )
    with pytest.raises(UserError, match="unknown env_overrides"):
        evaluate(
            "expert", n_episodes=1, positions="random", workers=0, env_overrides={"cube_colour": 1}
        )


def test_sharded_evaluation_merges_into_the_unsharded_run(tiny_checkpoint, tmp_path):
    from robo_s2.evaluation.shards import merge_eval_infos, parse_shard, shard_range

    kw = {"n_episodes": 5, "positions": "random", "seed": 4, "env_overrides": SHORT,
          "precision": "fp32", "n_videos": 0}  # fmt: skip
    whole = evaluate(tiny_checkpoint, workers=0, **kw)
    dirs = []
    for i, workers in ((0, 0), (1, 2), (2, 0)):
        dirs.append(tmp_path / f"shard{i}")
        part = evaluate(tiny_checkpoint, workers=workers, shard=(i, 3), out_dir=dirs[-1], **kw)
        assert [r.index for r in part.records] == list(shard_range(5, (i, 3)))
        assert part.info["shard"] == {"index": i, "count": 3, "n": len(part.records)}
        assert part.info["positions"]["n"] == 5
    assert [len(shard_range(5, (i, 3))) for i in range(3)] == [1, 2, 2]
    merged = merge_eval_infos(list(reversed(dirs)))
    assert merged["per_episode"] == [r.to_dict() for r in whole.records]
    for key in ("pc_success", "n_success", "n_episodes", "ci95", "avg_episode_length",
                "positions", "checkpoint", "encoder"):  # fmt: skip
        assert merged[key] == whole.info[key], key
    assert "shard" not in merged and len(merged["merged_from"]) == 3
    # the CLI writes the merged eval_info.json; incomplete or mixed sets are one clear line
    out = robo_s2("eval", f"merge=[{','.join(map(str, dirs))}]", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "merged from 3 shards" in out.stdout.strip().splitlines()[-1]
    saved = json.loads((tmp_path / "run_out" / "eval_info.json").read_text())
    assert saved["per_episode"] == merged["per_episode"]
    with pytest.raises(UserError, match=r"missing \[1\], repeated \[0\]"):
        merge_eval_infos([dirs[0], dirs[0], dirs[2]])
    evaluate(tiny_checkpoint, workers=0, shard=(1, 3), out_dir=tmp_path / "other",
             **{**kw, "seed": 5})  # fmt: skip
    with pytest.raises(UserError, match="its positions differs"):
        merge_eval_infos([dirs[0], tmp_path / "other", dirs[2]])
    for bad in ("3/3", "1", "a/b", "0/0"):
        with pytest.raises(UserError, match="must be i/n with 0 <= i < n"):
            parse_shard(bad)
    with pytest.raises(UserError, match="asks for 6 slices of 5 episodes"):
        evaluate(tiny_checkpoint, workers=0, shard=(0, 6), **kw)


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_expert_run_ends_with_one_summary_line(tmp_path):
    out = robo_s2(
        "eval", "checkpoint=expert", "positions=grid", "n_episodes=4", "workers=2", "n_videos=0",
        "env_overrides.image_size=64", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("eval: 4/4 success (100.0%, 95% CI 51.0\u2013100.0%) on grid in ")
    assert last.endswith(f"-> {tmp_path}/run/eval_info.json")
    assert json.loads((tmp_path / "run" / "eval_info.json").read_text())["n_episodes"] == 4


def _corrupt_fingerprint(checkpoint, directory):
    import shutil

    bad = directory / "bad_fingerprint"
    shutil.copytree(checkpoint, bad)
    meta = json.loads((bad / "robo_s2.json").read_text())
    meta["encoder"]["fingerprint"] = "0" * 64
    (bad / "robo_s2.json").write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["checkpoint=nowhere/checkpoints/best"],
            "checkpoint nowhere/checkpoints/best does not exist",
        ),
        ([], "checkpoint= is required"),
        (["checkpoint=expert", "n_episodes=0"], "n_episodes=0 must be an integer > 0"),
        (["checkpoint=expert", "positions=paper17"], "unknown position set 'paper17'"),
        (["checkpoint=BAD"], "now has other weights than the policy"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, tiny_checkpoint, args, message):
    args = [f"checkpoint={_corrupt_fingerprint(tiny_checkpoint, tmp_path)}" if a == "checkpoint=BAD"
            else a for a in args]  # fmt: skip
    out = robo_s2("eval", *args, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr


# --- provenance ----------------------------------------------------------------------------------


def test_checkpoint_and_eval_info_name_the_software_and_warn_on_another_mujoco(
    tiny_checkpoint, tmp_path
):
    import shutil

    import mujoco

    from robo_s2.core.versions import software_versions

    meta = json.loads((tiny_checkpoint / "robo_s2.json").read_text())
    for key in ("python", "torch", "timm", "mujoco", "numpy", "zarr", "cpu", "torch_threads"):
        assert meta["versions"][key], key
    assert meta["versions"]["mujoco"] == mujoco.__version__
    assert isinstance(meta["versions"]["cpu_bf16_flags"], list)

    same = robo_s2(
        "eval", f"checkpoint={tiny_checkpoint}", "positions=random", "n_episodes=1", "workers=0",
        "n_videos=0", "env_overrides.max_episode_steps=3", f"hydra.run.dir={tmp_path}/same", cwd=tmp_path,
    )  # fmt: skip
    assert same.returncode == 0, same.stderr
    assert "MuJoCo" not in same.stderr
    info = json.loads((tmp_path / "same" / "eval_info.json").read_text())
    assert info["versions"]["mujoco"] == mujoco.__version__
    assert info["versions"].keys() == software_versions().keys()

    old = tmp_path / "old_mujoco"
    shutil.copytree(tiny_checkpoint, old)
    meta["versions"]["mujoco"] = "3.3.7"
    (old / "robo_s2.json").write_text(json.dumps(meta))
    other = robo_s2(
        "eval", f"checkpoint={old}", "positions=random", "n_episodes=1", "workers=0",
        "n_videos=0", "env_overrides.max_episode_steps=3", f"hydra.run.dir={tmp_path}/other", cwd=tmp_path,
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    warnings = [line for line in other.stderr.splitlines() if "MuJoCo" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ")
    assert f"MuJoCo 3.3.7, evaluation runs MuJoCo {mujoco.__version__}" in warnings[0]
