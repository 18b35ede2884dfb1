"""Success-rate statistics: Wilson by hand, exact McNemar against scipy, paired bootstrap invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from vla_adp.eval.stats import mcnemar_exact, pair_outcomes, paired_bootstrap, success_rate, wilson

# Hand-computed Wilson 95 % intervals, z = 1.959964: centre (k + z²/2)/(n + z²),
# half-width z·sqrt(k(n−k)/n + z²/4)/(n + z²).
WILSON_CASES = [
    (8, 10, 0.490162, 0.943318),  # centre 9.920729/13.841459, half 3.136165/13.841459
    (0, 10, 0.0, 0.277533),  # centre = half = 1.920729/13.841459
    (50, 50, 0.928652, 1.0),  # lower = n/(n + z²)
    (1, 2, 0.094531, 0.905469),
]


@pytest.mark.parametrize("k,n,lo,hi", WILSON_CASES)
def test_wilson_matches_hand_computed_values(k, n, lo, hi):
    got = wilson(k, n)
    assert got == pytest.approx((lo, hi), abs=2e-6)


def test_wilson_other_confidence_and_edge_cases():
    z = 2.575829  # 99 %
    k, n = 30, 40
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    assert wilson(k, n, 0.99) == pytest.approx((centre - half, centre + half), abs=1e-6)
    assert wilson(0, 0) == (0.0, 1.0)
    for bad in [(3, 2), (-1, 5), (1.5, 3)]:
        with pytest.raises(ValueError, match="0 <= k <= n"):
            wilson(*bad)
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 2, 1.5)


@given(st.integers(0, 300).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
@settings(max_examples=200, deadline=None)
def test_wilson_contains_the_rate_and_stays_in_unit_interval(kn):
    k, n = kn
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=0, max_size=120))
@settings(max_examples=200, deadline=None)
def test_mcnemar_exact_equals_scipy_binomtest(pairs):
    a = [x for x, _ in pairs]
    b = [y for _, y in pairs]
    res = mcnemar_exact(a, b)
    assert res.a_only == sum(x and not y for x, y in pairs)
    assert res.b_only == sum(y and not x for x, y in pairs)
    n = res.a_only + res.b_only
    expected = 1.0 if n == 0 else binomtest(res.a_only, n, 0.5, alternative="two-sided").pvalue
    assert res.p_value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_ignores_concordant_pairs_and_is_symmetric():
    a = [True] * 40 + [True] * 9 + [False] * 1
    b = [True] * 40 + [False] * 9 + [True] * 1
    r = mcnemar_exact(a, b)
    assert (r.a_only, r.b_only) == (9, 1)
    assert r.p_value == pytest.approx(2 * 11 / 2**10)  # 2·P[X <= 1], X ~ Bin(10, 1/2)
    assert mcnemar_exact(b, a).p_value == r.p_value
    with pytest.raises(ValueError, match="equal lengths"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_interval_brackets_the_difference():
    rng = np.random.default_rng(1)
    a = rng.random(200) < 0.9
    b = rng.random(200) < 0.7
    d = paired_bootstrap(a, b, n_boot=4000, seed=3)
    assert d.diff == pytest.approx(a.mean() - b.mean())
    assert d.lo < d.diff < d.hi
    assert d.n == 200
    assert paired_bootstrap(a, b, n_boot=4000, seed=3) == d  # seeded
    # the standard error of a mean of paired differences: the interval is about ±1.96·sd/√n
    sd = np.std(a.astype(float) - b, ddof=1) / np.sqrt(200)
    assert d.hi - d.lo == pytest.approx(2 * 1.96 * sd, rel=0.15)


def test_paired_bootstrap_of_identical_outcomes_is_exactly_zero():
    a = [True, False, True, True]
    d = paired_bootstrap(a, a, n_boot=100)
    assert (d.diff, d.lo, d.hi) == (0.0, 0.0, 0.0)


def test_pair_outcomes_matches_on_common_keys_only():
    a = {("s", 0, 0): True, ("s", 0, 1): False, ("s", 1, 0): True}
    b = {("s", 0, 1): True, ("s", 1, 0): True, ("s", 2, 0): False}
    keys, xa, xb = pair_outcomes(a, b)
    assert keys == [("s", 0, 1), ("s", 1, 0)]
    assert (xa, xb) == ([False, True], [True, True])


def test_success_rate():
    r = success_rate([True, False, True, True])
    assert (r.k, r.n, r.rate) == (3, 4, 0.75)
    assert (r.lo, r.hi) == wilson(3, 4)
