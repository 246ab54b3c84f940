"""Calibrated probabilities: temperature scaling fitted on validation data, and the expected
calibration error.

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) divides the
network's logits by one number ``T`` before the softmax, chosen to minimise the negative log
likelihood (NLL) of held-out labeled images. ``T > 1`` softens over-confident probabilities. It
cannot change which class is predicted (without TTA: ``argmax`` is unchanged; with TTA the mean of
the tempered softmaxes can, rarely, switch between near ties), so accuracy is kept and only the
confidences move. It works on the logits, not on the float32 probabilities, whose small entries
underflow to 0 on confident images (so no power of them can recover what was lost).

:func:`calibrate_temperature` fits it for a fitted :class:`~ndlm_sk.NDLMClassifier` and stores it as
the fitted attribute ``temperature_`` (with ``calibration_``, a record of the fit), which
``predict_proba`` / ``predict`` then apply, which ``.ndlm`` files keep (checked on load: a finite
number in [MIN_TEMPERATURE, MAX_TEMPERATURE]) and which the ONNX export folds in (logits divided by
``T`` before its softmax). With ``tta=True`` the temperature is applied to every view before the
views' probabilities are averaged, and it is fitted that way when the model has ``tta=True``.

scikit-learn's ``CalibratedClassifierCV(FrozenEstimator(model), method="sigmoid" | "isotonic")``
works on ``model`` too (it only calls ``predict_proba``); benchmarks/calibration_tta.py compares them.
"""

import numpy as np

__all__ = [
    "MIN_TEMPERATURE",
    "MAX_TEMPERATURE",
    "softmax",
    "mean_softmax",
    "temperature_nll",
    "fit_temperature",
    "calibrate_temperature",
    "calibration_bins",
    "expected_calibration_error",
]

#: Range searched by :func:`fit_temperature`, and accepted in a model file.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-2, 1e2


def _log_softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits, temperature=1.0):
    """``softmax(logits / temperature)`` over the last axis, in float64."""
    return np.exp(_log_softmax(logits, temperature))


def _views(logits):
    z = np.asarray(logits)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[-1] < 2:
        raise ValueError(f"logits must have shape (n, n_classes) or (n_views, n, n_classes), got {z.shape}")
    return z


def mean_softmax(logits, temperature=1.0):
    """Probabilities (n, n_classes), float64: ``softmax(logits / temperature)`` of (n, n_classes)
    logits, or its mean over the views of (n_views, n, n_classes) logits (what ``tta`` averages)."""
    return softmax(_views(logits), temperature).mean(axis=0)


def temperature_nll(logits, y, temperature):
    """Mean negative log likelihood of the labels ``y`` (class indices) under
    :func:`mean_softmax` ``(logits, temperature)``, computed in log space (no clipping)."""
    z = _views(logits)
    y = np.asarray(y)
    lp = _log_softmax(z, temperature)[:, np.arange(z.shape[1]), y]  # (n_views, n)
    m = lp.max(axis=0)
    log_mean = m + np.log(np.exp(lp - m).mean(axis=0))
    return float(-np.mean(log_mean))


