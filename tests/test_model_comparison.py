"""The comparison statistics on values known by hand."""

import math

import numpy as np
import pytest
from ndlm_sk.model_comparison import corrected_resampled_ttest, mcnemar, wilson_interval


def test_corrected_resampled_ttest_known_value():
    # d = (1, 2, 3): mean 2, var 1; k = 3, n_test / n_train = 1/4 -> t = 2 / sqrt(1/3 + 1/4)
    t, p = corrected_resampled_ttest([0.9, 0.8, 0.7], [-0.1, -1.2, -2.3], n_train=400, n_test=100)
    assert t == pytest.approx(2 / math.sqrt(7 / 12))
    # Student t with 2 degrees of freedom: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t))
    # the correction makes the test more conservative than the plain paired t-test
    plain_t = 2 / math.sqrt(1 / 3)
    assert t < plain_t
    assert math.isnan(corrected_resampled_ttest([1, 1], [0, 0], 4, 1)[0])
    with pytest.raises(ValueError, match="at least 2 folds"):
        corrected_resampled_ttest([1.0], [0.0], 4, 1)


def test_mcnemar_exact_and_chi_square():
    y = np.zeros(40, int)
    a = np.zeros(40, int)
    b = np.zeros(40, int)
    a[:1] = 1  # A wrong on 1 sample that B gets right
    b[1:10] = 1  # B wrong on 9 samples that A gets right
    nb, nc, p = mcnemar(y, a, b)
    assert (nb, nc) == (9, 1)
    assert p == pytest.approx(2 * 11 / 1024)  # 2 P(X <= 1), X ~ Bin(10, 1/2)
    a2, b2 = np.zeros(60, int), np.zeros(60, int)
    a2[:20], b2[20:30] = 1, 1
    nb, nc, p = mcnemar(np.zeros(60, int), a2, b2, exact=False)
    assert (nb, nc) == (10, 20)
    assert p == pytest.approx(math.erfc(math.sqrt(2.7 / 2)))  # chi2 = (10 - 1)^2 / 30 = 2.7, 1 df
    assert mcnemar(y, y, y) == (0, 0, 1.0)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == pytest.approx(0, abs=1e-12) and hi == pytest.approx(0.27753, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.23659, 0.76341), abs=1e-4)
    z = 1.959963984540054
    k, n = 2195, 2314  # our paper-configuration test accuracy, 94.86 %
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
