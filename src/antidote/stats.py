"""Intervals and paired tests for the rates of the results.

Harmful score, benign refusal and fine-tune accuracy are each a share of prompts: over 100
prompts a rate is known to a few points only, and two models that answered the same prompts
are compared on the pairs, not as two independent rates. Rates here are fractions (0-1); the
results multiply by 100.

- one run: the Wilson score interval of a rate; for the difference of two models on the same
  prompts, Newcombe's (1998, method 10) score interval for paired proportions and the exact
  McNemar test on the discordant prompts;
- several seeds: a two-way bootstrap that resamples the runs and the prompts (each run answered
  the same prompts), percentile interval; the test pools the discordant prompts of every seed
  (McNemar stratified by seed: under the null each discordant pair is as likely either way).
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np


def z_value(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval of this confidence (1.96 for 0.95)."""
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``successes / n``; NaN where there is no item."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} items")
    z2 = z_value(confidence) ** 2
    p = successes / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2 * p * (1 - p) / n + z2 * z2 / (4 * n * n)) / (1 + z2 / n)
    # at 0 and n the exact bounds are 0 and 1; rounding must not leave them a hair away
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: of the ``b + c`` discordant pairs, ``b`` went one way;
    under the null each went either way with probability 1/2. 1 without discordant pairs."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = Fraction(sum(math.comb(n, i) for i in range(min(only_first, only_second) + 1)), 2 ** n)
    return min(1.0, float(2 * tail))


def paired_difference_interval(both: int, only_first: int, only_second: int, neither: int,
                               confidence: float = 0.95) -> tuple[float, float, float]:
    """The difference p1 - p2 of two proportions measured on the same items, and Newcombe's
    square-and-add score interval for it (1998, method 10: each margin's Wilson interval,
    combined through the correlation of the pairs, whose numerator ``ad - bc`` Newcombe
    shrinks by ``n / 2`` where it is positive, and to 0 where it is under ``n / 2``).
    ``both``, ``only_first``, ``only_second``, ``neither``: the items counted by both, by the
    first only, by the second only, by none."""
    n = both + only_first + only_second + neither
    first, second = both + only_first, both + only_second
    p1, p2 = first / n, second / n
    l1, u1 = wilson_interval(first, n, confidence)
    l2, u2 = wilson_interval(second, n, confidence)
    margins = first * (n - first) * second * (n - second)
    association = both * neither - only_first * only_second
    if association > 0:
        association = max(0.0, association - n / 2)
    phi = association / math.sqrt(margins) if margins else 0.0
    below = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    above = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return p1 - p2, p1 - p2 - below, p1 - p2 + above


def crossed_bootstrap_interval(values: np.ndarray, resamples: int = 2000, seed: int = 0,
                               confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (runs x prompts: every run answered the same
    prompts) under a two-way bootstrap: each resample draws runs and prompts with replacement,
    independently, so the interval carries the spread between seeds and the sampling of prompts.
    ``values`` are 0/1 outcomes, or paired differences in {-1, 0, 1}. The same seed and values
    give the same interval."""
    values = np.asarray(values, dtype=float)
    runs, prompts = values.shape
    rng = np.random.default_rng(seed)
    run_counts = rng.multinomial(runs, np.full(runs, 1 / runs), size=resamples)
    prompt_counts = rng.multinomial(prompts, np.full(prompts, 1 / prompts), size=resamples)
    means = np.einsum("br,rp,bp->b", run_counts, values, prompt_counts) / (runs * prompts)
    low, high = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(low), float(high)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN left out of the family and kept)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted
