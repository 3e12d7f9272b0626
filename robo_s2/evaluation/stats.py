"""Honest statistics for success rates measured on a handful of episodes.

* :func:`wilson_interval` — the Wilson score interval of one binomial proportion. Unlike the normal
  ("Wald") interval it stays inside [0, 1], is not degenerate at 0/n or n/n, and keeps close to its
  nominal coverage at the small n of robot evaluations (16 episodes in the S² paper's protocol).
* :func:`newcombe_interval` — Newcombe's hybrid score interval (his method 10, 1998) of the
  DIFFERENCE of two independent proportions, built from the two Wilson intervals. This is what the
  experiment table reports for "encoder A minus encoder B"; an interval that contains 0 means the
  data do not tell the two apart at the 95 % level.
* :func:`fisher_exact_p` — the two-sided p-value of Fisher's exact test on the 2x2 table
  (successes/failures of A and B), exact at any n, no large-sample approximation.
* :func:`compare_rates` — both at once, as a :class:`RateComparison`.
* :func:`seed_interval` — Student's t 95 % interval of the mean of per-seed success rates: the
  interval that sees seed-to-seed variation (a policy recipe that collapses on some seeds), which
  the pooled Wilson interval does not.

All functions take counts (``k`` successes out of ``n`` episodes) and return proportions in [0, 1];
multiply by 100 for percent. Pooling episodes over several training seeds into one ``k/n`` treats
seeds as exchangeable: the interval then covers episode-to-episode noise but understates
seed-to-seed variation, so report per-seed rates beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def _check_counts(k: int, n: int) -> tuple[int, int]:
    if isinstance(k, bool) or isinstance(n, bool):
        raise ValueError("counts must be integers, not booleans")
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    return k, n


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a success rate ``k/n`` (proportions in [0, 1]).

    ``z = 1.96`` gives the usual 95 % interval (e.g. 12/16 -> (0.505, 0.898)); ``n = 0`` gives the
    uninformative (0, 1). At ``k = 0`` the lower end is exactly 0, at ``k = n`` the upper end 1.
    """
    k, n = _check_counts(k, n)
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def newcombe_interval(
    k1: int, n1: int, k2: int, n2: int, z: float = 1.96
) -> tuple[float, float, float]:
    """Difference ``p1 - p2`` of two independent success rates and its Newcombe hybrid score
    interval (method 10 of Newcombe 1998): ``(diff, lo, hi)``, all in [-1, 1].

    ``lo = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)``, ``hi = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)`` with
    ``(l_i, u_i)`` the Wilson intervals. Newcombe's example 56/70 vs 48/80 gives
    0.2000 (0.0524, 0.3339).
    """
    k1, n1 = _check_counts(k1, n1)
    k2, n2 = _check_counts(k2, n2)
    if n1 == 0 or n2 == 0:
        raise ValueError("both rates need at least one episode")
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, lo), min(1.0, hi)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of Fisher's exact test that two success rates are equal.

    Conditions on the total number of successes; sums the hypergeometric probabilities of every
    table no more likely than the observed one (the usual two-sided definition, as in R's
    ``fisher.test`` and ``scipy.stats.fisher_exact``). E.g. 3/4 vs 1/4 -> 0.486.
    """
    k1, n1 = _check_counts(k1, n1)
    k2, n2 = _check_counts(k2, n2)
    total = k1 + k2
    n = n1 + n2
    lo, hi = max(0, total - n2), min(total, n1)
    if n == 0 or lo == hi:
        return 1.0
    log_denom = _log_comb(n, total)

    def prob(a: int) -> float:
        return math.exp(_log_comb(n1, a) + _log_comb(n2, total - a) - log_denom)

    p_obs = prob(k1)
    p = sum(q for q in (prob(a) for a in range(lo, hi + 1)) if q <= p_obs * (1 + 1e-7))
    return min(1.0, p)


class SuccessRate:
    """``pc_success`` and its Wilson ``ci95`` (percent) for a class with ``n_success`` and
    ``n_episodes``."""

    @property
    def n_success(self) -> int:
        raise NotImplementedError

    @property
    def n_episodes(self) -> int:
        raise NotImplementedError

    @property
    def pc_success(self) -> float:
        return 100.0 * self.n_success / max(self.n_episodes, 1)

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson 95 % interval of the success rate, percent."""
        lo, hi = wilson_interval(self.n_success, self.n_episodes)
        return 100.0 * lo, 100.0 * hi


@dataclass(frozen=True)
class RateComparison:
    """Success rate A versus B; proportions in [0, 1]."""

    rate_a: float
    rate_b: float
    diff: float  # rate_a - rate_b
    diff_ci95: tuple[float, float]  # Newcombe hybrid score interval of the difference
    p_value: float  # Fisher's exact test, two-sided

    @property
    def significant(self) -> bool:
        """Whether the 95 % interval of the difference excludes 0."""
        return self.diff_ci95[0] > 0 or self.diff_ci95[1] < 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["diff_ci95"] = list(self.diff_ci95)
        d["significant"] = self.significant
        return d


def compare_rates(k_a: int, n_a: int, k_b: int, n_b: int, z: float = 1.96) -> RateComparison:
    """Compare two success rates: Newcombe interval of ``A - B`` and Fisher's exact p-value."""
    d, lo, hi = newcombe_interval(k_a, n_a, k_b, n_b, z)
    return RateComparison(
        rate_a=k_a / n_a,
        rate_b=k_b / n_b,
        diff=d,
        diff_ci95=(lo, hi),
        p_value=fisher_exact_p(k_a, n_a, k_b, n_b),
    )


# two-sided 95 % quantiles of Student's t, degrees of freedom 1..30 (beyond: the normal's 1.96)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile_975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (three decimals)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def seed_interval(rates: Sequence[float]) -> tuple[float, float, float] | None:
    """Mean of per-seed success rates (proportions) and its Student's t 95 % interval, clipped to
    [0, 1]; ``None`` for fewer than two seeds (no spread to estimate).

    Seeds, not episodes, are the independent units here: with 3-5 seeds the interval is wide
    whenever the seeds disagree, which is the point."""
    n = len(rates)
    if n < 2:
        return None
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise ValueError(f"per-seed rates must lie in [0, 1], got {list(rates)}")
    mean = sum(rates) / n
    sd = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)
