"""Hash of the fitted state of a fixed-seed fit: a refactor that claims "no behaviour change"
must print the same hash before and after (same machine, same SIMD level, same thread count).

    python tools/state_hash.py            # default NDLM stack, 2 epochs, 40 sample images at 64 px
"""

import hashlib

import numpy as np
from ndlm_sk import NDLMClassifier
from ndlm_sk.datasets import load_pbc_sample


def state_hash(clf):
    h = hashlib.sha256()
    state = clf._net.get_state()
    for key in sorted(state):
        a = np.ascontiguousarray(state[key])
        h.update(key.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def main():
    X, y = load_pbc_sample(image_size=64)
    X, y = X[::5], y[::5]
    clf = NDLMClassifier(max_iter=2, batch_size=16, random_state=0, n_jobs=2).fit(X, y)
    proba = clf.predict_proba(X)
    print("state  ", state_hash(clf))
    print("proba  ", hashlib.sha256(np.ascontiguousarray(proba).tobytes()).hexdigest())


if __name__ == "__main__":
    main()
