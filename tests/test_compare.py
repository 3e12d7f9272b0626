"""``robo-s2 compare``: rows of finished experiments in one like-for-like table, and the t
interval over seeds that every table now carries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import robo_s2

from robo_s2.errors import UserError
from robo_s2.evaluation.stats import compare_rates, seed_interval, t_quantile_975
from robo_s2.experiments.compare import run_compare
from robo_s2.experiments.runner import RowResult, RunOutcome, write_reports

DEMOS = {"store": "demos/x.zarr", "n_episodes": 120, "seed": 0, "placement": "random",
         "env": {"image_size": 128}, "expert": {"noise_std": 0.05}}  # fmt: skip
EVAL = {"positions": "random", "seed": 0, "n_episodes": 200, "n_videos": 0, "env_overrides": {}}


def _row(label: str, encoder: str, successes: list[int], n: int = 200) -> RowResult:
    runs = [RunOutcome(label, seed, f"/runs/{label}/seed{seed}", k, n, 1.0, 1.0, 0.4, False)
            for seed, k in enumerate(successes)]  # fmt: skip
    return RowResult(label, encoder, 1000, 0.2, 64, runs)


def _experiment(
    tmp: Path, name: str, rows: list[RowResult], demos: dict | None = None,
    train_overrides: list[str] | None = None,
) -> Path:  # fmt: skip
    out = tmp / name
    out.mkdir()
    setup = {"demos": demos or DEMOS, "eval": EVAL, "train_overrides": train_overrides or []}
    write_reports(name, name, rows, out, "positions=random seed=0", {"commit": "abc"}, setup)
    return out


# ------------------------------------------------------------------------------------------------
# the interval over seeds


def _t_mass_from_zero(q: float, df: int, steps: int = 20000) -> float:
    """P(0 < T < q) for Student's t by Simpson's rule on its density: a reference for the table."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    h = q / steps
    f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(steps + 1)]
    return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


def test_t_quantiles_are_the_975_quantiles() -> None:
    for df in range(1, 31):
        # three decimals of the quantile: the mass to it is 0.475 to within the density x 5e-4
        assert _t_mass_from_zero(t_quantile_975(df), df) == pytest.approx(0.475, abs=3e-5), df
    assert t_quantile_975(500) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_seed_interval_is_the_t_interval_of_the_seed_means() -> None:
    rates = [0.085, 0.99, 0.995, 1.0, 0.325]
    mean, lo, hi = seed_interval(rates)
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / 4)
    assert mean == pytest.approx(sum(rates) / 5)
    assert lo == pytest.approx(mean - 2.776 * sd / math.sqrt(5))
    assert hi == 1.0  # clipped: the unclipped upper end is past 100 %
    # steady seeds give a narrow interval, a single seed none at all
    _, lo, hi = seed_interval([0.90, 0.92, 0.91])
    assert 0.87 < lo < 0.91 < hi < 0.95
    assert seed_interval([0.5]) is None
    with pytest.raises(ValueError):
        seed_interval([0.5, 1.5])


def test_experiment_table_carries_the_seed_interval(tmp_path: Path) -> None:
    out = _experiment(tmp_path, "e", [_row("A", "vit_t", [180, 184, 182]), _row("B", "x", [17])])
    table = json.loads((out / "results.json").read_text())["table"]
    assert table[0]["seed_ci95"] != "" and table[1]["seed_ci95"] == ""
    assert "95% CI over seeds" in (out / "results.md").read_text()
    assert (
        "(3 or 1 per row)" in (out / "results.md").read_text()
        or "(1 or 3 per row)" in (out / "results.md").read_text()
    )


# ------------------------------------------------------------------------------------------------
# compare


def test_compare_puts_rows_of_two_experiments_in_one_table(tmp_path: Path) -> None:
    a = _experiment(tmp_path, "frozen", [_row("ViT-T", "vit_t", [179, 178, 176]),
                                         _row("Oracle", "oracle", [198, 200, 199])],
                    train_overrides=["train.lr=1e-3", "policy.history=16"])  # fmt: skip
    b = _experiment(tmp_path, "e2e", [_row("ResNet", "resnet18_e2e", [198, 199, 200])],
                    train_overrides=["train.lr=1e-3", "policy.history=2"])  # fmt: skip
    res = run_compare(
        [a, b / "results.json"], tmp_path / "out", rows=["Oracle", "ViT-T", "e2e:ResNet"]
    )
    assert [r.label for r in res.rows] == ["Oracle", "ViT-T", "ResNet"]
    data = json.loads(res.json_path.read_text())
    # the statistics are the experiment's own, on the pooled counts of each source's runs
    pair = next(p for p in data["pairwise"] if p["a"] == "ViT-T" and p["b"] == "ResNet")
    c = compare_rates(533, 600, 597, 600)
    assert pair["diff_points"] == round(100 * c.diff, 1)
    assert pair["p_value"] == float(f"{c.p_value:.3g}")
    assert data["table"][2]["per_seed"] == "198/200 199/200 200/200"
    md = res.table_path.read_text()
    assert "policy.history=16" in md and "policy.history=2" in md  # the recipes that differ
    assert (tmp_path / "out" / "results.csv").is_file()


