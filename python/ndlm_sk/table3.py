"""The two-network models of the paper's Table III: CDFL and DDFL.

Section V.B of the paper describes CDFL as "a couple of DL networks", each a 5x5x2 convolution,
ReLU, a 7x7 / stride 3 pooling, a fully connected layer and softmax, and DDFL as "two Deep
Learning (DL) networks" with 15x15x10 convolutions and 5x5 / stride 5 pooling. It says nothing on
how the two are combined, nor whether they see different inputs. Our reading: two independently
initialized copies of the branch trained on the same images, their class probabilities averaged
(a soft vote, as scikit-learn's ``VotingClassifier(voting="soft")``). We do not use
VotingClassifier itself because it refits clones on every ``fit``, while ``reproduce`` trains
epoch by epoch with ``warm_start`` and keeps the best validation epoch.
"""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from .estimator import NDLMClassifier

#: Table III's two-network models: the preset of one branch.
COUPLED = {"cdfl": "cdfl", "ddfl": "dl"}


class CoupledNDLM(ClassifierMixin, BaseEstimator):
    """``n_networks`` copies of ``estimator``, seeded ``random_state + i``, averaged (soft vote).

    Parameters
    ----------
    estimator : NDLMClassifier or None
        The branch (its ``random_state`` is replaced). None: ``NDLMClassifier("cdfl")``.
    n_networks : int, default=2
    random_state : int or None
        Branch ``i`` gets ``random_state + i`` (None: each branch draws its own seed).

    With ``estimator.warm_start=True`` a second ``fit`` continues the fitted branches, as
    NDLMClassifier does, so the epoch-by-epoch loop of ``reproduce`` trains both.

    Attributes
    ----------
    estimators_ : the fitted branches; classes_, n_iter_; loss_curve_, train_scores_ and
    batch_loss_curve_ are the branches' mean (the training accuracy of one branch each, averaged:
    the ensemble's own is not computed during training).
    """

    def __init__(self, estimator=None, *, n_networks=2, random_state=None):
        self.estimator = estimator
        self.n_networks = n_networks
        self.random_state = random_state

    _parameter_constraints = {
        "estimator": [None, NDLMClassifier],
        "n_networks": [Interval(Integral, 1, 64, closed="both")],
        # branch i is seeded random_state + i: every branch seed must be a valid NDLMClassifier one
        "random_state": [None, Interval(Integral, 0, 2**32 - 64, closed="both")],
    }

    def _template(self):
        """The branch template, after validating the parameters (fit, predict and loading)."""
        for name, value in self.get_params(deep=False).items():
            if isinstance(value, (bool, np.bool_)):  # sklearn's Interval takes a bool for an int
                raise InvalidParameterError(f"The {name!r} parameter of {type(self).__name__} must not be {value!r}.")
        self._validate_params()
        return NDLMClassifier("cdfl") if self.estimator is None else self.estimator

    def fit(self, X, y, X_val=None, y_val=None):
        est = self._template()
        keep = est.warm_start and len(getattr(self, "estimators_", [])) == self.n_networks
        if not keep:
            self.estimators_ = [
                clone(est).set_params(random_state=None if self.random_state is None else int(self.random_state) + i)
                for i in range(self.n_networks)
            ]
        for b in self.estimators_:
            b.fit(X, y, X_val, y_val)
        self.classes_ = self.estimators_[0].classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self, "estimators_")
        return np.mean([b.predict_proba(X) for b in self.estimators_], axis=0)

    def predict(self, X):
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def _mean(self, name):
        check_is_fitted(self, "estimators_")
        return list(np.mean([getattr(b, name) for b in self.estimators_], axis=0))

    @property
    def n_iter_(self):
        check_is_fitted(self, "estimators_")
        return self.estimators_[0].n_iter_

    @property
    def loss_curve_(self):
        return self._mean("loss_curve_")

    @property
    def train_scores_(self):
        return self._mean("train_scores_")

    @property
    def batch_loss_curve_(self):
        return self._mean("batch_loss_curve_")

    @property
    def image_shape_(self):
        check_is_fitted(self, "estimators_")
        return self.estimators_[0].image_shape_

    @property
    def n_params_(self):
        check_is_fitted(self, "estimators_")
        return int(sum(b.n_params_ for b in self.estimators_))

    def _threads(self):
        return self._template()._threads()


def make_table3_model(name, **params):
    """A Table III model by name: an NDLMClassifier preset, or a CoupledNDLM for cdfl / ddfl
    (``params`` go to each branch; ``random_state`` seeds the branches ``random_state + i``)."""
    if name not in COUPLED:
        return NDLMClassifier(name, **params)
    rs = params.pop("random_state", None)
    return CoupledNDLM(NDLMClassifier(COUPLED[name], **params), n_networks=2, random_state=rs)