def fit_temperature(logits, y):
    """The temperature minimising :func:`temperature_nll` on (logits, y); a float in
    [MIN_TEMPERATURE, MAX_TEMPERATURE].

    ``y`` holds class indices (columns of ``logits``). Bounded Brent search over ``log T``: for one
    view the NLL is convex in ``1/T``, so the minimum found is the global one.
    """
    from scipy.optimize import minimize_scalar

    z = _views(logits)
    y = np.asarray(y)
    if y.shape != (z.shape[1],):
        raise ValueError(f"{z.shape[1]} rows of logits but y has shape {y.shape}")
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one labeled image")
    if not (np.issubdtype(y.dtype, np.integer) and y.min() >= 0 and y.max() < z.shape[-1]):
        raise ValueError(f"y must be class indices in [0, {z.shape[-1]})")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    res = minimize_scalar(
        lambda t: temperature_nll(z, y, np.exp(t)),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(np.clip(np.exp(res.x), MIN_TEMPERATURE, MAX_TEMPERATURE))


def calibrate_temperature(model, X_val, y_val):
    """Fit ``model.temperature_`` on labeled validation images; returns ``model``.

    The logits of ``X_val`` (with ``model.tta``: of each symmetry) are computed once, the temperature
    minimising their NLL is stored as ``model.temperature_`` and ``model.calibration_`` records
    ``{"method", "n_samples", "tta", "nll_before", "nll_after"}``. Use images the model was not
    trained on (the validation part); a review threshold (:func:`ndlm_sk.review.fit_review_rule`)
    should be fitted after the calibration, on the calibrated probabilities.
    """
    from sklearn.utils.validation import check_is_fitted

    from .estimator import _view_logits

    check_is_fitted(model, "_net")
    y_val = np.asarray(y_val)
    unknown = np.setdiff1d(np.unique(y_val), model.classes_)
    if unknown.size:
        raise ValueError(f"y_val has labels not in classes_ {list(model.classes_)}: {unknown.tolist()[:5]}")
    X = model._validate_X(X_val, reset=False)
    if len(X) != len(y_val):
        raise ValueError(f"X_val has {len(X)} samples but y_val has {len(y_val)}")
    model._net.n_threads = model._threads()
    logits = _view_logits(model._net, X, int(model.predict_batch_size), len(model.classes_), bool(model.tta))
    model._net.release_buffers()
    y_idx = np.searchsorted(model.classes_, y_val)
    t = fit_temperature(logits, y_idx)
    model.temperature_ = t
    model.calibration_ = {
        "method": "temperature",
        "n_samples": int(len(y_idx)),
        "tta": bool(model.tta),
        "nll_before": temperature_nll(logits, y_idx, 1.0),
        "nll_after": temperature_nll(logits, y_idx, t),
    }
    return model


def _check_top_label(y_true, proba, classes):
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be (n, n_classes), got shape {proba.shape}")
    y_true = np.asarray(y_true)
    if len(y_true) != len(proba):
        raise ValueError(f"{len(proba)} rows of proba but {len(y_true)} labels")
    if classes is None:
        y_idx = y_true
    else:
        classes = np.asarray(classes)
        y_idx = np.searchsorted(classes, y_true)
        if np.any(y_idx >= len(classes)) or np.any(classes[np.minimum(y_idx, len(classes) - 1)] != y_true):
            raise ValueError("y_true has labels not in classes")
    return y_idx, proba


def calibration_bins(y_true, proba, *, classes=None, n_bins=15):
    """Top-label reliability table: bins of equal width over the top probability (bin ``b`` holds
    ``b/n_bins < confidence <= (b+1)/n_bins``; confidence 0 goes to bin 0).

    ``y_true``: class indices, or labels with ``classes`` (the columns of ``proba``, sorted, as a
    classifier's ``classes_``). Returns a dict of arrays of length ``n_bins``: ``count``,
    ``confidence`` (mean top probability) and ``accuracy`` (share of correct top labels; NaN for an
    empty bin), and ``edges`` (n_bins + 1).
    """
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1):
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    y_idx, proba = _check_top_label(y_true, proba, classes)
    conf = proba.max(axis=1)
    correct = (np.argmax(proba, axis=1) == y_idx).astype(np.float64)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(b, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(b, weights=correct, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(y_true, proba, *, classes=None, n_bins=15):
    """Top-label expected calibration error: ``sum_b |B_b| / n * |accuracy_b - confidence_b|`` over
    the :func:`calibration_bins` (15 bins of equal width, as in Guo et al. 2017)."""
    t = calibration_bins(y_true, proba, classes=classes, n_bins=n_bins)
    used = t["count"] > 0
    gap = np.abs(t["accuracy"][used] - t["confidence"][used])
    return float(np.sum(t["count"][used] * gap) / np.sum(t["count"]))