def test_compare_refuses_different_demos_or_positions(tmp_path: Path) -> None:
    a = _experiment(tmp_path, "a", [_row("A", "vit_t", [100])])
    b = _experiment(tmp_path, "b", [_row("B", "vit_t", [100])], demos={**DEMOS, "seed": 1})
    with pytest.raises(UserError, match=r"demos\.seed"):
        run_compare([a, b], tmp_path / "out")
    c = _experiment(tmp_path, "c", [_row("C", "vit_t", [100])])
    data = json.loads((c / "results.json").read_text())
    data["setup"]["eval"]["n_episodes"] = 100
    (c / "results.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"eval\.n_episodes"):
        run_compare([a, c], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a refused comparison


def test_an_ab_names_the_keys_it_varies_and_nothing_else_may_differ(tmp_path: Path) -> None:
    coarse_env = {"image_size": 128, "numslices": 8, "numstacks": 4}
    full = _experiment(tmp_path, "full", [_row("ViT-T", "vit_t", [180, 178, 175])])
    coarse = _experiment(tmp_path, "coarse", [_row("ViT-T", "vit_t", [181, 176, 177])],
                         demos={**DEMOS, "store": "demos/y.zarr", "env": coarse_env})  # fmt: skip
    with pytest.raises(UserError, match=r"demos\.store.*vary="):
        run_compare([full, coarse], tmp_path / "refused")
    with pytest.raises(UserError, match=r"demos\.env"):  # the store alone is not the difference
        run_compare([full, coarse], tmp_path / "refused", vary=["demos.store"])
    vary = ["demos.store", "demos.env.numslices", "demos.env.numstacks"]
    res = run_compare([full, coarse], tmp_path / "ab", vary=vary)
    assert [r.label for r in res.rows] == ["ViT-T [full]", "ViT-T [coarse]"]
    md = res.table_path.read_text()
    assert "demos.env.numslices" in md and "| 8 |" in md and "| None |" in md
    other = _experiment(tmp_path, "other", [_row("ViT-T", "vit_t", [1])],
                        demos={**DEMOS, "env": {**coarse_env, "cube_size": 0.02}})  # fmt: skip
    with pytest.raises(UserError, match=r"demos\.env"):
        run_compare([full, other], tmp_path / "refused", vary=vary)
    with pytest.raises(UserError, match="must name a setup key"):
        run_compare([full, coarse], tmp_path / "refused", vary=["numslices"])
    assert not (tmp_path / "refused").exists()


def test_compare_names_repeated_labels_and_refuses_ambiguous_ones(tmp_path: Path) -> None:
    a = _experiment(tmp_path, "a", [_row("ViT-T", "vit_t", [100])])
    b = _experiment(tmp_path, "b", [_row("ViT-T", "vit_t", [150])])
    res = run_compare([a, b], tmp_path / "out")
    assert [r.label for r in res.rows] == ["ViT-T [a]", "ViT-T [b]"]
    with pytest.raises(UserError, match="several sources"):
        run_compare([a, b], tmp_path / "out2", rows=["ViT-T"])
    with pytest.raises(UserError, match="no row 'ViT-S'.*a:ViT-T"):
        run_compare([a, b], tmp_path / "out3", rows=["ViT-S"])


def test_compare_reads_the_setup_of_an_older_results_file_from_its_config(tmp_path: Path) -> None:
    a = _experiment(tmp_path, "a", [_row("A", "vit_t", [100])])
    old = tmp_path / "old" / "sub"
    old.mkdir(parents=True)
    data = json.loads((a / "results.json").read_text())
    del data["setup"]
    data["name"] = "old"
    (old / "results.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not record its demos"):
        run_compare([a, old], tmp_path / "out")
    # the Hydra config the experiment ran with, one directory up (committed results' layout);
    # keys it lacks take configs/base/experiment.yaml's defaults, as the runner did
    demos = {k: v for k, v in DEMOS.items() if k != "placement"}
    (old.parent / "config.yaml").write_text(yaml.safe_dump({"experiment": {
        "demos": demos, "eval": {k: v for k, v in EVAL.items() if k != "env_overrides"},
        "train_overrides": []}}))  # fmt: skip
    res = run_compare([a, old], tmp_path / "out")
    assert [r.label for r in res.rows] == ["A [a]", "A [old]"]


def test_compare_refuses_what_is_not_an_experiment_result(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no experiment results"):
        run_compare([tmp_path / "nowhere"], tmp_path / "out")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        run_compare([bad], tmp_path / "out")
    bad.write_text(json.dumps({"name": "x", "rows": []}))
    with pytest.raises(UserError, match="holds no experiment rows"):
        run_compare([bad], tmp_path / "out")


def test_compare_command(tmp_path: Path) -> None:
    a = _experiment(tmp_path, "a", [_row("A", "vit_t", [100, 120])])
    b = _experiment(tmp_path, "b", [_row("B", "resnet18_e2e", [190, 195])])
    proc = robo_s2("compare", f"results=[{a},{b}]", "name=a_vs_b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "compare a_vs_b: A 55.0%, B 96.2%" in proc.stdout
    assert (tmp_path / "run_out" / "success.png").is_file()
    proc = robo_s2("compare", cwd=tmp_path)
    assert proc.returncode != 0
    assert "compare needs results=" in proc.stderr
