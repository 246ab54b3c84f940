"""`ndlm-sk evaluate` / ndlm_sk.evaluate: a saved model scored on a labeled folder."""

import contextlib
import csv
import io
import json
import shutil
import warnings

import numpy as np
import pytest
from ndlm_sk.cli import main
from ndlm_sk.datasets import load_pbc, load_pbc_sample, pbc_sample_path
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_comparison import wilson_interval
from ndlm_sk.model_io import save_model
from ndlm_sk.report import classification_report_ndlm
from sklearn.exceptions import ConvergenceWarning

SIZE = 24


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    X, y = load_pbc_sample(SIZE)
    clf = NDLMClassifier("dfcn", max_iter=3, n_iter_no_change=3, batch_size=16, random_state=0, n_jobs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed number of epochs
        clf.fit(X[::2], y[::2])
    path = tmp_path_factory.mktemp("evaluate") / "m.ndlm"
    save_model(clf, path)
    return path


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """Sample images of 3 classes, a duplicate inside a class, an unreadable .jpg, a folder of a
    class the model does not know, and a file in the top folder."""
    root = tmp_path_factory.mktemp("labeled")
    for c in ("basophil", "lymphocyte", "neutrophil"):
        (root / c).mkdir()
        for f in sorted((pbc_sample_path() / c).glob("*.jpg"))[:8]:
            shutil.copy(f, root / c / f.name)
    first = sorted((root / "basophil").glob("*.jpg"))[0]
    shutil.copy(first, root / "basophil" / "zz_copy.jpg")
    (root / "neutrophil" / ".DS_1.jpg").write_bytes(b"\x00\x05\x16\x07 not an image")
    (root / "platelet").mkdir()
    shutil.copy(first, root / "platelet" / "pl.jpg")
    (root / "notes.jpg").write_bytes(b"top-level file: not in a class folder")
    return root


def test_evaluate_matches_the_estimator(model, labeled, tmp_path):
    out_dir = tmp_path / "ev"
    code, out, err = run("evaluate", model, labeled, "--out", out_dir, "--threads", "1")
    assert code == 0, err
    # the same images (load_pbc's listing and duplicate removal) and the same numbers as the estimator
    from ndlm_sk.model_io import load_model

    clf = load_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_pbc warns about .DS_1.jpg and the duplicate
        X, y, paths = load_pbc(
            labeled, SIZE, classes=["basophil", "lymphocyte", "neutrophil"], cache=False, return_paths=True
        )
    assert len(y) == 24
    y_pred = clf.predict(X)
    k = int(np.sum(y_pred == y))
    lo, hi = wilson_interval(k, len(y))
    assert (
        f"Accuracy: {100 * k / len(y):.2f}% ({k}/24 images; 95 % Wilson interval {100 * lo:.1f}-{100 * hi:.1f} %)"
        in out
    )
    for word in ("Precision", "Sensitivity", "Specificity", "F1-score", "Confusion matrix"):
        assert word in out
    # skipped, ignored and duplicate files are named on stderr
    assert "neutrophil/.DS_1.jpg: not a readable image" in err
    assert "ignored folders that are not a class of the model: platelet" in err
    assert "1 byte-identical duplicate" in err
    # files written
    doc = json.loads((out_dir / "report.json").read_text())
    expected = classification_report_ndlm(y, y_pred, labels=list(clf.classes_))
    assert doc["per_class"].keys() == expected["per_class"].keys()
    for c, vals in expected["per_class"].items():
        assert doc["per_class"][c] == pytest.approx(vals)
    assert doc["confusion_matrix"] == expected["confusion_matrix"]
    assert doc["extra"]["duplicates dropped"] == ["basophil/zz_copy.jpg"]
    assert doc["extra"]["accuracy 95 % Wilson interval (%)"] == pytest.approx([100 * lo, 100 * hi], abs=0.006)
    assert (out_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out_dir / "misclassified.csv", newline="") as f:
        wrong = list(csv.DictReader(f))
    assert {r["file"] for r in wrong} == {p for p, t, q in zip(paths, y, y_pred) if t != q}
    assert all(r["true"] != r["predicted"] for r in wrong)
    with open(out_dir / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == paths and [r["predicted"] for r in rows] == list(y_pred)
    assert len(wrong) == len(y) - k
    for r in wrong[:50]:
        assert f"{r['file']}: {r['true']} predicted as {r['predicted']}" in out


def test_evaluate_user_errors(model, tmp_path):
    (tmp_path / "platelet").mkdir()
    code, _, err = run("evaluate", model, tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "no subfolder named after a class of the model" in err and "basophil" in err
    code, _, err = run("evaluate", model, tmp_path / "missing", "--out", tmp_path / "o")
    assert code == 2 and "is not a folder" in err
