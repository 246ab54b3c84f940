"""Table III's two-network models (CoupledNDLM) and reproduce with them: soft vote, .ndlm files, resume."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from ndlm_sk.datasets import load_pbc_sample, pbc_sample_path
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_io import load_model, save_model
from ndlm_sk.reproduce import reproduce
from ndlm_sk.table3 import CoupledNDLM, make_table3_model
from sklearn.exceptions import ConvergenceWarning


@pytest.fixture(scope="module")
def data():
    return load_pbc_sample(image_size=24)


def _coupled(**kw):
    kw = {"max_iter": 2, "batch_size": 32, "n_jobs": 1, **kw}
    return make_table3_model("cdfl", random_state=5, **kw)


def test_soft_vote_of_two_differently_seeded_branches(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = _coupled().fit(X, y)
        single = NDLMClassifier("cdfl", max_iter=2, batch_size=32, n_jobs=1, random_state=6).fit(X, y)
    a, b = m.estimators_
    assert (a.random_state, b.random_state) == (5, 6)
    assert a.layers_ == b.layers_ and a.n_params_ == b.n_params_ and m.n_params_ == 2 * a.n_params_
    pa, pb = a.predict_proba(X), b.predict_proba(X)
    assert not np.allclose(pa, pb)
    np.testing.assert_allclose(m.predict_proba(X), (pa + pb) / 2)
    np.testing.assert_array_equal(m.predict(X), m.classes_[np.argmax(pa + pb, axis=1)])
    np.testing.assert_array_equal(pb, single.predict_proba(X))  # branch 2 is the seed-6 network
    assert m.n_iter_ == 2 and len(m.loss_curve_) == 2
    ddfl = make_table3_model("ddfl")
    assert ddfl.estimator.architecture == "dl" and ddfl.n_networks == 2


def test_warm_start_continues_both_branches(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = _coupled(warm_start=True, max_iter=1).fit(X, y)
        first = list(m.estimators_)
        m.fit(X, y)
    assert m.estimators_[0] is first[0] and m.n_iter_ == 2


def test_ndlm_file_round_trip_and_errors(data, tmp_path):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = _coupled(input_normalization="zerocenter").fit(X, y)
    path = tmp_path / "c.ndlm"
    save_model(m, path)
    back = load_model(path)
    assert isinstance(back, CoupledNDLM) and back.random_state == 5
    np.testing.assert_array_equal(back.predict_proba(X), m.predict_proba(X))
    save_model(CoupledNDLM(), tmp_path / "u.ndlm")
    assert not hasattr(load_model(tmp_path / "u.ndlm"), "estimators_")
    with pytest.raises(ValueError, match="n_networks"):
        CoupledNDLM(n_networks=0).fit(X, y)
    with pytest.raises(ValueError, match="'estimator' parameter of CoupledNDLM must be None or an instance of"):
        CoupledNDLM(estimator="cdfl").fit(X, y)


def test_reproduce_cdfl_on_the_sample_resumes(tmp_path):
    out = tmp_path / "run"
    kw = dict(image_size=24, batch_size=32, threads=1, architecture="cdfl", cache_dir=tmp_path / "cache", log=None)
    kw["log"] = lambda m: None
    opts = dict(input_normalization="zerocenter", shuffle="once", batchnorm_statistics="population")
    reproduce(pbc_sample_path(), out, epochs=1, **kw, **opts)
    hist = json.loads((out / "history.json").read_text())
    assert hist["config"]["input_normalization"] == "zerocenter" and len(hist["loss"]) == 1
    report = reproduce(pbc_sample_path(), out, epochs=2, **kw, **opts)  # resumes from epoch 1
    hist = json.loads((out / "history.json").read_text())
    assert len(hist["loss"]) == 2 and 0 <= report["accuracy"] <= 100
    model = load_model(out / "model.ndlm")
    assert isinstance(model, CoupledNDLM) and model.estimators_[0].input_normalization == "zerocenter"
    with pytest.raises(ValueError, match="another configuration"):
        reproduce(pbc_sample_path(), out, epochs=2, **kw)  # other options, same folder
    with pytest.raises(TypeError, match="unknown options"):
        reproduce(pbc_sample_path(), out, epochs=2, **kw, colour=True)


def test_cli_reproduce_ddfl_with_matlab_flags(tmp_path, monkeypatch, capsys):
    from ndlm_sk.cli import main

    monkeypatch.setenv("NDLM_SK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "ddfl"
    argv = ["reproduce", "--data", str(pbc_sample_path()), "--out", str(out), "--epochs", "1"]
    argv += ["--image-size", "24", "--batch-size", "64", "--threads", "1", "--architecture", "ddfl"]
    argv += ["--input-normalization", "zscore", "--normalization-dimension", "channel", "--shuffle", "once"]
    assert main(argv) == 0
    config = json.loads((out / "history.json").read_text())["config"]
    assert config["shuffle"] == "once" and config["normalization_dimension"] == "channel"
    model = load_model(out / "model.ndlm")
    assert isinstance(model, CoupledNDLM) and model.estimators_[1].architecture == "dl"
    assert model.estimators_[0].input_std_.shape == (3,)


def test_reproduce_model_seed_and_validation_only_run(tmp_path):
    kw = dict(image_size=16, batch_size=32, threads=1, cache_dir=tmp_path / "cache", log=lambda m: None, epochs=1)
    a = reproduce(pbc_sample_path(), tmp_path / "a", model_seed=3, test=False, **kw)
    assert a["config"]["seed"] == 0 and a["config"]["model_seed"] == 3 and "accuracy" not in a
    assert not (tmp_path / "a" / "model.ndlm").exists() and (tmp_path / "a" / "validation.json").exists()
    reproduce(pbc_sample_path(), tmp_path / "b", model_seed=4, test=False, **kw)
    wa = load_model(tmp_path / "a" / "best_model.ndlm")._net.get_state()
    wb = load_model(tmp_path / "b" / "best_model.ndlm")._net.get_state()
    assert any(not np.array_equal(wa[k], wb[k]) for k in wa)  # another model seed, another model on the same split
    with pytest.raises(ValueError, match="another configuration"):
        reproduce(pbc_sample_path(), tmp_path / "a", model_seed=4, test=False, **kw)


def test_ablation_script_on_the_sample(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    out = tmp_path / "abl"
    argv = ["--data", str(pbc_sample_path()), "--out", str(out), "--epochs", "1", "--image-size", "16"]
    ablation.main(argv + ["--settings", "ndlm_sk-defaults", "zerocenter"])
    doc = json.loads((out / "results.json").read_text())
    assert {(r["setting"], r["model_seed"]) for r in doc["runs"]} == {
        ("ndlm_sk-defaults", 0),
        ("ndlm_sk-defaults", 1),
        ("zerocenter", 0),
        ("zerocenter", 1),
    }
    assert doc["chosen"] in ("ndlm_sk-defaults", "zerocenter")
    assert "test part" in (out / "results.md").read_text() and "chosen on validation" in capsys.readouterr().out


def test_reproduce_uses_the_five_wbc_classes_of_a_full_release(tmp_path):
    """The PBC release has 8 class folders: reproduce takes the paper's five unless told otherwise."""
    import shutil

    from ndlm_sk.cli import main

    root = tmp_path / "PBC_dataset_normal_DIB"
    shutil.copytree(pbc_sample_path(), root)
    (root / "platelet").mkdir()
    for f in sorted((root / "eosinophil").glob("*.jpg"))[:8]:  # not loaded together with eosinophil below
        shutil.copy(f, root / "platelet" / f"PLT_{f.name}")
    kw = dict(image_size=16, batch_size=32, threads=1, cache_dir=tmp_path / "cache", log=lambda m: None, epochs=1)
    a = reproduce(root, tmp_path / "a", test=False, **kw)
    assert a["config"]["classes"] == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert load_model(tmp_path / "a" / "best_model.ndlm").classes_.tolist() == a["config"]["classes"]
    two = ["--image-size", "16", "--threads", "1", "--epochs", "1", "--no-test", "--classes", "basophil,platelet"]
    assert main(["reproduce", "--data", str(root), "--out", str(tmp_path / "b"), *two]) == 0
    assert load_model(tmp_path / "b" / "best_model.ndlm").classes_.tolist() == ["basophil", "platelet"]
