"""Memory safety of the C++ core: sizes are overflow-checked and a network's memory estimate is
checked against the machine's memory before anything big is allocated.

The crash cases of issue 9 (a layer stack whose buffer sizes overflow 64 bits: SIGSEGV from
``fit`` and from ``predict`` after ``load_model``; ``vector::_M_default_append`` and a bare
MemoryError for others) each run in a child interpreter, so a regression shows up as a failed
test naming the signal instead of a dead test run. The child gets an address-space limit (not
under AddressSanitizer, which reserves terabytes of shadow memory) so a regression cannot
exhaust the shared machine's memory.
"""

import json
import os
import subprocess
import sys
import textwrap

import ndlm_sk
import numpy as np
import pytest
from ndlm_sk import _core

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

EVIL_PAD = 2**20 - 8


def evil_stack(pad):
    return [
        {"type": "conv", "filters": 2**20, "kernel": 1, "padding": pad},
        {"type": "maxpool", "pool": 2**20, "stride": 2**20},
        {"type": "fc"},
    ]


_PRELUDE = textwrap.dedent("""
    import json, os, resource, sys
    if "asan" not in os.environ.get("LD_PRELOAD", ""):
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    import numpy as np
    from ndlm_sk import NDLMClassifier, load_model, save_model, _core
    X = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    def report(fn):
        try:
            fn()
            print(json.dumps({"exc": None, "msg": ""}))
        except Exception as e:
            print(json.dumps({"exc": type(e).__name__, "msg": str(e)}))
""")


def run_child(code, env_extra=None, timeout=300):
    """Run PRELUDE + code in a fresh interpreter; returns the dict its report() printed."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = os.path.dirname(os.path.dirname(os.path.abspath(ndlm_sk.__file__)))
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    p = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"child died with return code {p.returncode} (negative: signal)\n{p.stderr[-3000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def assert_names_layer(r, layer="layer 0 (conv)"):
    assert r["exc"] == "ValueError", r
    msg = r["msg"]
    assert layer in msg, msg
    assert "bytes" in msg and "memory" in msg, msg
    assert "1048576x" in msg, msg  # the output shape


@pytest.mark.parametrize("pad,batch_size", [(EVIL_PAD, 4), (EVIL_PAD, 1), (10**6, 4)])
def test_fit_with_an_impossible_stack_is_a_value_error(pad, batch_size):
    r = run_child(f"""
        arch = {evil_stack(pad)!r}
        report(lambda: NDLMClassifier(architecture=arch, batch_size={batch_size}, max_iter=1,
                                      random_state=0, n_jobs=1).fit(X, y))
    """)
    assert_names_layer(r)


_CRAFT = """
    # a small model, fitted, with its stack swapped for the impossible one (and matching zero
    # parameter arrays): what a crafted .ndlm file or pickle holds
    good_arch = [{"type": "conv", "filters": 2, "kernel": 1}, {"type": "maxpool", "pool": 2}, {"type": "fc"}]
    est = NDLMClassifier(architecture=good_arch, batch_size=4, max_iter=1, random_state=0, n_jobs=1).fit(X, y)
    state = est.__getstate__()
    old_arch, old_layers = state["architecture"], [dict(l) for l in state["layers_"]]
    arch = EVIL
    layers = [{"type": "conv", "filters": 2**20, "kernel": (1, 1), "stride": 1, "padding": PAD},
              {"type": "maxpool", "pool": 2**20, "stride": 2**20}, {"type": "fc", "units": 2}]
    for k, v in list(state.items()):
        if isinstance(v, list) and v == old_arch:
            state[k] = arch
        elif isinstance(v, list) and [dict(l) if isinstance(l, dict) else l for l in v] == old_layers:
            state[k] = layers
    P = 2**20 * 3 + 2**20 + 2 * 2**20 * 4 + 2
    ns = state["_net_state"]
    for k in ("params", "adam_m", "adam_v"):
        ns[k] = np.zeros(P, np.float32)
    ns["running"] = np.zeros(0, np.float32)
    if "n_params_" in state:
        state["n_params_"] = P
    fake = NDLMClassifier.__new__(NDLMClassifier)
    fake.__dict__.update(state)  # _net_state, no _net: __getstate__ hands it on as saved state
