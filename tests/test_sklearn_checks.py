"""scikit-learn's own estimator checks, on a stack without spatial layers (n, F) -> 1x1xF images."""

from ndlm_sk import NDLMClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks


def _tabular():
    # Few epochs keep the suite fast; the larger learning rate lets the checks that need the
    # classifier to learn simple problems (check_classifiers_train) succeed in those epochs.
    return NDLMClassifier("tabular", max_iter=60, learning_rate_init=0.05, batch_size=32, random_state=0, n_jobs=1)


# Mini-batch training with a shuffled order: integer weights are not the same fit as repeating the
# rows (another order, other mini-batches), as for MLPClassifier, which scikit-learn marks so too.
# The per-mini-batch equivalence (loss and gradient) is tested in test_sample_weight.py.
_EXPECTED_FAILURES = {
    "check_sample_weight_equivalence_on_dense_data": "weights equal repetition per mini-batch only, "
    "not over a shuffled stochastic fit (tested in test_sample_weight.py)",
}


@parametrize_with_checks([_tabular()], expected_failed_checks=lambda est: _EXPECTED_FAILURES)
def test_sklearn_compatible(estimator, check):
    check(estimator)
