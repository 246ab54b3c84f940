"""NDLMClassifier: the NDLM network as a scikit-learn classifier."""

import os
import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, InvalidParameterError, StrOptions, validate_parameter_constraints
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import (
    _check_sample_weight,
    check_array,
    check_is_fitted,
    column_or_1d,
    validate_data,
)

from . import _core
from .architectures import resolve_architecture

# Images are converted to float per mini-batch inside the core, so uint8 stays uint8 in memory.
_CORE_DTYPES = (np.float32, np.uint8)  # other dtypes convert to the first


_MAX_DIM = _core.MAX_DIM  # the core refuses larger sizes (far beyond any microscope image)
_MAX_THREADS = _core.MAX_THREADS  # and more threads


def _check_image_shape(shape, what):
    """(height, width, channels) of positive ints no larger than the core accepts."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (height, width, channels) integers, got {shape!r}") from None
    if len(shape) != 3 or not all(1 <= s <= _MAX_DIM for s in shape):
        raise ValueError(
            f"{what} must be height x width x channels with each between 1 and {_MAX_DIM}, "
            f"got {'x'.join(map(str, shape))}"
        )
    return shape


def _nested_images(X):
    """Nested lists (or tuples) of images, e.g. ``X.tolist()`` of an image array, as an array;
    anything else unchanged (2-D lists stay lists for scikit-learn's own checks)."""
    if hasattr(X, "ndim") or not isinstance(X, (list, tuple)):
        return X
    depth, first = 0, X
    while isinstance(first, (list, tuple)) and len(first):
        depth, first = depth + 1, first[0]
    if depth < 3:
        return X
    try:
        return np.asarray(X)
    except ValueError:  # NumPy: "setting an array element with a sequence ... inhomogeneous shape"
        raise ValueError(
            "X is a nested list of images of different shapes: every image must have the same "
            "height x width (x channels); resize them first (ndlm_sk.datasets.read_image does)"
        ) from None


def _dihedral(xb, codes):
    """Apply symmetry ``codes[i]`` (0-7: bit 0 flips rows, bit 1 flips columns, bit 2 transposes,
    the last only for square images) to image ``xb[i]`` of an (n, H, W, C) batch, in place."""
    square = xb.shape[1] == xb.shape[2]
    for code in np.unique(codes):
        sel = np.flatnonzero(codes == code)
        part = xb[sel]
        if code & 1:
            part = part[:, ::-1]
        if code & 2:
            part = part[:, :, ::-1]
        if code & 4 and square:
            part = part.transpose(0, 2, 1, 3)
        xb[sel] = part
    return np.ascontiguousarray(xb)


def _symmetries(shape):
    """Codes of the symmetries _dihedral applies to (H, W, C) images: all 8 of the square's for
    square images, the 4 flips otherwise (a transpose would change the shape)."""
    return range(8) if shape[0] == shape[1] else range(4)


def _view_logits(net, X, chunk, n_classes, tta):
    """Logits (the input of the final softmax), float32 (n_views, n, n_classes): the images
    themselves, or with ``tta`` each of their symmetries (``_symmetries``; view 0 is the identity)."""
    codes = list(_symmetries(X.shape[1:])) if tta else [0]
    out = np.empty((len(codes), len(X), n_classes), np.float32)
    block = max(chunk, 256)
    for s in range(0, len(X), block):
        xb = X[s : s + block]
        for v, code in enumerate(codes):
            xt = xb if code == 0 else _dihedral(xb.copy(), np.full(len(xb), code))
            out[v, s : s + block] = net.predict_proba(xt, chunk=chunk, logits=True)
    return out


def _tta_proba(net, X, chunk, n_classes):
    """Class probabilities averaged over the image symmetries (float64 mean of the float32
    predictions, returned as float32), in blocks of images so the transformed copies stay small."""
    n = len(X)
    codes = list(_symmetries(X.shape[1:]))
    out = np.empty((n, n_classes), np.float32)
    block = max(chunk, 256)
    for s in range(0, n, block):
        xb = X[s : s + block]
        acc = np.zeros((len(xb), n_classes))
        for code in codes:
            xt = _dihedral(xb.copy(), np.full(len(xb), code))
            acc += net.predict_proba(xt, chunk=chunk)
        out[s : s + block] = acc / len(codes)
    return out


class NDLMClassifier(ClassifierMixin, BaseEstimator):
    """The NDLM white blood cell CNN (Al-Jader et al. 2026) trained with Adam, in C++.

    Parameters follow :class:`sklearn.neural_network.MLPClassifier` where one exists; the
    defaults are the paper's (NDLM.md): 100 epochs of Adam (1e-3, 0.9, 0.999, 1e-8),
    mini-batches of 128, L2 regularization 1e-4.

    Parameters
    ----------
    architecture : str or list of dict, default="ndlm"
        A preset name from :data:`ndlm_sk.PRESETS` or a layer stack (see
        :mod:`ndlm_sk.architectures`).
    image_shape : tuple (height, width, channels) or None, default=None
        Shape of one image when X is given as a 2-D (n, features) array. With None, 4-D X
        gives the shape itself and a 2-D X is read as n images of 1x1xfeatures.
    input_scale : float, default=1/255
        Every input value is multiplied by it (uint8 and float inputs alike) before the first layer.
    learning_rate_init, beta_1, beta_2, epsilon : float
        Adam's step size and moment decay rates, as in MLPClassifier.
    alpha : float, default=1e-4
        L2 penalty on the convolution and fully connected weights. As in MATLAB (which the paper
        used) the gradient gets ``alpha * W``; unlike MLPClassifier it is not divided by n_samples.
    batch_size : int, default=128
        Mini-batch size (clipped to the number of training images).
    max_iter : int, default=100
        Maximum number of epochs.
    shuffle : bool or "once", default=True
        True: a new order of the training images every epoch. "once": one random order, drawn
        before training and kept for every epoch (MATLAB trainingOptions' default 'once').
        False: the order given.
    random_state : int in [0, 2**32 - 1], RandomState or None
        Seeds the weights, the shuffling and the validation split. The same seed and n_jobs give a
        bit-identical fitted model. An int is the seed itself; a RandomState or None (NumPy's
        global generator, :func:`sklearn.utils.check_random_state`) draws one.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training data (or use ``X_val, y_val`` given to
        ``fit``), stop when the validation accuracy has not improved by ``tol`` for
        ``n_iter_no_change`` epochs, and keep the weights of the best epoch.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
    verbose : bool, default=False
        Print one line per epoch: loss, training accuracy, validation accuracy, seconds, images/s.
    warm_start : bool, default=False
        Continue from the previous fit (weights and Adam state) instead of starting over. The
        network it continues is the fitted one: a warm start (like a later ``partial_fit`` call)
        raises ValueError if ``architecture``, ``image_shape``, ``input_scale``,
        ``input_normalization`` or ``normalization_dimension`` now ask for another network, or X
        has another image shape (as MLPClassifier refuses a warm start with other classes); set
        ``warm_start=False`` to fit a new network. The training parameters (learning rate,
        alpha, batch size, epochs, shuffling, augmentation, early stopping, batch-norm
        statistics, threads) may change between warm starts.
    n_jobs : int or None, default=None
        OpenMP threads of the C++ core; None uses OpenMP's default (OMP_NUM_THREADS or all cores),
        except inside a Dask worker's task, where it is 1 (see :mod:`ndlm_sk.distributed`).
    predict_batch_size : int, default=32
        Images per chunk at inference (bounds the memory predict uses).
    augment : bool, default=False
        Train on a random symmetry of each image (flips and, for square images, 90-degree
        rotations: the 8 symmetries of the square), drawn anew for every image in every epoch.
        A cell's class does not depend on its orientation on the slide. Not in the paper.
    input_normalization : {"none", "zerocenter", "zscore"}, default="none"
        What the first layer sees, after ``input_scale``: the values as they are ("none"), minus
        the mean training image ("zerocenter", MATLAB imageInputLayer's default), or minus the mean
        and divided by the standard deviation ("zscore"; a zero deviation divides by 1). The mean
        and deviation are fitted state (``input_mean_``, ``input_std_``), computed in one pass over
        the training images (excluding the early-stopping hold-out) by ``fit``, and by the first
        ``partial_fit`` call from its X; later ``partial_fit`` calls and ``warm_start`` fits keep them.
        They are applied per mini-batch in the C++ core and exported to ONNX.
    normalization_dimension : {"element", "channel"}, default="element"
        "element": one mean (and deviation) per pixel and channel, an image of them (MATLAB's
        'auto' for 2-D images); "channel": one per channel over all pixels.
    batchnorm_statistics : {"moving", "population"}, default="moving"
        The batch-norm mean and variance used at inference. "moving": the running averages
        updated during training. "population" (MATLAB trainNetwork's default): after training, one
        more training-mode pass over the training images sets each batch-norm layer's statistics
        to the exact mean and variance of its input over all of them. ``partial_fit`` does this over
        each call's X at the end of the call.
    batchnorm_l2_factor : float, default=0.0
        The L2 penalty of batch-norm scale (gamma) and offset (beta) is ``alpha`` times this factor.
        0 leaves batch norm unregularized (ours); MATLAB's batchNormalizationLayer regularizes them
        with ``ScaleL2Factor`` = ``OffsetL2Factor`` = 1. Convolution and fully connected biases are
        never regularized (MATLAB's ``BiasL2Factor`` = 0).
    class_weight : dict, "balanced" or None, default=None
        Weights of the classes in the training loss, as in scikit-learn's classifiers: None gives
        every class weight 1; a dict ``{label: weight}`` names a weight for every class; "balanced"
        uses ``n_samples / (n_classes * np.bincount(y))`` of the ``y`` given to ``fit`` (for
        ``partial_fit`` pass the weights as a dict, e.g. from
        :func:`sklearn.utils.class_weight.compute_class_weight` on a large sample of the labels).
        Real smears are 50-70 % neutrophils and under 1 % basophils. A sample's weight is its
        class's weight times its ``sample_weight``; see :meth:`fit` for how weights enter the loss.
    tta : bool, default=False
        Test-time augmentation: ``predict_proba`` (and so ``predict``) averages the class
        probabilities over the symmetries of the image: the 8 symmetries of the square (4 rotations
        by 90 degrees, each with and without a flip) for square images, the 4 flips (none, rows,
        columns, both) otherwise. 8x the prediction cost. Training (including the validation
        scores during ``fit``) is unaffected; the ONNX export has no TTA. Not in the paper.

    Attributes
    ----------
    classes_ : labels, sorted (the columns of predict_proba)
    n_features_in_ : height * width * channels of one input
    image_shape_ : (height, width, channels) the network was built for
    layers_ : the layer stack with every setting filled in
    input_scale_, input_normalization_, normalization_dimension_ : the values of these parameters
        at the fit that built the network. With ``image_shape_``, ``layers_``, ``input_mean_``
        and ``input_std_`` they are what ``predict``, pickling, :func:`~ndlm_sk.save_model` and
        ONNX export use: ``set_params`` after a fit changes the next new fit only.
    input_mean_, input_std_ : the fitted input normalization (None where it does not apply)
    batchnorm_statistics_ : the ``batchnorm_statistics`` of the last training call
    n_params_ : number of trainable parameters
    n_iter_ : epochs run; t_ : training images seen
    loss_, loss_curve_ : mean training loss of the last / every epoch
    batch_loss_curve_ : loss of every mini-batch (the paper's Fig. 3 "mini-batch loss")
    train_scores_ : training accuracy of every epoch (on the fly, training-mode batch norm)
    validation_scores_ : validation accuracy of every epoch (None without validation data)
    best_validation_score_, best_loss_
    temperature_ : float, only after :func:`ndlm_sk.calibration.calibrate_temperature`
        ``predict_proba`` returns ``softmax(logits / temperature_)`` (with ``tta``, its mean over
        the symmetries); any later training removes it (and ``calibration_``, the record of how
        it was fitted).
    """

    def __init__(
        self,
        architecture="ndlm",
        *,
        image_shape=None,
        input_scale=1 / 255,
        learning_rate_init=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        alpha=1e-4,
        batch_size=128,
        max_iter=100,
        shuffle=True,
        random_state=None,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        n_jobs=None,
        predict_batch_size=32,
        augment=False,
        input_normalization="none",
        normalization_dimension="element",
        batchnorm_statistics="moving",
        batchnorm_l2_factor=0.0,
        class_weight=None,
        tta=False,
    ):
        self.architecture = architecture
        self.image_shape = image_shape
        self.input_scale = input_scale
        self.learning_rate_init = learning_rate_init
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.alpha = alpha
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.n_jobs = n_jobs
        self.predict_batch_size = predict_batch_size
        self.augment = augment
        self.input_normalization = input_normalization
        self.normalization_dimension = normalization_dimension
        self.batchnorm_statistics = batchnorm_statistics
        self.batchnorm_l2_factor = batchnorm_l2_factor
        self.class_weight = class_weight
        self.tta = tta

    # ------------------------------------------------------------------ input checking
    def _validate_X(self, X, reset, continuing=False):
        """Check X and return it as a C-contiguous (n, H, W, C) uint8 or float32 array.

        ``continuing``: a warm start or a later partial_fit call, whose X must still be of the
        fitted image shape as the ``image_shape`` parameter reads it."""
        X = _nested_images(X)
        if hasattr(X, "ndim") and getattr(X, "ndim", 2) >= 3:
            X = check_array(
                X,
                dtype=list(_CORE_DTYPES),
                order="C",
                allow_nd=True,
                ensure_all_finite=True,
                ensure_min_samples=1,
                input_name="X",
            )
            if X.ndim == 3:  # (n, H, W) grayscale
                X = X[..., np.newaxis]
            if X.ndim != 4:
                raise ValueError(f"expected images of shape (n, height, width, channels), got {X.ndim} dimensions")
            shape = tuple(int(s) for s in X.shape[1:])
            _check_image_shape(shape, "images")
            if reset:
                if self.image_shape is not None and tuple(self.image_shape) != shape:
                    raise ValueError(f"images are {shape} but image_shape={tuple(self.image_shape)}")
                self.n_features_in_ = int(np.prod(shape))
                self.image_shape_ = shape
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif shape != self.image_shape_:
                raise ValueError(
                    f"images are {'x'.join(map(str, shape))} but {type(self).__name__} was fitted on "
                    f"{'x'.join(map(str, self.image_shape_))} images"
                )
            return X
        X = validate_data(
            self,
            X,
            reset=reset,
            dtype=list(_CORE_DTYPES),
            order="C",
            ensure_all_finite=True,
            ensure_min_features=1,
        )
        n, f = X.shape
        if continuing and self.image_shape is None and self.image_shape_ != (1, 1, f):
            raise ValueError(
                f"image_shape=None reads rows of {f} features as 1x1x{f} images, but the network being "
                f"continued was fitted on {'x'.join(map(str, self.image_shape_))} images; fit a new model "
                "(warm_start=False) to change the input shape"
            )
        if reset:
            shape = (1, 1, f) if self.image_shape is None else _check_image_shape(self.image_shape, "image_shape")
            if int(np.prod(shape)) != f:
                raise ValueError(
                    f"image_shape={self.image_shape} does not match X with {f} features per row "
                    "(expected (height, width, channels) with height*width*channels == n_features)"
                )
            self.image_shape_ = shape
        return X.reshape((n,) + self.image_shape_)

    def _threads(self):
        """OpenMP threads for the core from ``n_jobs`` (validated by ``_check_params``)."""
        if self.n_jobs is None:
            from .distributed import worker_threads  # in a Dask worker: one thread per task

            return worker_threads() or int(_core.max_threads())
        n = int(self.n_jobs)
        return max(1, (os.cpu_count() or 1) + 1 + n) if n < 0 else n

    # Checked the scikit-learn way (sklearn.utils._param_validation, as MLPClassifier does) by
    # _check_params, the one place fit, partial_fit, predict and loading a model share.
    _parameter_constraints = {
        "architecture": [str, list],  # preset names and layer dicts: resolve_architecture and the core
        "image_shape": [None, "array-like"],  # its values: _check_image_shape
        "input_scale": [Interval(Real, None, None, closed="neither")],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean", StrOptions({"once"})],
        "random_state": ["random_state"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "n_jobs": [
            None,
            Interval(Integral, -_MAX_THREADS, -1, closed="both"),
            Interval(Integral, 1, _MAX_THREADS, closed="both"),
        ],
        "predict_batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": ["boolean"],
        "input_normalization": [StrOptions({"none", "zerocenter", "zscore"})],
        "normalization_dimension": [StrOptions({"element", "channel"})],
        "batchnorm_statistics": [StrOptions({"moving", "population"})],
        "batchnorm_l2_factor": [Interval(Real, 0, None, closed="left")],
        "class_weight": [None, StrOptions({"balanced"}), dict],
        "tta": ["boolean"],
    }
    #: the parameters that build the network: fitted attributes of the same name + "_"
    _FITTED_CONFIGURATION = ("input_scale", "input_normalization", "normalization_dimension")

    def _check_params(self, names=None, fitted=False):
        """Validate the parameters ``names`` (all by default) against ``_parameter_constraints``;
        with ``fitted``, the fitted configuration (``input_scale_``, ...) against the same rules.

        Raises sklearn's InvalidParameterError (a ValueError and a TypeError). Beyond sklearn's
        own checks: a bool is not a number or a seed here, and a non-finite number says it must be
        finite."""
        names = list(self._parameter_constraints) if names is None else list(names)
        values = {name: getattr(self, name) for name in names}
        if fitted:
            values.update({f"{name}_": getattr(self, f"{name}_") for name in self._FITTED_CONFIGURATION})
        caller = type(self).__name__
        for key, value in values.items():
            constraints = self._parameter_constraints[key.rstrip("_")]
            numeric = any(isinstance(c, Interval) for c in constraints)
            if isinstance(value, (bool, np.bool_)) and not {"boolean", "verbose"} & set(map(str, constraints)):
                raise InvalidParameterError(f"The {key!r} parameter of {caller} must not be {value!r}.")
            try:
                validate_parameter_constraints({key: constraints}, {key: value}, caller_name=caller)
            except InvalidParameterError as e:
                if numeric and isinstance(value, Real) and not np.isfinite(value):
                    raise InvalidParameterError(f"{e} {key} must be finite.") from None
                raise
        cw = values.get("class_weight")
        if isinstance(cw, dict):  # its values: the constraint checks the type only
            for k, v in cw.items():
                ok = isinstance(v, Real) and not isinstance(v, (bool, np.bool_))
                if not (ok and np.isfinite(v) and v >= 0):
                    raise InvalidParameterError(f"class_weight[{k!r}] must be a finite number >= 0, got {v!r}")

    # ------------------------------------------------------------------ the core network
    def _build_network(self, stack):
        """The one path into a new C++ network: from a layer stack and the fitted configuration
        (``image_shape_``, ``input_scale_``, ``classes_``, ``_seed``), never from the constructor
        parameters, which ``set_params`` may have changed since the fit."""
        try:
            net = _core.Network(
                stack,
                self.image_shape_,
                len(self.classes_),
                seed=int(self._seed),
                n_threads=self._threads(),
                input_scale=float(self.input_scale_),
            )
        except ValueError as e:
            h, w, c = self.image_shape_
            raise ValueError(f"cannot build the layer stack for {h}x{w}x{c} inputs: {e}") from None
        self._net = net
        self.layers_ = net.layers
        self.n_params_ = int(net.n_params)

    def _fit_configuration(self):
        """Record the parameters that build the network as fitted attributes (a new fit only)."""
        self.input_scale_ = float(self.input_scale)
        self.input_normalization_ = self.input_normalization
        self.normalization_dimension_ = self.normalization_dimension

    def _check_same_network(self, how):
        """A warm start or a later partial_fit call continues the fitted network: the parameters
        that build it must still ask for that network (as MLPClassifier refuses a warm start
        with other classes)."""
        changed = []
        for name in self._FITTED_CONFIGURATION:
            if getattr(self, name) != getattr(self, name + "_"):
                changed.append(f"{name}={getattr(self, name)!r} (fitted: {getattr(self, name + '_')!r})")
        if self.image_shape is not None and _check_image_shape(self.image_shape, "image_shape") != self.image_shape_:
            changed.append(f"image_shape={tuple(self.image_shape)!r} (fitted: {self.image_shape_!r})")
        stack = resolve_architecture(self.architecture)
        if stack != self.layers_:  # compare with every setting filled in, as layers_ has them
            try:
                layers = _core.Network(stack, self.image_shape_, len(self.classes_), seed=0, n_threads=1).layers
            except ValueError:
                layers = None
            if layers != self.layers_:
                changed.append(f"architecture={self.architecture!r:.120} (does not build the fitted layers_)")
        if changed:
            raise ValueError(
                f"{how} continues training the fitted network, but its parameters changed since the fit: "
                f"{'; '.join(changed)}. Fit a new model (warm_start=False) to change the network."
            )

    def _configure_network(self):
        self._net.n_threads = self._threads()
        self._net.set_optimizer(
            float(self.learning_rate_init),
            float(self.beta_1),
            float(self.beta_2),
            float(self.epsilon),
            float(self.alpha),
            float(self.batchnorm_l2_factor),
        )

    def _encode(self, y):
        y = np.asarray(y)
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(
                f"y contains labels not seen in classes_ {list(self.classes_)}: {list(np.unique(y[unknown]))[:5]}"
            )
        return idx.astype(np.int32)

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y, X_val=None, y_val=None, sample_weight=None):
        """Train on images X (n, H, W, C) or rows (n, features) with labels y.

        ``X_val, y_val`` (optional) are a validation set scored after every epoch
        (``validation_scores_``); with ``early_stopping=True`` they replace the held-out
        ``validation_fraction``.

        ``sample_weight`` (optional, n values >= 0) weights each image in the training loss,
        times its class's weight from ``class_weight``. As in :class:`MLPClassifier`, the loss
        of a mini-batch is the weighted mean ``sum_i w_i loss_i / sum_i w_i`` over its images
        (and its gradient accordingly; a mini-batch whose weights are all 0 makes a zero-gradient
        step), so weights matter relative to the other images of the same mini-batch, a common
        factor on all weights changes nothing, and weights 1 give bit-for-bit the unweighted fit.
        ``loss_curve_`` holds the weighted mean loss of every epoch; ``train_scores_`` stay
        unweighted accuracies; the validation accuracy on an early-stopping hold-out is weighted
        by its ``sample_weight`` (not by ``class_weight``), as MLPClassifier scores it.
        """
        return self._fit(X, y, X_val, y_val, incremental=False, sample_weight=sample_weight)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y). ``classes`` is required on the first call.

        ``sample_weight`` and ``class_weight`` (a dict; "balanced" is refused: it needs the labels
        of all the training data) weight the loss as in :meth:`fit`.

        The C++ working buffers (the activations of one mini-batch) stay allocated between
        calls, so a loop of ``partial_fit`` calls does not reallocate them; ``fit`` and
        ``predict``/``predict_proba`` free them when they finish.
        """
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit")
        if not first and classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(
                f"classes={list(classes)} differs from the classes_ of the first call {list(self.classes_)}"
            )
        return self._fit(X, y, None, None, incremental=True, classes=classes, sample_weight=sample_weight)

    def _sample_weights(self, X, y, sample_weight, incremental):
        """Per-image loss weights (float64, or None when every weight is 1 by construction)."""
        if sample_weight is None and self.class_weight is None:
            return None
        w = np.ones(len(X)) if sample_weight is None else None
        if sample_weight is not None:
            w = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True, copy=True)
        if self.class_weight is not None:
            if incremental and self.class_weight == "balanced":
                raise ValueError(
                    "class_weight='balanced' is not supported for partial_fit: pass a dict, e.g. "
                    "compute_class_weight('balanced', classes=classes, y=y) on a large enough sample of "
                    "the training labels"
                )
            if isinstance(self.class_weight, dict):
                unknown = [k for k in self.class_weight if not np.any(self.classes_ == k)]
                if unknown:
                    raise ValueError(f"class_weight names labels not in classes_ {list(self.classes_)}: {unknown}")
            w *= compute_sample_weight(self.class_weight, y)
        return w

    def _fit(self, X, y, X_val, y_val, incremental, classes=None, sample_weight=None):
        self._check_params()
        # a calibration belongs to the weights it was fitted for: any training drops it
        for name in ("temperature_", "calibration_"):
            self.__dict__.pop(name, None)
        continuing = hasattr(self, "_net") and (incremental or self.warm_start)
        if continuing:
            self._check_same_network("partial_fit" if incremental else "warm_start=True")
        X = self._validate_X(X, reset=not continuing, continuing=continuing)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y = column_or_1d(y, warn=True)
        if len(y) != len(X):
            raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
        check_classification_targets(y)
        if not continuing:
            self.classes_ = unique_labels(classes if classes is not None else y)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"the classifier needs samples of at least 2 classes, got 1 class: {self.classes_[0]!r}"
                )
        y_enc = self._encode(y)
        w = self._sample_weights(X, y, sample_weight, incremental)
        if not continuing:
            rs = self.random_state
            # an int is the core's seed itself; None or a RandomState draw one, as sklearn does
            base = int(rs) if isinstance(rs, Integral) else int(check_random_state(rs).randint(np.iinfo(np.int32).max))
            self._seed = base
            self._fit_configuration()
            self._build_network(resolve_architecture(self.architecture))
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_curve_ = []
            self.batch_loss_curve_ = []
            self.train_scores_ = []
            self.validation_scores_ = [] if (self.early_stopping or X_val is not None) and not incremental else None
            self.best_loss_ = np.inf
            self.best_validation_score_ = None if self.validation_scores_ is None else -np.inf
            self._no_improvement_count = 0
        self._configure_network()

        # validation data: given, held out (early stopping), or none; indices avoid copying X
        train_idx = np.arange(len(X))
        Xv, val_idx, yv, wv = None, None, None, None
        if not incremental and X_val is not None:
            if y_val is None:
                raise ValueError("X_val given without y_val")
            Xv = self._validate_X(X_val, reset=False)
            yv = self._encode(np.asarray(y_val))
            if len(yv) != len(Xv):
                raise ValueError(f"X_val has {len(Xv)} samples but y_val has {len(yv)}")
        elif not incremental and self.early_stopping:
            stratify = y_enc if np.min(np.bincount(y_enc)) >= 2 else None
            train_idx, val_idx = train_test_split(
                train_idx,
                test_size=self.validation_fraction,
                stratify=stratify,
                random_state=np.random.RandomState(self._seed),
            )
            Xv, yv = X, y_enc[val_idx]
            if len(train_idx) < 1 or len(val_idx) < 1:
                raise ValueError("too few samples to hold out a validation set; disable early_stopping")
            if sample_weight is not None:
                wv = _check_sample_weight(sample_weight, X, dtype=np.float64)[val_idx]
        if w is not None and not np.sum(w[train_idx]) > 0:
            raise ValueError("the sample weights (times the class weights) of the training images sum to 0")
        if self.validation_scores_ is None and Xv is not None:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf

        if not continuing:
            self._fit_input_normalization(X, train_idx)
        else:  # kept from the first fit
            self._apply_input_normalization()

        epochs = 1 if incremental else self.max_iter
        keep_best = self.early_stopping and Xv is not None and not incremental
        try:
            for _ in range(epochs):
                t0 = time.perf_counter()
                loss, acc = self._run_epoch(X, y_enc, train_idx, w)
                dt = time.perf_counter() - t0
                self.n_iter_ += 1
                self.t_ += len(train_idx)
                self.loss_ = loss
                self.loss_curve_.append(loss)
                self.train_scores_.append(acc)
                vscore = None
                if Xv is not None:
                    proba = self._net.predict_proba(Xv, val_idx, chunk=int(self.predict_batch_size))
                    hits = np.argmax(proba, axis=1) == yv
                    vscore = float(np.mean(hits) if wv is None else np.average(hits, weights=wv))
                    self.validation_scores_.append(vscore)
                if self.verbose:
                    msg = f"Epoch {self.n_iter_}: loss {loss:.4f}, train acc {acc:.4f}"
                    if vscore is not None:
                        msg += f", val acc {vscore:.4f}"
                    print(f"{msg}, {dt:.1f} s, {len(train_idx) / dt:.0f} img/s", flush=True)
                if incremental:
                    continue
                if self._stop_now(loss, vscore, keep_best):
                    if self.verbose:
                        print(f"Stopping: no improvement for {self.n_iter_no_change} epochs", flush=True)
                    break
            else:
                if not incremental and not keep_best:
                    warnings.warn(
                        f"Stopped after max_iter={self.max_iter} epochs without convergence.",
                        ConvergenceWarning,
                        stacklevel=3,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by the user: keeping the model trained so far.", stacklevel=3)
        finally:
            if keep_best and getattr(self, "_best_state", None) is not None:
                self._net.set_state(self._best_state)
            self._best_state = None
            if not incremental:  # a loop of partial_fit calls reuses the mini-batch buffers
                self._net.release_buffers()
        self.batchnorm_statistics_ = self.batchnorm_statistics  # where the batch-norm statistics come from
        if self.batchnorm_statistics == "population":  # of the kept (best) weights
            self._net.population_stats(X, np.ascontiguousarray(train_idx, dtype=np.int64), chunk=int(self.batch_size))
            if not incremental:
                self._net.release_buffers()
        return self

    # ------------------------------------------------------------------ input normalization
    def _fit_input_normalization(self, X, train_idx, chunk=256):
        """Mean (and deviation) of ``X[train_idx] * input_scale``: one pass, a float64 copy of one
        chunk of images at a time (never of X), chunks merged with Chan et al.'s pairwise formula."""
        self.input_mean_ = self.input_std_ = None
        if self.input_normalization_ != "none":
            axes = (0,) if self.normalization_dimension_ == "element" else (0, 1, 2)
            n, mean, m2 = 0, 0.0, 0.0
            for s in range(0, len(train_idx), chunk):
                xb = X[train_idx[s : s + chunk]].astype(np.float64) * self.input_scale_
                nb = xb.size // int(np.prod([xb.shape[a] for a in range(1, 4) if a not in axes]))
                mb = xb.mean(axis=axes)
                m2b = ((xb - mb) ** 2).sum(axis=axes)
                delta = mb - mean
                mean = mean + delta * nb / (n + nb)
                m2 = m2 + m2b + delta**2 * n * nb / (n + nb)
                n += nb
            self.input_mean_ = np.asarray(mean, dtype=np.float32)
            if self.input_normalization_ == "zscore":
                std = np.sqrt(m2 / n)
                self.input_std_ = np.where(std > 0, std, 1.0).astype(np.float32)
        self._apply_input_normalization()

    def _apply_input_normalization(self):
        """Hand the fitted mean / deviation to the core, broadcast to one (H, W, C) image."""
        mean, std = getattr(self, "input_mean_", None), getattr(self, "input_std_", None)
        if (self.input_normalization_ == "none") != (mean is None) or (mean is None and std is not None):
            raise ValueError(f"input_normalization_={self.input_normalization_!r} but input_mean_ is {mean!r:.80}")
        if mean is None:
            self._net.input_norm = (np.zeros(0, np.float32), np.zeros(0, np.float32))
            return
        shape = self.image_shape_ if self.normalization_dimension_ == "element" else self.image_shape_[2:]
        for name, a in (("input_mean_", mean), ("input_std_", std)):
            if a is None and name == "input_std_" and self.input_normalization_ == "zerocenter":
                continue
            if not isinstance(a, np.ndarray) or a.shape != tuple(shape) or not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be a finite array of shape {tuple(shape)}, got {a!r:.80}")
        if self.input_normalization_ == "zscore" and not np.all(std > 0):
            raise ValueError("input_std_ must be positive")
        if self.input_normalization_ == "zerocenter" and std is not None:
            raise ValueError("input_std_ must be None with input_normalization_='zerocenter'")
        full = np.broadcast_to(mean, self.image_shape_).ravel()
        mult = np.ones_like(full) if std is None else 1.0 / np.broadcast_to(std, self.image_shape_).ravel()
        self._net.input_norm = (np.ascontiguousarray(full, np.float32), np.ascontiguousarray(mult, np.float32))

    def _run_epoch(self, X, y_enc, train_idx, w=None):
        n = len(train_idx)
        if isinstance(self.shuffle, str):  # "once": the same order every epoch
            order = train_idx[np.random.default_rng([self._seed, 0, 2]).permutation(n)]
        elif self.shuffle:
            # derived from (seed, epoch): reproducible, and nothing but two ints to pickle
            order = train_idx[np.random.default_rng([self._seed, self.n_iter_]).permutation(n)]
        else:
            order = train_idx
        bs = min(int(self.batch_size), n)
        total_loss, correct, total_w = 0.0, 0, 0.0
        if self.augment:
            sym = np.random.default_rng([self._seed, self.n_iter_, 1]).integers(0, 8, n)
        for s in range(0, n, bs):
            idx = np.ascontiguousarray(order[s : s + bs], dtype=np.int64)
            wb = None if w is None else np.ascontiguousarray(w[idx], dtype=np.float32)
            if self.augment:  # a transformed copy of the mini-batch (only it, never all of X)
                xb = _dihedral(X[idx], sym[s : s + bs])
                loss, c = self._net.train_step(xb, np.arange(len(idx), dtype=np.int64), y_enc[idx], wb)
            else:
                loss, c = self._net.train_step(X, idx, y_enc[idx], wb)
            self.batch_loss_curve_.append(float(loss))
            bw = len(idx) if wb is None else float(np.sum(wb, dtype=np.float64))
            total_loss += float(loss) * bw
            total_w += bw
            correct += int(c)
        return total_loss / total_w, correct / n

    def _stop_now(self, loss, vscore, keep_best):
        """MLPClassifier's rule: stop after n_iter_no_change epochs without a tol improvement."""
        if keep_best:
            if vscore < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if vscore > self.best_validation_score_:
                self.best_validation_score_ = vscore
                self._best_state = self._net.get_state()
                self.best_loss_ = loss
        else:
            if vscore is not None and vscore > self.best_validation_score_:
                self.best_validation_score_ = vscore
            if loss > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            self.best_loss_ = min(self.best_loss_, loss)
        return self._no_improvement_count > self.n_iter_no_change

    # ------------------------------------------------------------------ prediction
    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self, "_net")
        self._check_params(("n_jobs", "predict_batch_size", "tta"))
        X = self._validate_X(X, reset=False)
        self._net.n_threads = self._threads()
        chunk = int(self.predict_batch_size)
        temperature = getattr(self, "temperature_", None)
        if temperature is not None and temperature != 1.0:
            from .calibration import mean_softmax

            logits = _view_logits(self._net, X, chunk, len(self.classes_), self.tta)
            proba = mean_softmax(logits, temperature).astype(np.float32)
        elif self.tta:
            proba = _tta_proba(self._net, X, chunk, len(self.classes_))
        else:
            proba = self._net.predict_proba(X, chunk=chunk)
        self._net.release_buffers()
        return proba

    def predict_logits(self, X):
        """Pre-softmax class scores (n, n_classes), float32, of the images as given: no TTA and
        no temperature (``predict_proba`` without them is their softmax, up to float rounding)."""
        check_is_fitted(self, "_net")
        self._check_params(("n_jobs", "predict_batch_size"))
        X = self._validate_X(X, reset=False)
        self._net.n_threads = self._threads()
        logits = _view_logits(self._net, X, int(self.predict_batch_size), len(self.classes_), False)[0]
        self._net.release_buffers()
        return logits

    def predict_log_proba(self, X):
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    # ------------------------------------------------------------------ introspection
    def get_layer_params(self):
        """Per-layer parameter arrays (copies) in PyTorch/ONNX layout, aligned with ``layers_``."""
        check_is_fitted(self, "_net")
        return self._net.layer_params()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ persistence
    def __getstate__(self):
        # Like LightGBM / xgboost: the native network is stored as its state (NumPy arrays and
        # plain values), never as a pointer.
        state = self.__dict__.copy()
        net = state.pop("_net", None)
        if net is not None:
            state["_net_state"] = net.get_state()
        state.pop("_best_state", None)
        return state

    def __setstate__(self, state):
        state = dict(state)
        net_state = state.pop("_net_state", None)
        # a model saved before a parameter existed gets that parameter's default
        import inspect

        for name, p in inspect.signature(type(self).__init__).parameters.items():
            if name != "self" and name not in state and p.default is not inspect.Parameter.empty:
                state[name] = p.default
        self.__dict__.update(state)
        if net_state is None:
            self._check_params()
        else:
            # the network is rebuilt from its fitted configuration, never from the constructor
            # parameters (set_params may have changed them after the fit); a model saved before
            # these fitted attributes existed was saved with the parameters it was fitted with
            for name in self._FITTED_CONFIGURATION:
                if name + "_" not in state:
                    setattr(self, name + "_", state[name])
            self._check_params(fitted=True)
            saved_layers = state.get("layers_")
            stack = resolve_architecture(self.architecture) if saved_layers is None else saved_layers
            if not isinstance(stack, list) or not all(isinstance(layer, dict) for layer in stack):
                raise ValueError(f"layers_ must be a list of layer dicts, got {stack!r:.80}")
            self._build_network([dict(layer) for layer in stack])
            if saved_layers is not None and [dict(layer) for layer in saved_layers] != list(self._net.layers):
                raise ValueError(
                    "the saved layer stack (layers_) is not in the form the core builds from it "
                    "(every setting filled in)"
                )
            self._net.set_state(net_state)
            self._apply_input_normalization()
