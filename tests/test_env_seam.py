"""One env seam: a new task is a registration plus an env spec (``id``), not edits to collection,
training and evaluation. A second task, registered here, goes through the whole loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

import envs
from robo_s2.core.config import load_config
from robo_s2.errors import UserError

NARROW = "test/CubePickNarrow-v0"  # the cube task with its own defaults: a small centre region
REGION = ((0.47, 0.53), (-0.03, 0.03))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def narrow_task():
    envs.register_task(
        NARROW, "envs.cube_pick:CubePickEnv", cube_region=REGION, image_size=32, shadows=False,
        msaa_samples=0,
    )  # fmt: skip
    yield
    envs.TASKS.pop(NARROW)


def test_make_env_builds_the_task_an_id_names_with_its_defaults():
    env = envs.make_env({"id": NARROW, "render_images": False})
    desc = env.describe()
    assert desc["id"] == NARROW and env.task_id == NARROW
    assert [list(r) for r in env.cube_region] == [list(r) for r in REGION]
    rebuilt = envs.make_env({"id": desc["id"], **desc["kwargs"]})  # a description rebuilds it
    assert rebuilt.describe() == desc
    default = envs.make_env({"render_images": False})
    assert default.task_id == envs.ENV_ID and default.describe()["id"] == envs.ENV_ID
    for e in (env, rebuilt, default):
        e.close()
    with pytest.raises(ValueError, match="unknown env id 'nope/Task-v0'; registered tasks"):
        envs.make_env({"id": "nope/Task-v0"})


def test_a_second_task_runs_collect_train_and_eval_unchanged(tmp_path):
    from robo_s2.data.collection import collect
    from robo_s2.data.store import DemoStore
    from robo_s2.evaluation.runner import evaluate
    from robo_s2.training.trainer import train

    store = tmp_path / "narrow.zarr"
    res = collect(store, n_episodes=4, env_kwargs={"id": NARROW}, seed=0, workers=0)
    assert res.n_total == 4
    attrs = DemoStore.open(store).attrs
    assert attrs["env"]["id"] == NARROW and attrs["env"]["kwargs"]["image_size"] == 32
    cfg = load_config("train", [
        f"data.store={store}", "encoder=oracle", "policy.d_model=32", "policy.n_layers=1",
        "policy.n_heads=2", "policy.history=2", "policy.chunk=4", "train.batch_size=16",
        "train.steps=20", "train.warmup_steps=2", "train.eval_every=10", "train.save_every=10",
        "data.val_fraction=0.25",
    ])  # fmt: skip
    train(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last"
    assert json.loads((ckpt / "robo_s2.json").read_text())["env"]["id"] == NARROW
    out = evaluate(
        ckpt, n_episodes=3, positions="random", workers=0, n_videos=0,
        env_overrides={"max_episode_steps": 4},
    )  # fmt: skip
    assert out.info["env"]["id"] == NARROW
    xy = np.array([r.cube_pos for r in out.records])
    assert np.all((xy[:, 0] >= 0.47) & (xy[:, 0] <= 0.53) & (np.abs(xy[:, 1]) <= 0.03))


def test_a_checkpoint_of_an_unregistered_task_is_refused():
    from robo_s2.evaluation.runner import checkpoint_env_kwargs

    with pytest.raises(
        UserError,
        match="trained on other/Task-v0 demos; evaluation needs robo_s2/CubePick-v0 or test/",
    ):
        checkpoint_env_kwargs({"env": {"id": "other/Task-v0", "kwargs": {}}})
    spec = checkpoint_env_kwargs({"env": {"id": NARROW, "kwargs": {"image_size": 32}}})
    assert spec["id"] == NARROW and spec["image_size"] == 32
