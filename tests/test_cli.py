"""The robo-s2 console script: dispatch, config resolution and one-line errors."""

import errno
import os

import pytest
import yaml
from helpers import robo_s2

from robo_s2.cli import COMMANDS
from robo_s2.paths import config_dir


def test_every_command_has_a_config_and_module():
    for name, (module, _) in COMMANDS.items():
        assert (config_dir() / f"{name}.yaml").is_file(), name
        __import__(f"robo_s2.commands.{module}")


def test_help_lists_commands():
    out = robo_s2("--help")
    assert out.returncode == 0
    assert "collect" in out.stdout
    # every format import and export speak, named where a user looks first
    for line in ("import ", "export "):
        entry = next(x for x in out.stdout.splitlines() if x.strip().startswith(line))
        assert all(f in entry for f in ("robomimic", "diffusion_policy", "LeRobot")), entry


def test_unknown_command_is_one_line_error():
    out = robo_s2("colect")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown command 'colect'")


@pytest.mark.parametrize("override", ["n_episode=3", "env.imagesize=64"])
def test_unknown_key_is_one_line_error(override):
    out = robo_s2("collect", override)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: bad override") and override.split("=")[0] in lines[0]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "override, where",
    [
        ("+experiment.demos.env.cube_size=0.02", ("demos", "env", "cube_size")),
        ("+experiment.rows.1.overrides.backbone={image_size:32}", ("rows", 1, "overrides")),
        ("+experiment.eval.env_overrides.max_episode_steps=6", ("eval", "env_overrides")),
    ],
)
def test_additions_into_what_factories_check_are_accepted(override, where):
    """A key added under an experiment's env, a row's encoder overrides or the eval env reaches
    the constructor that checks it; the typo check must not refuse it."""
    out = robo_s2("experiment", "experiment=table8_cpu", override, "--cfg", "job")
    assert out.returncode == 0, out.stderr
    node = yaml.safe_load(out.stdout)["experiment"]
    for key in where:
        node = node[key]
    assert node


def test_cfg_job_prints_resolved_config(tmp_path):
    out = robo_s2("collect", "--cfg", "job", "n_episodes=7", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "n_episodes: 7" in out.stdout
    assert "image_size: 224" in out.stdout


@pytest.mark.parametrize(
    "override, message",
    [("n_episodes=0", "n_episodes=0 must be > 0"), ("env.image_size=100", "not a multiple")],
)
def test_bad_values_are_one_line_errors(tmp_path, override, message):
    out = robo_s2("collect", f"out={tmp_path}/s.zarr", override, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    "override, named",
    [
        ("train.stepz=1,2", "train.stepz"),  # a swept key with a typo
        ("encoder=vit_t,vit_q", "unknown encoder 'vit_q'"),  # a typo in a later sweep value
        ("train.stepz=[1,2]", "train.stepz"),  # a list value (a comma, but no sweep)
    ],
)
def test_overrides_with_commas_are_checked_too(override, named):
    out = robo_s2("train", "data.store=x.zarr", override, "--multirun")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], out.stderr


def test_a_valid_sweep_passes_the_check(tmp_path):
    from robo_s2.cli import _sweep_variants

    variants = _sweep_variants(["seed=0,1,2", "encoder=vit_t,vit_s", "train.steps=5"])
    assert variants[0] == ["seed=0", "encoder=vit_t", "train.steps=5"]
    assert ["seed=2", "encoder=vit_t", "train.steps=5"] in variants
    assert ["seed=0", "encoder=vit_s", "train.steps=5"] in variants and len(variants) == 4


def test_debug_env_shows_the_traceback_behind_a_one_line_error(tmp_path):
    args = ("train", f"data.store={tmp_path / 'nope.zarr'}")
    quiet = robo_s2(*args, cwd=tmp_path)
    loud = robo_s2(*args, cwd=tmp_path, env={"ROBO_S2_DEBUG": "1"})
    assert quiet.returncode == loud.returncode == 2
    assert "Traceback" not in quiet.stderr and len(quiet.stderr.strip().splitlines()) == 1
    assert "Traceback" in loud.stderr and "UserError" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_machine_fault_is_one_line_naming_the_path(code, capsys):
    from robo_s2.cli import guarded

    def task(cfg):
        raise OSError(code, os.strerror(code), "/data/demos/x.zarr/data/image/c/7")

    with pytest.raises(SystemExit) as e:
        guarded(task, "collect")(None)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: robo-s2 collect: ")
    assert "writing /data/demos/x.zarr/data/image/c/7" in lines[0] and "is kept" in lines[0]
