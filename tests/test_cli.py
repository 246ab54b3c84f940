"""The ndlm-sk command line, run in-process on tiny data."""

import contextlib
import csv
import io
import os
import shutil
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import joblib
import numpy as np
import pytest
from ndlm_sk import __version__
from ndlm_sk.cli import build_parser, main
from ndlm_sk.datasets import load_pbc, pbc_sample_path
from ndlm_sk.estimator import NDLMClassifier
from ndlm_sk.model_io import load_model

CLASSES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
TRAIN = ["train", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--threads", "1"]


def run(*argv):
    """main(argv) in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def trained(workdir):
    model = workdir / "m.ndlm"
    code, out, err = run(*TRAIN, "--save", model)
    assert code == 0, err
    return model, out


@pytest.fixture(scope="module")
def image_folder(workdir):
    """A few sample images in class folders (so load_pbc reads the same files), a nested folder,
    an unreadable .jpg and a non-image file."""
    root = workdir / "images"
    for c in ("basophil", "monocyte"):
        (root / c).mkdir(parents=True)
        for f in sorted((pbc_sample_path() / c).glob("*.jpg"))[:3]:
            shutil.copy(f, root / c / f.name)
    (root / "monocyte" / "deeper").mkdir()
    shutil.copy(sorted((pbc_sample_path() / "eosinophil").glob("*.jpg"))[0], root / "monocyte" / "deeper" / "eo.jpg")
    (root / "basophil" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "basophil" / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_train_reports_and_saves(trained):
    model, out = trained
    assert "Loaded 200 images" in out and "embedded PBC sample" in out
    assert "Test accuracy:" in out and "/50 images; 95 % Wilson interval" in out  # stratified 25 % of 200
    for word in ("Precision", "Sensitivity", "Specificity", "F1"):
        assert word in out
    for c in CLASSES:
        assert c.capitalize() in out
    assert f"Saved the model to {model}" in out
    clf = load_model(model)
    assert clf.image_shape_ == (32, 32, 3) and clf.n_iter_ == 1 and list(clf.classes_) == CLASSES


def test_train_joblib_other_architecture_and_folder(workdir, image_folder):
    path = workdir / "m.joblib"
    with pytest.warns(UserWarning, match="broken.jpg"):  # load_pbc's PBCDataWarning
        code, out, err = run(
            *TRAIN,
            "--architecture",
            "dfcn",
            "--test-size",
            "0.3",
            "--seed",
            "3",
            "--augment",
            "--input-normalization",
            "zerocenter",
            "--shuffle",
            "once",
            "--data",
            image_folder,
            "--save",
            path,
        )
    assert code == 0, err
    assert "Loaded 6 images of 2 classes" in out  # load_pbc reads <class>/<file> only
    clf = joblib.load(path)
    assert isinstance(clf, NDLMClassifier) and clf.architecture == "dfcn" and clf.augment is True
    assert clf.input_normalization == "zerocenter" and clf.shuffle == "once" and clf.input_mean_.shape == (32, 32, 3)
    assert list(clf.classes_) == ["basophil", "monocyte"]


def test_train_progress_and_why_it_stopped(workdir):
    model = workdir / "stop.ndlm"
    # tol 10: no epoch ever improves the loss by 10, so with patience 1 the rule ends epoch 3
    # (MLPClassifier's count: more than n_iter_no_change epochs without improvement)
    code, out, err = run(*TRAIN, "--epochs", "20", "--patience", "1", "--tol", "10", "--save", model)
    assert code == 0, err
    lines = [l for l in err.splitlines() if "epoch" in l]
    assert len(lines) == 3, err
    assert lines[0].startswith("ndlm-sk: epoch 1/20: loss ") and "train acc" in lines[0]
    assert "elapsed, at most" in lines[0] and "left" in lines[0] and "val acc" not in lines[0]
    assert (
        "Stopped early at epoch 3 of at most 20: the training loss did not improve by tol=10 or more "
        "for 2 epochs in a row (--patience 1)" in out
    )
    assert "--no-early-stopping runs all epochs" in out and "for 3 epochs in" in out
    assert load_model(model).n_iter_ == 3

    code, out, err = run(*TRAIN, "--epochs", "4", "--patience", "1", "--tol", "10", "--no-early-stopping", "--quiet")
    assert code == 0, err
    assert "Ran all 4 epochs (--epochs)." in out and "for 4 epochs in" in out
    assert "epoch" not in err  # --quiet

    # with a validation part the rule watches its accuracy and keeps the best epoch's weights
    model = workdir / "val.ndlm"
    code, out, err = run(
        *TRAIN, "--epochs", "20", "--patience", "1", "--tol", "10", "--validation-size", "0.2", "--save", model
    )
    assert code == 0, err
    assert all("val acc" in l for l in err.splitlines() if "epoch" in l)
    assert "at epoch 3 of at most 20: the validation accuracy did not improve" in out
    scores = load_model(model).validation_scores_
    best = int(np.argmax(scores))
    assert f"kept the weights of epoch {best + 1} (validation accuracy {scores[best]:.4f})" in out
    assert "| validation images | 40 |" in out and "| test images | 50 |" in out


def test_train_classes_flag(image_folder):
    with pytest.warns(UserWarning, match="broken.jpg"):
        code, out, err = run(*TRAIN, "--data", image_folder, "--classes", "monocyte, basophil", "--test-size", "0")
    assert code == 0, err
    assert "Loaded 6 images of 2 classes" in out
    code, _, err = run(*TRAIN, "--data", image_folder, "--classes", "platelet")
    assert code == 2 and "class folder(s) ['platelet'] not found" in err
    code, _, err = run(*TRAIN, "--classes", "basophil")
    assert code == 2 and "--classes needs --data" in err


def test_train_small_class_hints(workdir):
    root = workdir / "tiny"
    for c, n in (("basophil", 4), ("monocyte", 1)):
        (root / c).mkdir(parents=True)
        for f in sorted((pbc_sample_path() / c).glob("*.jpg"))[:n]:
            shutil.copy(f, root / c / f.name)
    code, _, err = run(*TRAIN, "--data", root)
    assert code == 2
    assert "class monocyte has a single image: a stratified --test-size split needs at least 2 images" in err
    assert "--test-size 0" in err and "least populated" not in err  # not scikit-learn's raw text
    code, out, err = run(*TRAIN, "--data", root, "--test-size", "0", "--quiet")
    assert code == 0 and "Trained" in out, err
    # 2 images per class, but a test part smaller than the number of classes
    for f in sorted((pbc_sample_path() / "monocyte").glob("*.jpg"))[1:3]:
        shutil.copy(f, root / "monocyte" / f.name)
    (root / "eosinophil").mkdir()
    for f in sorted((pbc_sample_path() / "eosinophil").glob("*.jpg"))[:2]:
        shutil.copy(f, root / "eosinophil" / f.name)
    code, _, err = run(*TRAIN, "--data", root, "--test-size", "0.2")
    assert code == 2, err
    assert "cannot split 9 images of 3 classes (fewest: eosinophil 2, monocyte 3, basophil 4)" in err
    assert "every part needs at least one image per class" in err


def test_train_out_folder(workdir):
    import json

    out_dir = workdir / "train-out"
    code, out, err = run(*TRAIN, "--out", out_dir)
    assert code == 0, err
    for name in ("report.md", "report.json", "confusion_matrix.png", "learning_curves.png", "model.ndlm"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    doc = json.loads((out_dir / "report.json").read_text())
    clf = load_model(out_dir / "model.ndlm")
    assert doc["extra"]["stopped"] == "ran all 1 epochs (--epochs)" and clf.n_iter_ == 1
    assert doc["history"]["loss"] == pytest.approx(clf.loss_curve_) and doc["n_samples"] == 50
    assert "| stopped | ran all 1 epochs (--epochs) |" in (out_dir / "report.md").read_text()

    # no test part: the curves, the run's details and the model
    code, out, err = run(*TRAIN, "--test-size", "0", "--out", workdir / "train-out-0")
    assert code == 0, err
    assert sorted(p.name for p in (workdir / "train-out-0").iterdir()) == [
        "learning_curves.png",
        "model.ndlm",
        "report.json",
    ]


def test_predict_folder_skips_unreadable(trained, image_folder):
    model, _ = trained
    code, out, err = run("predict", model, image_folder, image_folder / "missing.jpg")
    assert code == 0
    assert "broken.jpg: not a readable image (" in err and "missing.jpg: no such file or folder" in err
    assert "notes.txt: not read: the extension is not one of .jpg" in err  # named, not silently ignored
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["file", "predicted"] + CLASSES
    rows = rows[1:]
    # the closing summary: counts per predicted class, and every skipped file again with its reason
    predicted = Counter(r[1] for r in rows)
    summary = ", ".join(f"{c} {predicted.get(c, 0)}" for c in CLASSES)
    last = err.strip().splitlines()[-2:]
    assert last[0] == f"ndlm-sk: predicted 7 image(s): {summary}"
    assert last[1].startswith("ndlm-sk: skipped 3 file(s): ") and all(
        name in last[1] for name in ("broken.jpg (not a readable image", "missing.jpg (no such", "notes.txt (not read")
    )
    assert len(rows) == 7 and not any("notes.txt" in r[0] for r in rows)
    assert any(r[0].endswith(os.path.join("deeper", "eo.jpg")) for r in rows)  # recursive
    # the same numbers as the estimator on images loaded by load_pbc (same resizing)
    clf = load_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # load_pbc warns about broken.jpg
        X, _, paths = load_pbc(image_folder, 32, cache=False, return_paths=True)
    expected = dict(zip(paths, clf.predict_proba(X)))
    found = 0
    for r in rows:
        rel = Path(r[0]).relative_to(image_folder).as_posix()
        if rel in expected:
            found += 1
            np.testing.assert_allclose([float(v) for v in r[2:]], expected[rel], atol=1e-6)
            assert r[1] == CLASSES[int(np.argmax(expected[rel]))]
    assert found == 6


def test_predict_table_and_single_file(trained, image_folder):
    model, _ = trained
    f = image_folder / "basophil" / sorted(os.listdir(image_folder / "basophil"))[0]
    code, out, err = run("predict", model, f, "--format", "table", "--image-size", "32")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["file", "predicted"] + CLASSES
    assert len(lines) == 2 and lines[1].startswith(str(f))
    assert abs(sum(float(v) for v in lines[1].split()[2:]) - 1) < 1e-3


def test_predict_nothing_readable(trained, image_folder):
    model, _ = trained
    code, out, err = run("predict", model, image_folder / "basophil" / "broken.jpg")
    assert code == 1 and "broken.jpg" in err
    code, _, err = run("predict", model, image_folder / "nothing-here")
    assert code == 1 and "no such file" in err


def test_predict_user_errors(trained, image_folder, workdir):
    model, _ = trained
    code, _, err = run("predict", model, image_folder, "--image-size", "64")
    assert code == 2 and "differs from the 32x32" in err
    code, _, err = run("predict", workdir / "m.txt", image_folder)
    assert code == 2 and ".ndlm" in err
    bad = workdir / "corrupt.ndlm"
    bad.write_bytes(model.read_bytes()[:500])
    code, _, err = run("predict", bad, image_folder)
    assert code == 2 and "not a valid ndlm_sk model" in err
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            main(["predict", str(model), str(image_folder), "--format", "xml"])


def test_export_onnx(trained, workdir):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, _ = trained
    out_path = workdir / "m.onnx"
    code, out, err = run("export-onnx", model, out_path)
    assert code == 0, err
    assert "'images' (N, 32, 32, 3) uint8" in out
    clf = load_model(model)
    X = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    sess = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
    label, proba, _ = sess.run(None, {"images": X})
    np.testing.assert_allclose(proba, clf.predict_proba(X), atol=1e-4)
    np.testing.assert_array_equal(label, clf.predict(X))
    code, _, err = run("export-onnx", model, workdir / "f.onnx", "--input-dtype", "float32")
    assert code == 0, err


def test_parser_structure():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) >= {"train", "export-onnx", "predict"}
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            main([])  # a subcommand is required
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            main(["train", "--test-size", "1.5"])


def test_python_dash_m():
    import ndlm_sk

    env = dict(os.environ)
    src = str(Path(ndlm_sk.__file__).resolve().parents[1])  # where this process found ndlm_sk
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-m", "ndlm_sk", "--version"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0 and res.stdout.strip() == f"ndlm-sk {__version__}"


# ----------------------------------------------------------------------------- one-line errors
def _one_error_line(err, *needles):
    """stderr is exactly one line ``ndlm-sk: error: ...`` containing every needle."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ndlm-sk: error: "), err
    for n in needles:
        assert str(n) in lines[0], (n, err)
    return lines[0]


