"""fit / predict on an np.memmap of uint8 images read mini-batches from it, never a copy of X."""

import tracemalloc
import warnings

import numpy as np
import pytest
from ndlm_sk import NDLMClassifier


@pytest.fixture(scope="module")
def memmap(tmp_path_factory):
    path = tmp_path_factory.mktemp("memmap") / "x.npy"
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(2000, 16, 16, 3))
    X[:] = np.random.default_rng(0).integers(0, 256, X.shape, dtype=np.uint8)
    X.flush()
    del X
    return np.load(path, mmap_mode="r"), np.arange(2000) % 3  # read-only, as an archive would be


def traced_fit(X, y, **kw):
    clf = NDLMClassifier(max_iter=1, batch_size=32, random_state=0, n_jobs=1, **kw)
    tracemalloc.start()  # NumPy's allocations (a copy of X would be one)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return clf, peak


@pytest.mark.parametrize(
    "kw",
    [{}, {"early_stopping": True}, {"batchnorm_statistics": "population"}, {"augment": True}],
    ids=["default", "early_stopping", "population_bn", "augment"],
)
def test_fit_on_a_memmap_does_not_copy_it_and_equals_in_memory(memmap, kw):
    X, y = memmap
    clf, peak = traced_fit(X, y, **kw)
    assert peak < X.nbytes / 4, (peak, X.nbytes)
    ref = NDLMClassifier(max_iter=1, batch_size=32, random_state=0, n_jobs=1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(np.array(X), y)
    np.testing.assert_array_equal(clf.predict_proba(X[:64]), ref.predict_proba(np.array(X[:64])))


def test_input_normalization_pass_is_bounded_by_its_chunk(memmap):
    X, y = memmap
    _, peak = traced_fit(X, y, input_normalization="zscore")
    chunk = 256 * X[0].size * 8  # one chunk of images as float64 (estimator._fit_input_normalization)
    assert peak < 3 * chunk, (peak, chunk)
    _, peak_half = traced_fit(X[:1000], y[:1000], input_normalization="zscore")
    assert peak < 1.3 * peak_half  # twice the images, not twice the memory


def test_predict_proba_on_a_memmap_does_not_copy_it(memmap):
    X, y = memmap
    clf, _ = traced_fit(X[:200], y[:200])
    tracemalloc.start()
    try:
        clf.predict_proba(X)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 4, (peak, X.nbytes)
