"""Intervals and tests of antidote.stats against values computed by hand."""

import math

import numpy as np
import pytest

from antidote.stats import (crossed_bootstrap_interval, holm, mcnemar_exact, paired_difference_interval,
                            wilson_interval, z_value)


def test_wilson_interval_against_hand_computed_values():
    z2 = 1.959963984540054 ** 2
    assert z_value(0.95) == pytest.approx(1.959963984540054)
    # 0 of 10: [0, z^2 / (n + z^2)]; 10 of 10: [n / (n + z^2), 1]
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    assert wilson_interval(0, 10)[1] == pytest.approx(0.27753, abs=1e-5)
    assert wilson_interval(10, 10) == (pytest.approx(10 / (10 + z2)), 1.0)
    # 5 of 10: centre 0.5, half-width z sqrt(0.025 + z^2 / 400) / (1 + z^2 / 10)
    half = 1.959963984540054 * math.sqrt(0.025 + z2 / 400) / (1 + z2 / 10)
    assert wilson_interval(5, 10) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))
    assert wilson_interval(5, 10) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    # 30 of 100 at 95%, and narrower at 90%
    assert wilson_interval(30, 100) == (pytest.approx(0.21895, abs=1e-5), pytest.approx(0.39585, abs=1e-5))
    low90, high90 = wilson_interval(30, 100, confidence=0.90)
    assert 0.21895 < low90 < 0.3 < high90 < 0.39585
    assert all(math.isnan(b) for b in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="11 successes out of 10"):
        wilson_interval(11, 10)


def test_exact_mcnemar_against_hand_computed_values():
    assert mcnemar_exact(0, 5) == 2 * 0.5 ** 5 == 0.0625
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9) == 2 * (1 + 10) / 1024
    assert mcnemar_exact(5, 5) == 1.0  # min(1, ...): the two tails overlap in the middle
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence either way
    assert mcnemar_exact(0, 1) == 1.0
    # 2,000 discordant pairs: exact rational arithmetic, no overflow of 2 ** n
    assert 0 < mcnemar_exact(900, 1100) < 1e-5 and mcnemar_exact(1000, 1000) == 1.0


def test_newcombe_paired_interval_against_a_hand_computation():
    # 36 counted by both, 12 by the first only, 2 by the second only, none by neither (n = 50):
    # p1 = 48/50, p2 = 38/50; ad - bc = -24 < 0, so phi = -24 / sqrt(48 * 2 * 38 * 12)
    l1, u1 = wilson_interval(48, 50)
    l2, u2 = wilson_interval(38, 50)
    phi = -24 / math.sqrt(48 * 2 * 38 * 12)
    below = math.sqrt((0.96 - l1) ** 2 - 2 * phi * (0.96 - l1) * (u2 - 0.76) + (u2 - 0.76) ** 2)
    above = math.sqrt((u1 - 0.96) ** 2 - 2 * phi * (u1 - 0.96) * (0.76 - l2) + (0.76 - l2) ** 2)
    difference, low, high = paired_difference_interval(36, 12, 2, 0)
    assert difference == pytest.approx(0.2)
    assert (low, high) == (pytest.approx(0.2 - below), pytest.approx(0.2 + above))
    assert (low, high) == (pytest.approx(0.0569, abs=1e-4), pytest.approx(0.3404, abs=1e-4))
    # 59 / 6 / 16 / 80 (n = 161): ad - bc = 4624 > n/2, shrunk by n/2 to 4543.5
    l1, u1 = wilson_interval(65, 161)
    l2, u2 = wilson_interval(75, 161)
    p1, p2 = 65 / 161, 75 / 161
    phi = 4543.5 / math.sqrt(65 * 96 * 75 * 86)
    below = math.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    above = math.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    assert paired_difference_interval(59, 6, 16, 80) == (pytest.approx(p1 - p2), pytest.approx(p1 - p2 - below),
                                                         pytest.approx(p1 - p2 + above))
    # 0 < ad - bc <= n/2: phi is 0 (1 / 1 / 7 / 12: ad - bc = 5 <= 10.5)
    l1, u1 = wilson_interval(2, 21)
    l2, u2 = wilson_interval(8, 21)
    p1, p2 = 2 / 21, 8 / 21
    assert paired_difference_interval(1, 1, 7, 12)[1:] == (pytest.approx(p1 - p2 - math.hypot(p1 - l1, u2 - p2)),
                                                          pytest.approx(p1 - p2 + math.hypot(u1 - p1, p2 - l2)))


def test_newcombe_at_0_and_100_percent_and_without_discordant_pairs():
    # every prompt flagged by both, or by neither: difference 0, an interval of the Wilson width
    # on each side (the margins are degenerate, phi is 0)
    for table, rate in [((100, 0, 0, 0), 1.0), ((0, 0, 0, 100), 0.0)]:
        difference, low, high = paired_difference_interval(*table)
        low_rate, high_rate = wilson_interval(round(rate * 100), 100)
        assert difference == 0 and high == pytest.approx(-low) == pytest.approx(high_rate - low_rate)
    # concordant pairs only, some counted: the interval is narrower than with no association
    difference, low, high = paired_difference_interval(30, 0, 0, 70)
    assert difference == 0 and -0.1 < low < 0 < high < 0.1
    # everything the second model counts, the first does not, and vice versa: -100 and +100 points
    assert paired_difference_interval(0, 0, 40, 0)[0] == -1 and paired_difference_interval(0, 40, 0, 0)[0] == 1
    assert paired_difference_interval(0, 40, 0, 0)[1] > 0.8 and paired_difference_interval(0, 40, 0, 0)[2] <= 1


def test_crossed_bootstrap_is_seeded_reproducible_and_covers_the_mean():
    rng = np.random.default_rng(7)
    values = (rng.random((3, 100)) < np.array([[0.2], [0.5], [0.35]])).astype(float)
    first = crossed_bootstrap_interval(values, resamples=2000, seed=0)
    assert crossed_bootstrap_interval(values, resamples=2000, seed=0) == first
    assert crossed_bootstrap_interval(values, resamples=2000, seed=1) != first
    assert first[0] < values.mean() < first[1]
    # the spread between runs widens it beyond what the prompts of one run give
    pooled = crossed_bootstrap_interval(np.full((3, 100), values.mean() > 0) * values.mean(), 2000, 0)
    assert pooled == (pytest.approx(values.mean()), pytest.approx(values.mean()))
    one_run = crossed_bootstrap_interval(values[:1].repeat(3, axis=0), 2000, 0)
    assert first[1] - first[0] > one_run[1] - one_run[0]
    # all zeros (or ones): nothing to resample
    assert crossed_bootstrap_interval(np.zeros((2, 50)), 500, 0) == (0.0, 0.0)
    assert crossed_bootstrap_interval(np.ones((2, 50)), 500, 0) == (1.0, 1.0)


def test_holm_against_hand_computed_values():
    # sorted 0.01, 0.02, 0.03, 0.5 -> 4 x 0.01, max(3 x 0.02, .04), max(2 x 0.03, .06), max(0.5, .06)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    adjusted = holm([0.4, np.nan, 0.3])
    assert adjusted[0] == pytest.approx(0.6) and np.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.6)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
