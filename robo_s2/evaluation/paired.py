"""Paired, seed-level and multiplicity-corrected comparisons of two rows evaluated on the same
positions — what a reviewer asks of an encoder table, computed with scipy and statsmodels.

Every row of an experiment is evaluated on the same position set (same positions, same episode
seeds) for every training seed, so episode ``i`` of row A and episode ``i`` of row B face the same
cube. That pairing is the strongest design the table has; the pooled Fisher test of
:mod:`robo_s2.evaluation.stats` ignores it (and treats seeds as exchangeable). Here, for rows A and
B with per-seed, per-episode successes ``a[s][i]``, ``b[s][i]`` (0/1):

* **paired by position** — the difference of success rates with a paired bootstrap interval over
  positions (``scipy.stats.bootstrap(paired=True)``: positions are resampled, each carrying its
  mean success over seeds for both rows), and McNemar's exact test on the discordant
  (seed, position) pairs (``statsmodels.stats.contingency_tables.mcnemar(exact=True)``);
* **seed-level** — :func:`seed_comparison`, Welch's t-test over the per-seed success rates
  (``scipy.stats.ttest_ind(equal_var=False)``) with its 95 % interval of the difference: seeds as
  the units, so a recipe that collapses on one seed widens it (needs two or more seeds per row,
  and no per-episode records: committed tables without them get it too);
* **Holm** — :func:`holm` adjusts a table's p-values for the number of pairs compared
  (``statsmodels.stats.multitest.multipletests(method="holm")``).

Proportions are in [0, 1]; the tables multiply by 100.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # the interval is a deterministic function of the records


@dataclass(frozen=True)
class PairedComparison:
    """Row A versus row B on shared positions; proportions in [0, 1]."""

    diff: float  # mean success of A minus B over every (seed, position)
    paired_ci95: tuple[float, float]  # bootstrap over positions (percentile)
    mcnemar_p: float  # exact, on the discordant (seed, position) pairs
    discordant: tuple[int, int]  # (A succeeded, B failed), (A failed, B succeeded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _matrix(runs: Sequence[Sequence[int]], name: str) -> np.ndarray:
    m = np.asarray([[int(x) for x in run] for run in runs], dtype=np.int64)
    if m.ndim != 2 or m.size == 0 or not np.isin(m, (0, 1)).all():
        raise ValueError(f"{name}: per-seed lists of 0/1 successes of equal length are needed")
    return m


def paired_comparison(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> PairedComparison:
    """Compare rows ``a`` and ``b``: per training seed, the 0/1 success of every episode of the
    shared position set in episode order (``a[s][i]`` and ``b[s][i]`` faced the same position).
    The rows may have different numbers of seeds but the same episodes per seed."""
    from scipy import stats
    from statsmodels.stats.contingency_tables import mcnemar

    ma, mb = _matrix(a, "row A"), _matrix(b, "row B")
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"rows have {ma.shape[1]} and {mb.shape[1]} episodes per seed")
    pos_a, pos_b = ma.mean(axis=0), mb.mean(axis=0)  # per position, mean over seeds
    diff = float(ma.mean() - mb.mean())
    if np.all(pos_a - pos_b == pos_a[0] - pos_b[0]):  # no spread to resample
        paired = (float(pos_a[0] - pos_b[0]),) * 2
    else:
        boot = stats.bootstrap(
            (pos_a, pos_b),
            lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
        paired = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    # McNemar on (seed, position) pairs: seeds are matched by their order (each a fresh draw)
    n = min(len(ma), len(mb))
    xa, xb = ma[:n].ravel(), mb[:n].ravel()
    only_a, only_b = int(np.sum((xa == 1) & (xb == 0))), int(np.sum((xa == 0) & (xb == 1)))
    both, neither = int(np.sum((xa == 1) & (xb == 1))), int(np.sum((xa == 0) & (xb == 0)))
    mcnemar_p = float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return PairedComparison(
        diff=diff, paired_ci95=paired, mcnemar_p=mcnemar_p, discordant=(only_a, only_b)
    )


@dataclass(frozen=True)
class SeedComparison:
    """Row A versus row B with training seeds as the units; proportions in [0, 1]."""

    diff: float  # mean per-seed rate of A minus B
    ci95: tuple[float, float]  # Welch's 95 % interval of the difference
    welch_p: float


def seed_comparison(rates_a: Sequence[float], rates_b: Sequence[float]) -> SeedComparison | None:
    """Welch's t-test over per-seed success rates; ``None`` with fewer than two seeds in a row or
    when neither row varies over its seeds (the test is undefined there)."""
    from scipy import stats

    ra, rb = np.asarray(rates_a, dtype=float), np.asarray(rates_b, dtype=float)
    if len(ra) < 2 or len(rb) < 2 or (np.ptp(ra) == 0 and np.ptp(rb) == 0):
        return None
    with warnings.catch_warnings():  # one row without spread: scipy warns, the test stands
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(ra, rb, equal_var=False)
        ci = t.confidence_interval(0.95)
    return SeedComparison(
        float(ra.mean() - rb.mean()), (float(ci.low), float(ci.high)), float(t.pvalue)
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values (family-wise error over the given ones; ``None`` entries are not
    tests and stay ``None``)."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if idx:
        adjusted = multipletests([float(pvalues[i]) for i in idx], method="holm")[1]  # type: ignore[arg-type]
        for i, p in zip(idx, adjusted, strict=True):
            out[i] = float(p)
    return out