"""


def test_crafted_model_file_is_refused_at_load(tmp_path):
    path = tmp_path / "evil.ndlm"
    code = _CRAFT.replace("EVIL", repr(evil_stack(EVIL_PAD))).replace("PAD", str(EVIL_PAD))
    r = run_child(
        code
        + f"""
    save_model(fake, {str(path)!r})
    assert os.path.getsize({str(path)!r}) < 10 << 20  # zeros compress: a small file
    def load_and_predict():
        m = load_model({str(path)!r})
        m.predict(X[:4])
    report(load_and_predict)
    """
    )
    assert_names_layer(r)


def test_crafted_pickle_is_refused_at_unpickling():
    code = _CRAFT.replace("EVIL", repr(evil_stack(EVIL_PAD))).replace("PAD", str(EVIL_PAD))
    r = run_child(
        code
        + """
    import pickle
    blob = pickle.dumps(fake)
    report(lambda: pickle.loads(blob).predict(X[:4]))
    """
    )
    assert_names_layer(r)


# ---- the estimate and the limit, in this process (the limit is read at each check) --------------
STACK = [{"type": "conv", "filters": 16, "kernel": 3, "padding": 1}, {"type": "relu"}, {"type": "fc"}]


def test_memory_estimate_grows_with_the_batch_and_names_the_big_layer():
    net = _core.Network(STACK, [64, 64, 3], 2)
    b1, worst1, _ = net.memory_estimate(1)
    b64, worst64, share64 = net.memory_estimate(64)
    # conv output 16x64x64 floats per image, held as activation and two gradient buffers
    assert b64 - b1 >= 63 * 3 * 4 * 16 * 64 * 64
    assert worst64 == 0 and share64 <= b64
    assert 0 < _core.memory_limit()


def test_memory_limit_refuses_a_batch_that_does_not_fit_and_the_network_stays_usable(monkeypatch):
    # (fuse=False: the fused inference path predicts image by image, whatever the chunk)
    net = _core.Network(STACK, [64, 64, 3], 2, fuse=False)
    X = np.random.default_rng(1).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8)
    b1 = net.memory_estimate(1)[0]
    b64 = net.memory_estimate(64)[0]
    p_small = net.predict_proba(X[:2], chunk=2)
    monkeypatch.setenv("NDLM_SK_MEMORY_LIMIT", str(int((b1 + b64) / 2)))
    with pytest.raises(ValueError, match=r"layer 0 \(conv\): output 16x64x64 .* for a batch of 64"):
        net.predict_proba(X, chunk=64)
    with pytest.raises(ValueError, match="for a batch of 64"):
        net.train_step(X, np.arange(64), np.zeros(64, np.int64))
    # the failed sizing left no dangling buffers: smaller batches still run and agree
    np.testing.assert_array_equal(net.predict_proba(X[:2], chunk=2), p_small)
    net.train_step(X, np.arange(4), np.zeros(4, np.int64))
    # a limit below the batch-of-one estimate: the network cannot even be built
    monkeypatch.setenv("NDLM_SK_MEMORY_LIMIT", str(int(b1 / 2)))
    with pytest.raises(ValueError, match=r"layer 2 \(fc\).*for a batch of 1 .*more than this machine's memory"):
        _core.Network(STACK, [64, 64, 3], 2)
    monkeypatch.delenv("NDLM_SK_MEMORY_LIMIT")
    assert _core.Network(STACK, [64, 64, 3], 2).n_params > 0  # a stack that fits still builds


def test_estimate_covers_what_training_really_allocates():
    # resident memory of a child holding a network after one training step on 32 64x64 images
    # (its parameters and activation / gradient buffers stay allocated), minus the resident memory
    # before the network was built, is below the estimate, and most of it
    r = run_child("""
        def rss():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        stack = [{"type": "conv", "filters": 64, "kernel": 3, "padding": 1}, {"type": "batchnorm"},
                 {"type": "relu"}, {"type": "maxpool", "pool": 3, "stride": 1},
                 {"type": "conv", "filters": 64, "kernel": 3, "padding": 1}, {"type": "lrn"}, {"type": "fc"}]
        Xb = np.random.default_rng(0).integers(0, 256, (32, 64, 64, 3), dtype=np.uint8)
        before = rss()
        net = _core.Network(stack, [64, 64, 3], 2)
        net.train_step(Xb, np.arange(32), np.arange(32) % 2)
        used = rss() - before
        print(json.dumps({"exc": None, "msg": "", "used": used, "est": net.memory_estimate(32)[0]}))
    """)
    assert 0.5 * r["est"] < r["used"] <= r["est"], r


def test_stacks_whose_sizes_overflow_are_value_errors():
    # sizes beyond int64 (conv weights 2**20 x 2**20 x 2**20 x 2**20) and beyond the kernels' int
    with pytest.raises(ValueError, match=r"layer 1 \(conv\)"):
        _core.Network(
            [
                {"type": "conv", "filters": 2**20, "kernel": 1},
                {"type": "conv", "filters": 2**20, "kernel": 2**20, "padding": 2**20},
                {"type": "fc"},
            ],
            [4, 4, 3],
            2,
        )
    # a long stack of padded convolutions grows the image past 2**31 - 1 rows
    grow = [{"type": "conv", "filters": 1, "kernel": 1, "padding": 2**20}] * 1100 + [{"type": "fc"}]
    with pytest.raises(ValueError, match=r"layer \d+ \(conv\): output height \d+ exceeds 2147483647"):
        _core.Network(grow, [1, 1, 1], 2)
