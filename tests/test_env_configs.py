"""configs/env: every env config builds its env; the harder task (cube_pick_small) is what its
file says, and its scripted expert succeeds."""

import math
from pathlib import Path

import pytest

from envs.cube_pick import CubePickEnv
from envs.expert import ScriptedExpert
from robo_s2.paths import config_dir, env_config

ENV_CONFIGS = sorted(p.stem for p in (config_dir() / "env").glob("*.yaml"))


def test_the_env_configs_are_there():
    assert {"cube_pick", "cube_pick_small"} <= set(ENV_CONFIGS)


@pytest.mark.parametrize("name", ENV_CONFIGS)
def test_every_env_config_builds_its_env(name):
    kwargs = env_config(name)
    assert "id" not in kwargs
    env = CubePickEnv(**{**kwargs, "render_images": False})
    described = env.describe()["kwargs"]
    for key, value in kwargs.items():
        if key != "render_images":
            assert described[key] == value, key
    env.close()


def test_cube_pick_small_is_the_harder_task():
    small, default = env_config("cube_pick_small"), env_config("cube_pick")
    assert small["cube_size"] == 0.02 and small["randomize_yaw"] is True
    assert small["cube_region"] == [[0.35, 0.65], [-0.15, 0.15]]
    # the same render profile and camera as the default task: only the task differs
    for key in (
        "image_size",
        "cameras",
        "shadows",
        "shadow_size",
        "msaa_samples",
        "numslices",
        "numstacks",
    ):
        assert small[key] == default[key], key


def test_env_config_overrides_and_paths(tmp_path):
    kwargs = env_config("cube_pick", ["cube_size=0.02", "cube_region=[[0.3, 0.7], [-0.2, 0.2]]"])
    assert kwargs["cube_size"] == 0.02 and kwargs["cube_region"] == [[0.3, 0.7], [-0.2, 0.2]]
    assert env_config(None, ["randomize_yaw=true"]) == {"randomize_yaw": True}
    path = tmp_path / "mine.yaml"
    path.write_text("id: robo_s2/CubePick-v0\ncube_size: 0.03\n")
    assert env_config(path) == {"cube_size": 0.03}
    with pytest.raises(FileNotFoundError, match="cube_pick_small"):
        env_config("no_such_env")
    with pytest.raises(ValueError, match="key=value"):
        env_config(None, ["cube_size"])


def test_cube_pick_small_expert_at_the_corners_and_extreme_yaw():
    env = CubePickEnv(**{**env_config("cube_pick_small"), "render_images": False})
    expert = ScriptedExpert.for_env(env)
    (x0, x1), (y0, y1) = env.cube_region
    corners = [(x0, y0, math.pi / 4 - 1e-3), (x0, y1, -math.pi / 4), (x1, y0, 0.3), (x1, y1, -0.6)]
    for i, (x, y, yaw) in enumerate(corners):
        obs, _ = env.reset(seed=i, options={"cube_pos": (x, y), "cube_yaw": yaw})
        expert.reset(seed=i)
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        assert info["is_success"], (x, y, yaw)
    env.close()


@pytest.mark.slow
def test_cube_pick_small_expert_success_on_200_placements():
    env = CubePickEnv(**{**env_config("cube_pick_small"), "render_images": False})
    expert = ScriptedExpert.for_env(env, noise_std=0.05)
    successes = 0
    for seed in range(200):
        obs, _ = env.reset(seed=seed)
        expert.reset(seed=seed)
        while True:
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        successes += int(info["is_success"])
    env.close()
    assert successes >= 196


def test_expert_success_benchmark_measures_an_env_config(tmp_path, capsys):
    import importlib.util
    import json

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "expert_success.py"
    spec = importlib.util.spec_from_file_location("expert_success", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "expert.json"
    module.main(
        ["--env", "cube_pick_small", "--set", "cube_size=0.025", "--n", "2", "--noise", "0",
         "0.05", "--json", str(out)]
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [r["noise_std"] for r in rows] == [0.0, 0.05]
    for r in rows:
        assert r["env_kwargs"]["cube_size"] == 0.025 and r["env_kwargs"]["randomize_yaw"] is True
        assert r["n"] == 2 and 0.0 <= r["ci_low"] <= r["success_rate"] <= r["ci_high"] <= 1.0
    assert "cube_size" in capsys.readouterr().out
