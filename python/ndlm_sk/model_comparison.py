"""Statistics for comparing classifiers on the same data: the corrected resampled t-test over
cross-validation folds (Nadeau & Bengio 2003), McNemar's test on paired predictions, and Wilson
intervals of an accuracy. The distributions and exact tests are SciPy's."""

import numpy as np
from scipy import stats


def corrected_resampled_ttest(scores_a, scores_b, n_train, n_test):
    """Nadeau & Bengio's corrected resampled t-test of per-fold scores of two models on the same
    folds: t = mean(d) / sqrt((1/k + n_test/n_train) var(d)), k - 1 degrees of freedom, where d
    are the per-fold differences a - b. The n_test/n_train term corrects the variance for the
    overlap of the training sets. Returns (t, two-sided p); (nan, nan) when var(d) is 0."""
    d = np.asarray(scores_a, float) - np.asarray(scores_b, float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"need per-fold scores of at least 2 folds for both models, got shape {d.shape}")
    if not (n_train > 0 and n_test > 0):
        raise ValueError(f"n_train and n_test must be positive, got {n_train}, {n_test}")
    k = len(d)
    var = d.var(ddof=1)
    if var == 0:
        return float("nan"), float("nan")
    t = d.mean() / np.sqrt((1 / k + n_test / n_train) * var)
    return float(t), float(2 * stats.t.sf(abs(t), k - 1))


def mcnemar(y_true, pred_a, pred_b, exact=True):
    """McNemar's test of two models' paired predictions on the same samples. b: samples only A
    gets right, c: only B. Exact: the two-sided binomial test of b out of b + c at 1/2 (SciPy's
    binomtest); otherwise the chi-square statistic with continuity correction. Returns
    (b, c, p); p = 1 when b + c = 0."""
    y_true, pred_a, pred_b = (np.asarray(v) for v in (y_true, pred_a, pred_b))
    if not (y_true.shape == pred_a.shape == pred_b.shape) or y_true.ndim != 1:
        raise ValueError("y_true, pred_a and pred_b must be 1-D arrays of the same length")
    ok_a, ok_b = pred_a == y_true, pred_b == y_true
    b, c = int(np.sum(ok_a & ~ok_b)), int(np.sum(~ok_a & ok_b))
    if b + c == 0:
        return b, c, 1.0
    if exact:
        return b, c, float(stats.binomtest(b, b + c, 0.5).pvalue)
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    return b, c, float(stats.chi2.sf(chi2, 1))


def wilson_interval(n_correct, n, confidence=0.95):
    """Wilson score interval of an accuracy of n_correct out of n (SciPy's binomtest)."""
    ci = stats.binomtest(int(n_correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
