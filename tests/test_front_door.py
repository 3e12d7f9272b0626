"""Every console command runs its real code path from a fresh process, the way the README shows it.

A broken front door once landed green: ``robo-s2 quickstart`` failed on every fresh machine while
the suite passed, because the only test that ran it was marked slow. Here each command of
``robo_s2.cli.COMMANDS`` runs once, at tiny size, through ``python -m robo_s2`` on the shipped
configs (only sizes are overridden), in one chain: collect -> encode -> train -> eval -> export ->
import, pretrain, encoders, analyze, experiment -> compare, and quickstart. A command added to the
CLI without a case here fails :func:`test_every_command_has_a_front_door_case`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import listed, robo_s2

from robo_s2.cli import COMMANDS
from robo_s2.core.config import load_config, to_plain

IMG = 32  # render and encoder size: the smallest the ViT patching and the env's cameras take
TINY_ENCODER = ["encoder=vit_t", f"encoder.image_size={IMG}", "encoder.pooling=grid:2"]
TINY_TRAIN = [
    "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2", "policy.history=4",
    "policy.chunk=4", "train.batch_size=8", "train.steps=4", "train.warmup_steps=1",
    "train.eval_every=2", "train.save_every=2", "data.val_fraction=0.5",
]  # fmt: skip
# the train.* / policy.* keys above, as the quickstart's and experiments' train_overrides list
TINY_TRAIN_KEYS = {o.split("=", 1)[0] for o in TINY_TRAIN}
SHORT_EVAL = ["positions=random", "n_episodes=1", "n_videos=0", "env_overrides.max_episode_steps=6"]

# command -> the fixture or test below that runs it
CASES = {
    "collect": "store", "train": "checkpoint", "encode": "test_encode", "eval": "test_eval",
    "export": "test_export_then_import", "import": "test_export_then_import",
    "pretrain": "test_pretrain", "encoders": "test_encoders", "analyze": "test_analyze",
    "experiment": "experiment", "compare": "test_experiment_then_compare",
    "quickstart": "test_quickstart_runs_its_shipped_config",
}  # fmt: skip


def run(command: str, *args: str, cwd: Path, timeout: float = 300):
    assert command in CASES, command
    out = robo_s2(command, *args, cwd=cwd, timeout=timeout)
    assert out.returncode == 0, f"robo-s2 {command} failed:\n{out.stderr[-3000:]}"
    return out


def tiny_train_overrides(shipped: list[str]) -> list[str]:
    """``shipped`` (an experiment's train_overrides) with the tiny sizes replacing its own."""
    kept = [o for o in shipped if o.split("=", 1)[0] not in TINY_TRAIN_KEYS]
    return kept + TINY_TRAIN


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("front_door")


@pytest.fixture(scope="module")
def store(work) -> Path:
    out = run(
        "collect", f"out={work / 'demos.zarr'}", "n_episodes=2", "seed=0", "workers=0",
        f"env.image_size={IMG}", f"hydra.run.dir={work / 'collect'}", cwd=work,
    )  # fmt: skip
    assert "2 episodes" in out.stdout.strip().splitlines()[-1], out.stdout
    return work / "demos.zarr"


@pytest.fixture(scope="module")
def checkpoint(work, store) -> Path:
    run_dir = work / "train"
    run(
        "train", f"data.store={store}", *TINY_ENCODER, "policy=chunk_transformer", "seed=0",
        *TINY_TRAIN, f"hydra.run.dir={run_dir}", cwd=work,
    )  # fmt: skip
    best = run_dir / "checkpoints" / "best"
    assert (best / "model.safetensors").is_file()
    return best


@pytest.fixture(scope="module")
def experiment(work) -> Path:
    """``robo-s2 experiment`` on its default config (table8_tiny), one row and seed, tiny."""
    exp = to_plain(load_config("experiment"))["experiment"]
    row = exp["rows"][0]
    out_dir = work / "experiment"
    rows = (
        f"[{{label: {row['label']}, encoder: {row['encoder']}, overrides: {{image_size: {IMG}}}}}]"
    )
    run(
        "experiment", f"experiment.demos.store={work / 'exp_demos.zarr'}",
        "experiment.demos.n_episodes=2", f"experiment.demos.env.image_size={IMG}",
        f"experiment.rows={rows}", "experiment.seeds=[0]",
        f"experiment.train_overrides={listed(tiny_train_overrides(exp['train_overrides']))}",
        "experiment.eval.positions=random", "experiment.eval.n_episodes=1",
        "experiment.eval.n_videos=0", "+experiment.eval.env_overrides.max_episode_steps=6",
        "workers=0", f"hydra.run.dir={out_dir}", cwd=work,
    )  # fmt: skip
    return out_dir


def test_encode(work, store):
    out = run("encode", f"store={store}", *TINY_ENCODER, f"hydra.run.dir={work / 'enc'}", cwd=work)
    assert out.stdout.strip().splitlines()[-1].startswith("encode:"), out.stdout


def test_eval(work, checkpoint):
    run("eval", f"checkpoint={checkpoint}", *SHORT_EVAL, f"hydra.run.dir={work / 'eval'}", cwd=work)
    info = json.loads((work / "eval" / "eval_info.json").read_text())
    assert info["n_episodes"] == 1 and "pc_success" in info and info["versions"]["mujoco"]


def test_export_then_import(work, store):
    hdf5 = work / "demos.hdf5"
    run("export", f"store={store}", f"out={hdf5}", f"hydra.run.dir={work / 'export'}", cwd=work)
    back = work / "reimported.zarr"
    out = run("import", f"src={hdf5}", f"out={back}", f"hydra.run.dir={work / 'imp'}", cwd=work)
    assert "2 episodes" in out.stdout, out.stdout
    assert (back / "meta").is_dir()


def test_pretrain(work, store):
    run_dir = work / "pretrain"
    run(
        "pretrain", f"images=[{store}]", "arch=vit_tiny_patch16_224", f"image_size={IMG}",
        "decoder.dim=32", "decoder.depth=1", "decoder.heads=2", "train.epochs=1",
        "train.batch_size=16", "train.warmup_epochs=0", "frames_per_episode=4",
        "val_fraction=0.5", "recon_images=1", f"hydra.run.dir={run_dir}", cwd=work,
    )  # fmt: skip
    assert (run_dir / "encoder.pth").is_file()


def test_encoders(work):
    out = run(
        "encoders", "names=[vit_t]", "batch_sizes=[1]", "min_time=0.05", "threads=1",
        f"hydra.run.dir={work / 'encoders'}", cwd=work,
    )  # fmt: skip
    assert "vit_t" in out.stdout


def test_analyze(work, store):
    run(
        "analyze", "reconstruct", f"store={store}", f"image_size={IMG}", "device=cpu",
        "source=[vit_t]", "target=vit_t", "threads=1", f"hydra.run.dir={work / 'analyze'}",
        cwd=work,
    )  # fmt: skip
    assert (work / "analyze" / "reconstruct.json").is_file()


def test_experiment_then_compare(work, experiment):
    saved = json.loads((experiment / "results.json").read_text())
    assert saved["provenance"]["mujoco"] and saved["rows"][0]["runs"][0]["n_episodes"] == 1
    run(
        "compare", f"results=[{experiment}]", "name=front_door",
        f"hydra.run.dir={work / 'compare'}", cwd=work,
    )  # fmt: skip
    assert (work / "compare" / "results.md").is_file()


def test_quickstart_runs_its_shipped_config(work):
    """The README's main job on its shipped config, with only its sizes made tiny."""
    exp = to_plain(load_config("quickstart"))["experiment"]
    out_dir = work / "quickstart"
    out = run(
        "quickstart", f"experiment.demos.store={work / 'qs_demos.zarr'}",
        "experiment.demos.n_episodes=2",
        f"experiment.train_overrides={listed(tiny_train_overrides(exp['train_overrides']))}",
        "experiment.eval.positions=random", "experiment.eval.n_episodes=1",
        "experiment.eval.n_videos=0", "+experiment.eval.env_overrides.max_episode_steps=6",
        "workers=0", f"hydra.run.dir={out_dir}", cwd=work,
    )  # fmt: skip
    saved = json.loads((out_dir / "results.json").read_text())
    assert [r["label"] for r in saved["rows"]] == [r["label"] for r in exp["rows"]]
    assert out.stdout.strip().splitlines()[-1].startswith(f"experiment {exp['name']}:")


def test_every_command_has_a_front_door_case():
    assert set(CASES) == set(COMMANDS), sorted(set(COMMANDS) ^ set(CASES))
    assert all(callable(globals().get(name)) for name in CASES.values())


def test_ci_runs_the_readmes_test_command_step_by_step():
    """CI runs the README's test command one step per line (``set -e`` skips a failing step inside
    an ``a && b`` list: a failed install once ran on to "mypy: command not found"), and nothing
    in CI's copy of it may drift from what the README tells a new user."""
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme[:20] if line.startswith("    python3 -m venv")]
    assert len(commands) == 2 and commands[1].endswith("&& pytest"), commands
    steps = commands[1].split(" && ")
    ci = [line.split("#")[0].strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    ci = [line for line in ci if line]
    start = ci.index(steps[0])
    assert ci[start : start + len(steps)] == steps
    assert not any(" && " in line for line in ci), "a step inside an && list escapes set -e"
    assert "set -euo pipefail" in ci
