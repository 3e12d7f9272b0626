"""The encoder-comparison experiment and the quickstart built on it."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN
from omegaconf import OmegaConf
from safetensors.torch import load_file

from robo_s2.core.config import load_config, to_plain
from robo_s2.errors import UserError
from robo_s2.evaluation.stats import compare_rates
from robo_s2.experiments.runner import (
    Row,
    RowResult,
    RunOutcome,
    check_env_options,
    git_commit,
    markdown_table,
    pairwise_table,
    results_table,
    run_experiment,
)

IMG = 64


def tiny_experiment(tmp_path: Path, **changes) -> dict:
    exp = {
        "name": "tiny",
        "title": "tiny test experiment",
        "demos": {"store": str(tmp_path / "demos.zarr"), "n_episodes": 3, "seed": 0,
                  "env": {"image_size": IMG}},
        "rows": [
            {"label": "ViT-T", "encoder": "vit_t",
             "overrides": {"image_size": IMG, "pooling": "grid:2"}},
            {"label": "ViT-T-S2", "encoder": "vit_t_s2",
             "overrides": {"backbone": {"image_size": 32}, "pooling": "grid:2"}},
        ],
        "seeds": [0],
        "train_overrides": TINY_TRAIN,
        "eval": {"positions": "random", "n_episodes": 2, "seed": 3, "n_videos": 0,
                 "env_overrides": {"max_episode_steps": 8}},
        "reference": {"ViT-T-S2": 62.5},
    }  # fmt: skip
    exp.update(changes)
    # what configs/base/experiment.yaml gives every experiment config (demos.placement, ...)
    base = OmegaConf.create(to_plain(load_config("experiment", ["~experiment"]))["experiment"])
    return to_plain(OmegaConf.merge(base, exp))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One tiny experiment run end to end (shared by the tests that read its outputs)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    tmp_path = tmp_path_factory.mktemp("experiment")
    exp = tiny_experiment(tmp_path)
    out = tmp_path / "out"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_experiment(exp, out, workers=0, device="cpu", progress=False)
    finally:
        torch.set_num_threads(before)
    return exp, out, res


def test_experiment_trains_and_evaluates_every_row(finished):
    _, out, res = finished
    assert [r.label for r in res.rows] == ["ViT-T", "ViT-T-S2"]
    for row in res.rows:
        (run,) = row.runs
        assert run.n_episodes == 2 and 0 <= run.n_success <= 2 and not run.reused
        run_dir = Path(run.run_dir)
        assert run_dir == out / "runs" / Row(row.label, row.encoder).slug / "seed0"
        assert (run_dir / "checkpoints" / "best" / "model.safetensors").is_file()
        info = json.loads((run_dir / "eval" / "eval_info.json").read_text())
        assert info["n_episodes"] == 2 and info["positions"]["name"] == "random"
        assert info["positions"]["seed"] == 3


def test_experiment_rows_report_their_cost_and_reference(finished):
    # S² concatenates two scales of the same ViT-T: its parameters (but for the position
    # embeddings of a 32² instead of a 64² input: 12 fewer tokens x 192), twice the feature width
    t, s2 = finished[2].rows
    assert t.params > 5e6 and t.gflops > 0 and s2.gflops > 0
    assert t.params - s2.params == 12 * 192 and s2.feature_dim == 2 * t.feature_dim
    assert s2.reference == 62.5 and t.reference is None


def test_experiment_writes_table_csv_json_and_plot(finished):
    res = finished[2]
    table = res.table_path.read_text()
    assert "| ViT-T |" in table and "| ViT-T-S2 |" in table and "baseline" in table
    assert "Ran at commit " in table
    with open(res.csv_path) as f:
        records = list(csv.DictReader(f))
    assert [r["encoder"] for r in records] == ["ViT-T", "ViT-T-S2"]
    assert records[1]["paper"] == "62.5" and records[0]["vs_first"] == "baseline"
    saved = json.loads(res.json_path.read_text())
    assert [len(r["runs"]) for r in saved["rows"]] == [1, 1]
    assert saved["provenance"]["minutes"] >= 0 and saved["provenance"]["commit"]
    assert [(p["a"], p["b"]) for p in saved["pairwise"]] == [("ViT-T", "ViT-T-S2")]
    assert res.plot_path is not None and res.plot_path.stat().st_size > 1000


def test_experiment_rerun_reads_back_and_a_new_protocol_only_re_evaluates(finished):
    exp, out, res = finished
    # a second invocation reads every run and evaluation back instead of redoing them
    infos = sorted(out.glob("runs/*/seed0/eval/eval_info.json"))
    stamps = [p.stat().st_mtime_ns for p in infos]
    again = run_experiment(exp, out, workers=0, device="cpu", progress=False)
    assert all(run.reused for row in again.rows for run in row.runs)
    assert [p.stat().st_mtime_ns for p in infos] == stamps
    assert [(r.n_success, r.n_episodes) for r in again.rows] == [
        (r.n_success, r.n_episodes) for r in res.rows
    ]
    # a changed evaluation protocol re-evaluates the trained policies, without retraining
    weights = sorted(out.glob("runs/*/seed0/checkpoints/best/model.safetensors"))
    trained = [p.stat().st_mtime_ns for p in weights]
    third = run_experiment(
        {**exp, "eval": {**exp["eval"], "seed": 4}}, out, workers=0, device="cpu", progress=False
    )
    assert not any(run.reused for row in third.rows for run in row.runs)
    assert [p.stat().st_mtime_ns for p in weights] == trained
    assert json.loads(infos[0].read_text())["positions"]["seed"] == 4


def test_rows_in_parallel_jobs_give_the_same_results_as_one_process(tmp_path):
    os.environ.setdefault("MUJOCO_GL", "egl")
    exp = tiny_experiment(tmp_path)
    serial = run_experiment(exp, tmp_path / "serial", workers=0, device="cpu", progress=False)
    parallel = run_experiment(
        exp, tmp_path / "parallel", workers=0, device="cpu", progress=False, jobs=2
    )
    assert [r.label for r in parallel.rows] == [r.label for r in serial.rows]
    for a, b in zip(serial.rows, parallel.rows, strict=True):
        (ra,), (rb,) = a.runs, b.runs
        assert (
            not rb.reused
            and rb.train_seconds > 0
            and Path(rb.run_dir).is_relative_to(tmp_path / "parallel")
        )
        ckpt = Path("checkpoints/best/model.safetensors")
        wa, wb = (load_file(Path(r.run_dir) / ckpt) for r in (ra, rb))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
        ea, eb = (
            json.loads((Path(r.run_dir) / "eval/eval_info.json").read_text()) for r in (ra, rb)
        )
        assert ea["per_episode"] == eb["per_episode"]
    with pytest.raises(UserError, match="jobs=0 must be >= 1"):
        run_experiment(exp, tmp_path / "x", workers=0, device="cpu", progress=False, jobs=0)


def test_results_table_reports_pooled_rates_and_the_comparison():
    def row(label, counts):
        runs = [RunOutcome(label, i, "", k, n, 0.0, 0.0, None, False)
                for i, (k, n) in enumerate(counts)]  # fmt: skip
        return RowResult(label, label.lower(), 5_700_000, 1.26, 192, runs)

    rows = [row("A", [(7, 16), (5, 16)]), row("B", [(12, 16), (13, 16)])]
    records = results_table(rows)
    assert records[0]["success"] == "12/32" and records[1]["success"] == "25/32"
    assert records[0]["per_seed"] == "7/16 5/16" and records[1]["pc_success"] == 78.1
    assert records[0]["params"] == "5.7M"
    c = compare_rates(25, 32, 12, 32)
    assert records[1]["p_value"] == f"{c.p_value:.3g}" and c.p_value < 0.01
    assert records[1]["vs_first"].startswith(f"{100 * c.diff:+.1f} (")
    md = markdown_table(records)
    assert md.splitlines()[0].startswith("| encoder |") and len(md.splitlines()) == 4
    assert "paper %" not in md  # no row has a reference: the column is left out
    oracle = RowResult(
        "Oracle", "oracle", 0, 0.0, 5, rows[0].runs, note="oracle ceiling, not vision"
    )
    assert results_table([oracle, *rows])[0]["encoder"] == "Oracle (oracle ceiling, not vision)"


def test_pairwise_table_compares_every_pair_once():
    def row(label, k, n):
        return RowResult(
            label, label.lower(), 1, 1.0, 8, [RunOutcome(label, 0, "", k, n, 0, 0, None, False)]
        )

    rows = [row("A", 190, 200), row("B", 120, 200), row("C", 118, 200)]
    pairs = pairwise_table(rows)
    assert [(p["a"], p["b"]) for p in pairs] == [("A", "B"), ("A", "C"), ("B", "C")]
    ab, _, bc = pairs
    c = compare_rates(190, 200, 120, 200)
    assert ab["diff_points"] == round(100 * c.diff, 1) == 35.0
    assert ab["ci95"][0] < 35.0 < ab["ci95"][1] and ab["significant"] and ab["p_value"] < 1e-6
    assert bc["ci95"][0] < 0 < bc["ci95"][1] and not bc["significant"] and bc["p_value"] > 0.5


def test_git_commit_names_the_checkout_or_says_unknown(tmp_path):
    commit = git_commit()
    assert commit == "unknown" or len(commit.split("+")[0]) == 40
    assert git_commit(tmp_path) == "unknown"  # not a git checkout


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rows": []}, "has no rows"),
        ({"rows": [{"encoder": "vit_q"}]}, "unknown encoder config 'vit_q'"),
        (
            {"rows": [{"encoder": "vit_t"}, {"encoder": "vit_t"}]},
            "distinct labels; repeated: vit_t",
        ),
        ({"rows": [{"encoder": "mvp_b"}]}, "needs a value for weights"),
        ({"rows": [{"encoder": "vit_t"}], "train_overrides": ["train.stepz=3"]}, "do not compose"),
        ({"seeds": []}, "at least one training seed"),
    ],
)
def test_bad_experiment_configs_fail_before_any_work(tmp_path, change, message):
    exp = tiny_experiment(tmp_path, **change)
    with pytest.raises(UserError, match=message):
        run_experiment(exp, tmp_path / "out", workers=0, device="cpu", progress=False)
    assert not (tmp_path / "demos.zarr").exists()  # nothing collected


@pytest.mark.parametrize(
    "where, key, message",
    [
        ("env", "cube_sise", "experiment.demos.env has no option 'cube_sise' (did you mean cube_size?)"),
        ("expert", "noise_sd", "experiment.demos.expert has no option 'noise_sd' (did you mean noise_std?)"),
        ("env_overrides", "max_steps", "experiment.eval.env_overrides has no option 'max_steps'"),
    ],
)  # fmt: skip
def test_an_option_the_env_or_expert_does_not_take_is_refused_before_any_work(
    tmp_path, where, key, message
):
    """``+experiment.demos.env.<key>`` is open on the command line (every env option may be
    added there); a key the env would not take is refused here, before demos are collected."""
    exp = tiny_experiment(tmp_path)
    node = exp["eval"]["env_overrides"] if where == "env_overrides" else exp["demos"][where]
    node[key] = 0.02
    with pytest.raises(UserError, match=re.escape(message)):
        run_experiment(exp, tmp_path / "out", workers=0, device="cpu", progress=False)
    assert not (tmp_path / "demos.zarr").exists()


def test_every_env_and_expert_option_is_taken(tmp_path):
    """The other side of the check: each option the env and the expert take passes it."""
    import inspect

    from envs.expert import ScriptedExpert
    from envs.registry import env_parameters

    exp = tiny_experiment(tmp_path)
    exp["demos"]["env"].update(dict.fromkeys(env_parameters(), None))
    exp["eval"]["env_overrides"].update(dict.fromkeys(env_parameters(), None))
    exp["demos"]["expert"] = dict.fromkeys(
        set(inspect.signature(ScriptedExpert.__init__).parameters) - {"self"}
    )
    check_env_options(exp)


def test_cli_names_the_missing_weights_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "robo_s2", "experiment", "experiment=table8",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "experiment.weights.base" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_quickstart_succeeds_on_a_cpu(tmp_path):
    """The README's main job: collect, encode, train, evaluate; success clearly above zero."""
    out = subprocess.run(
        [sys.executable, "-m", "robo_s2", "quickstart", f"hydra.run.dir={tmp_path / 'run'}",
         f"experiment.demos.store={tmp_path / 'demos.zarr'}"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    for row in saved["rows"]:  # the vision row and the oracle: at the floor CI holds them to
        (run,) = row["runs"]
        assert run["n_episodes"] == 16 and run["n_success"] >= 11, run


def test_a_job_process_ends_when_its_parent_is_killed():
    parent_code = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import sys, time; from robo_s2.core.process "
        "import start_orphan_watch as e; e(int(sys.argv[1])); print(1, flush=True); "
        "time.sleep(60)', str(os.getpid())], stdout=sys.stdout, stderr=subprocess.DEVNULL)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "1"  # the child is up, its watch started
        time.sleep(1.0)

        def alive() -> bool:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return False
            return "State:\tZ" not in status

        assert alive()  # a living parent keeps it
        parent.kill()  # SIGKILL: no chance to clean up
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive()
    finally:
        parent.kill()


def test_a_protocol_file_from_before_a_key_existed_is_still_reused(finished):
    exp, out, _ = finished
    for path in out.glob("runs/*/seed0/eval/protocol.json"):  # as written before env_overrides
        saved = json.loads(path.read_text())
        saved["seed"] = 4  # the last protocol the module's runs were evaluated under
        path.write_text(json.dumps({k: v for k, v in saved.items() if k != "n_videos"}))
    again = run_experiment(
        {**exp, "eval": {**exp["eval"], "seed": 4, "n_videos": 2}}, out, workers=0,
        device="cpu", progress=False,
    )  # fmt: skip
    assert all(run.reused for row in again.rows for run in row.runs)
