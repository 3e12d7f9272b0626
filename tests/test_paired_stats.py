"""The experiment tables' statistics against scipy and statsmodels: the hand-written Wilson,
Newcombe and Fisher, and the paired (bootstrap over positions, McNemar), seed-level (Welch) and
Holm columns of the pairwise table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from robo_s2.evaluation.paired import holm, paired_comparison, seed_comparison
from robo_s2.evaluation.stats import fisher_exact_p, newcombe_interval, wilson_interval
from robo_s2.experiments.runner import (
    RowResult,
    RunOutcome,
    pairwise_markdown,
    pairwise_table,
    results_markdown,
)

COUNTS = [(0, 16), (3, 16), (12, 16), (16, 16), (56, 70), (48, 80), (179, 200), (533, 600)]


@pytest.mark.parametrize("k, n", COUNTS)
def test_wilson_matches_statsmodels(k, n):
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=2e-4)  # z 1.96 vs 1.959964


@pytest.mark.parametrize(
    "a, b", [(COUNTS[i], COUNTS[j]) for i in range(8) for j in range(8) if i != j]
)
def test_fisher_and_newcombe_match_scipy_and_statsmodels(a, b):
    (k1, n1), (k2, n2) = a, b
    p = stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue
    assert fisher_exact_p(k1, n1, k2, n2) == pytest.approx(p, rel=1e-6, abs=1e-12)
    d, lo, hi = newcombe_interval(k1, n1, k2, n2)
    ref = confint_proportions_2indep(k1, n1, k2, n2, method="newcomb", compare="diff")
    assert (lo, hi) == pytest.approx(ref, abs=3e-4)
    assert d == pytest.approx(k1 / n1 - k2 / n2)


def _rows(rng, rate, n_seeds, n_pos, base=None, flip=0.0):
    """Per-seed 0/1 outcomes; with ``base``, a copy of it with a fraction ``flip`` changed."""
    if base is None:
        return (rng.random((n_seeds, n_pos)) < rate).astype(int)
    out = base.copy()
    mask = rng.random(out.shape) < flip
    out[mask] = 1 - out[mask]
    return out


def test_mcnemar_counts_the_discordant_pairs_and_pairing_beats_pooling():
    rng = np.random.default_rng(0)
    a = _rows(rng, 0.8, 3, 200)
    b = a.copy()
    b[:, :24] = 0  # B fails 24 positions where A may have succeeded; identical elsewhere
    pc = paired_comparison(a.tolist(), b.tolist())
    only_a = int(np.sum((a == 1) & (b == 0)))
    assert pc.discordant == (only_a, 0)
    assert pc.mcnemar_p == pytest.approx(stats.binomtest(only_a, only_a, 0.5).pvalue)
    table = [[int(np.sum(a & b)), only_a], [0, int(np.sum((1 - a) & (1 - b)))]]
    assert pc.mcnemar_p == pytest.approx(mcnemar(table, exact=True).pvalue)
    pooled = fisher_exact_p(int(a.sum()), a.size, int(b.sum()), b.size)
    assert pc.mcnemar_p < pooled  # the same data, paired: much stronger evidence
    assert pc.diff == pytest.approx(a.mean() - b.mean())
    lo, hi = pc.paired_ci95
    assert 0 < lo <= pc.diff <= hi
    assert paired_comparison(a.tolist(), b.tolist()) == pc  # deterministic


def test_paired_bootstrap_resamples_positions():
    rng = np.random.default_rng(1)
    a = _rows(rng, 0.85, 3, 200)
    b = _rows(rng, 0.85, 3, 200, base=a, flip=0.1)
    pc = paired_comparison(a.tolist(), b.tolist())
    pos_a, pos_b = a.mean(axis=0), b.mean(axis=0)
    ref = stats.bootstrap(
        (pos_a, pos_b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True, vectorized=True, n_resamples=10_000, method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval  # fmt: skip
    assert pc.paired_ci95 == pytest.approx((ref.low, ref.high))
    # flipping 10 % of an 85 % row loses ~7 points on average: the interval sees it
    assert 0 < pc.paired_ci95[0] < pc.diff < pc.paired_ci95[1]
    same = paired_comparison(a.tolist(), a.tolist())
    assert same.paired_ci95 == (0.0, 0.0) and same.mcnemar_p == 1.0 and same.discordant == (0, 0)


def test_seed_level_is_welch_over_per_seed_rates():
    ra, rb = [0.65, 0.32, 0.57], [0.90, 0.88, 0.91]
    sc = seed_comparison(ra, rb)
    t = stats.ttest_ind(ra, rb, equal_var=False)
    assert sc.welch_p == pytest.approx(t.pvalue)
    ci = t.confidence_interval(0.95)
    assert sc.ci95 == pytest.approx((ci.low, ci.high)) and sc.diff == pytest.approx(
        -0.3833, abs=1e-4
    )
    assert seed_comparison([0.5], [0.6, 0.7]) is None  # one seed: no spread
    assert seed_comparison([0.5, 0.5], [0.6, 0.6]) is None  # no spread on either side


def test_holm_matches_statsmodels_and_skips_missing():
    ps = [0.01, 0.04, 0.03, 0.5]
    assert holm(ps) == pytest.approx(list(multipletests(ps, method="holm")[1]))
    assert holm(ps) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([None, 0.01, None, 0.04]) == [None, pytest.approx(0.02), None, pytest.approx(0.04)]


def _row(label, runs):
    outcomes = [
        RunOutcome(label, s, "", int(sum(r)), len(r), 0.0, 0.0, None, False,
                   episodes="".join(map(str, r)))
        for s, r in enumerate(runs)
    ]  # fmt: skip
    return RowResult(label, label.lower(), 1, 1.0, 8, outcomes)


def test_pairwise_table_has_paired_seed_level_and_holm_columns():
    rng = np.random.default_rng(2)
    a = _rows(rng, 0.9, 3, 200)
    b = _rows(rng, 0.9, 3, 200, base=a, flip=0.02)
    c = a.copy()
    c[:, :40] = 0
    rows = [_row("A", a.tolist()), _row("B", b.tolist()), _row("C", c.tolist())]
    pairs = pairwise_table(rows)
    assert [(p["a"], p["b"]) for p in pairs] == [("A", "B"), ("A", "C"), ("B", "C")]
    for p in pairs:
        assert {"paired_ci95", "mcnemar_p", "holm_mcnemar_p", "seed_ci95", "welch_p",
                "holm_welch_p", "holm_p_value"} <= set(p)  # fmt: skip
    adjusted = multipletests([p["mcnemar_p"] for p in pairs], method="holm")[1]
    assert [p["holm_mcnemar_p"] for p in pairs] == pytest.approx(list(adjusted))
    ac = pairs[1]
    assert ac["holm_mcnemar_p"] < 1e-6 and ac["paired_ci95"][0] > 0
    md = pairwise_markdown(pairs)
    assert "McNemar p" in md and "Holm p (Welch)" in md and "paired 95% CI (positions)" in md
    text = results_markdown("t", "t", rows, [], pairs, "protocol")
    assert "How to read the pairwise table" in text
    json.dumps(pairs)  # results.json stores them


def test_rows_without_records_keep_the_pooled_and_seed_level_columns():
    rows = [_row("A", [[1] * 8 + [0] * 2] * 2), _row("B", [[1] * 4 + [0] * 6, [1] * 6 + [0] * 4])]
    for r in rows:
        for o in r.runs:
            o.episodes = ""  # a result written before per-episode records existed
    (pair,) = pairwise_table(rows)
    assert "mcnemar_p" not in pair and "welch_p" in pair and "holm_p_value" in pair
    md = pairwise_markdown([pair])
    assert "McNemar" not in md and "Welch p" in md
