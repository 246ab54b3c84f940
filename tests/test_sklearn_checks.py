"""scikit-learn's own estimator checks, on a stack without spatial layers (n, F) -> 1x1xF images."""

from ndlm_sk import NDLMClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks


def _tabular():
    # Few epochs keep the suite fast; the larger learning rate lets the checks that need the
    # classifier to learn simple problems (check_classifiers_train) succeed in those epochs.
    return NDLMClassifier("tabular", max_iter=60, learning_rate_init=0.05, batch_size=32, random_state=0, n_jobs=1)


@parametrize_with_checks([_tabular()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
