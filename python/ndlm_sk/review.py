"""The review rule: which cells a person should look at, chosen on validation data.

:func:`fit_review_rule` sorts the validation cells by the model's top probability and keeps the
lowest threshold at which the accepted cells (top probability >= threshold) are still classified
at the target accuracy (default 99.5 %). The threshold and the risk-coverage curve are stored on
the model as fitted state (``review_threshold_``, ``review_target_accuracy_``, ``review_curve_``),
so they are saved in ``.ndlm`` files; :func:`ndlm_sk.differential` and ``ndlm-sk count`` use it.
"""

import numpy as np

__all__ = ["fit_review_rule", "plot_risk_coverage"]


def fit_review_rule(model, X_val, y_val, target_accuracy=0.995):
    """Fit the review threshold of ``model`` on labeled validation data; returns ``model``."""
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target_accuracy must be in (0, 1], got {target_accuracy!r}")
    y_val = np.asarray(y_val)
    if len(y_val) == 0:
        raise ValueError("fit_review_rule needs at least one validation image")
    proba = np.asarray(model.predict_proba(X_val), dtype=float)
    if len(proba) != len(y_val):
        raise ValueError(f"{len(proba)} images but {len(y_val)} labels")
    top = proba.max(axis=1)
    right = model.classes_[np.argmax(proba, axis=1)] == y_val
    order = np.argsort(-top, kind="stable")
    top, right = top[order], right[order]
    n_accepted = np.arange(1, len(top) + 1)
    accuracy = np.cumsum(right) / n_accepted
    # a threshold can only cut between distinct probabilities: evaluate at the last cell of each tie group
    last_of_tie = np.r_[top[1:] != top[:-1], True]
    ok = np.flatnonzero(last_of_tie & (accuracy >= target_accuracy))
    # accept everything at or above the lowest such threshold; none meeting the target: review every cell
    threshold = float(top[ok[-1]]) if ok.size else float(np.nextafter(top[0], np.inf))
    model.review_threshold_ = min(threshold, 1.0)
    model.review_target_accuracy_ = float(target_accuracy)
    model.review_curve_ = {
        "threshold": top[last_of_tie].tolist(),
        "coverage": (n_accepted[last_of_tie] / len(top)).tolist(),
        "accuracy": accuracy[last_of_tie].tolist(),
    }
    return model


def plot_risk_coverage(model, path, title="Risk-coverage on validation data"):
    """PNG of the accepted cells' error rate against the share of cells accepted, with the rule marked."""
    from .report import _new_figure

    curve = model.review_curve_
    fig = _new_figure(figsize=(5.5, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    cov = 100 * np.asarray(curve["coverage"])
    risk = 100 * (1 - np.asarray(curve["accuracy"]))
    ax.plot(cov, risk, color="#1f4e79")
    t = model.review_threshold_
    accepted = np.asarray(curve["threshold"]) >= t
    if accepted.any():
        k = np.flatnonzero(accepted)[-1]
        ax.plot(cov[k], risk[k], "o", color="#c0392b", label=f"rule: top probability >= {t:.4g}")
        ax.legend(fontsize=8)
    ax.axhline(100 * (1 - model.review_target_accuracy_), ls="--", color="grey", lw=0.8)
    ax.set_xlabel("cells accepted without review (%)")
    ax.set_ylabel("error among accepted cells (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