def test_model_files_by_content_and_one_line_errors(trained, image_folder, workdir):
    model, _ = trained
    renamed = workdir / "renamed.joblib"  # an .ndlm renamed .joblib: read safely as .ndlm
    renamed.write_bytes(model.read_bytes())
    code, out, err = run("predict", renamed, image_folder)
    assert code == 0 and len(out.splitlines()) > 1, err
    clf = load_model(model)
    joblib.dump(clf, workdir / "p.joblib")
    (workdir / "p.ndlm").write_bytes((workdir / "p.joblib").read_bytes())  # a pickle named .ndlm: refused
    code, _, err = run("predict", workdir / "p.ndlm", image_folder)
    assert code == 2
    _one_error_line(err, "p.ndlm: not an .ndlm archive but looks like a joblib")
    blob = (workdir / "p.joblib").read_bytes()
    (workdir / "cut.joblib").write_bytes(blob[: len(blob) // 2])  # joblib says "EOF: reading array data"
    code, _, err = run("predict", workdir / "cut.joblib", image_folder)
    assert code == 2
    _one_error_line(err, "cut.joblib: not a readable joblib model file")
    code, _, err = run("predict", workdir / "absent.ndlm", image_folder)
    assert code == 2
    _one_error_line(err, "absent.ndlm: No such file or directory")
    code, _, err = run("predict", image_folder, image_folder)  # a folder given as the model
    assert code == 2
    _one_error_line(err, str(image_folder), "must end in .ndlm")
    code, _, err = run("export-onnx", model, workdir / "missing" / "m.onnx")
    assert code == 2
    _one_error_line(err, "m.onnx: the folder", "does not exist")


def test_train_checks_the_save_path_before_training(workdir):
    target = workdir / "missing" / "dir" / "m.ndlm"
    code, out, err = run(*TRAIN, "--save", target)
    assert code == 2 and out == ""  # nothing loaded or trained
    _one_error_line(err, f"{target}: the folder", "does not exist")
    code, out, err = run(*TRAIN, "--save", workdir / "m.onnx")
    assert code == 2 and out == ""
    _one_error_line(err, "m.onnx: a model file must end in .ndlm")


def test_unexpected_errors_are_one_line_with_exit_code_1(monkeypatch):
    import ndlm_sk.cli as cli

    def boom(args):
        raise RuntimeError("training diverged:\n  the loss is not finite")

    monkeypatch.setattr(cli, "_run_predict", boom)
    code, _, err = run("predict", "m.ndlm", "x")
    assert code == 1
    _one_error_line(err, "RuntimeError: training diverged: the loss is not finite")

    def no_memory(args):
        raise MemoryError("std::bad_alloc")

    monkeypatch.setattr(cli, "_run_predict", no_memory)
    code, _, err = run("predict", "m.ndlm", "x")
    assert code == 1
    _one_error_line(err, "out of memory (std::bad_alloc)")
    monkeypatch.setenv("NDLM_SK_TRACEBACK", "1")
    with pytest.raises(MemoryError):
        run("predict", "m.ndlm", "x")
