"""The robo-s2 console script: dispatch, config resolution and one-line errors."""

import subprocess
import sys

import pytest

from robo_s2.cli import COMMANDS
from robo_s2.paths import config_dir


def robo_s2(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "robo_s2", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_every_command_has_a_config_and_module():
    for name, (module, _) in COMMANDS.items():
        assert (config_dir() / f"{name}.yaml").is_file(), name
        __import__(f"robo_s2.commands.{module}")


def test_help_lists_commands():
    out = robo_s2("--help")
    assert out.returncode == 0
    assert "collect" in out.stdout


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
