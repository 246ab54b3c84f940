"""augment=True: the 8 symmetries of the square, drawn per image and epoch, reproducibly."""

import numpy as np
from ndlm_sk import NDLMClassifier
from ndlm_sk.estimator import _dihedral


def test_the_eight_codes_are_the_eight_symmetries_of_the_square():
    img = np.arange(4 * 4 * 2, dtype=np.uint8).reshape(1, 4, 4, 2)
    outs = [_dihedral(img.copy(), np.array([c]))[0] for c in range(8)]
    assert len({o.tobytes() for o in outs}) == 8  # all different
    for o in outs:  # each moves whole pixels (channels stay together) and keeps every value
        assert sorted(map(tuple, o.reshape(-1, 2))) == sorted(map(tuple, img[0].reshape(-1, 2)))
    assert np.array_equal(outs[0], img[0])
    assert np.array_equal(outs[4][..., 0], img[0, ..., 0].T)


def test_non_square_images_are_only_flipped():
    img = np.arange(2 * 3, dtype=np.uint8).reshape(1, 2, 3, 1)
    outs = [_dihedral(img.copy(), np.array([c]))[0] for c in range(8)]
    assert all(o.shape == (2, 3, 1) for o in outs)
    assert len({o.tobytes() for o in outs}) == 4


def test_augmented_fit_is_reproducible_and_leaves_X_alone():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    X0 = X.copy()
    kw = dict(max_iter=2, batch_size=8, random_state=0, n_jobs=1)
    a = NDLMClassifier(augment=True, **kw).fit(X, y)
    b = NDLMClassifier(augment=True, **kw).fit(X, y)
    plain = NDLMClassifier(**kw).fit(X, y)
    assert np.array_equal(X, X0)
    assert np.array_equal(a.predict_proba(X), b.predict_proba(X))
    assert not np.array_equal(a.predict_proba(X), plain.predict_proba(X))
