"""Tests of ndlm_sk.report: metrics, paper numbers, Markdown/JSON, figures."""

import json
import sys

import numpy as np
import pytest
from ndlm_sk.report import (
    PAPER_RESULTS,
    classification_report_ndlm,
    plot_confusion_matrix,
    plot_learning_curves,
    to_json,
    to_markdown,
    write_report,
)
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Confusion matrix (rows true, columns predicted), computed by hand:
#        a  b  c
#   a  [ 2  1  0 ]
#   b  [ 0  1  1 ]
#   c  [ 0  0  1 ]
Y_TRUE = ["a", "a", "a", "b", "b", "c"]
Y_PRED = ["a", "a", "b", "b", "c", "c"]
#            precision  sensitivity  specificity      F1    support
EXPECTED = {
    "a": (1.0, 2 / 3, 3 / 3, 0.8, 3),  # TP 2, FP 0, FN 1, TN 3
    "b": (0.5, 0.5, 3 / 4, 0.5, 2),  # TP 1, FP 1, FN 1, TN 3
    "c": (0.5, 1.0, 4 / 5, 2 / 3, 1),  # TP 1, FP 1, FN 0, TN 4
}


def _valid_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200


def _history(n_epochs=5, iters=4):
    rng = np.random.default_rng(0)
    return {
        "loss": np.linspace(1.5, 0.2, n_epochs).tolist(),
        "iteration_loss": (np.linspace(1.6, 0.15, n_epochs * iters) + 0.05 * rng.random(n_epochs * iters)).tolist(),
        "train_accuracy": np.linspace(0.5, 0.98, n_epochs).tolist(),
        "val_accuracy": np.linspace(0.45, 0.95, n_epochs).tolist(),
        "val_loss": np.linspace(1.6, 0.3, n_epochs).tolist(),
    }


def test_hand_computed_example():
    r = classification_report_ndlm(Y_TRUE, Y_PRED)
    assert r["accuracy"] == pytest.approx(100 * 4 / 6)
    assert r["error"] == pytest.approx(100 * 2 / 6)
    assert r["n_samples"] == 6
    assert r["labels"] == ["a", "b", "c"]
    assert r["confusion_matrix"] == {"labels": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 1, 1], [0, 0, 1]]}
    for lab, (p, s, sp, f1, n) in EXPECTED.items():
        got = r["per_class"][lab]
        assert got["precision"] == pytest.approx(p)
        assert got["sensitivity"] == pytest.approx(s)
        assert got["specificity"] == pytest.approx(sp)
        assert got["f1"] == pytest.approx(f1)
        assert got["support"] == n
    assert r["macro_avg"]["specificity"] == pytest.approx((1 + 0.75 + 0.8) / 3)
    assert r["weighted_avg"]["sensitivity"] == pytest.approx(4 / 6)  # = accuracy
    assert r["macro_avg"]["support"] == 6
    json.dumps(r)  # plain Python types only


def test_labels_order_absent_class_and_int_labels():
    r = classification_report_ndlm(Y_TRUE, Y_PRED, labels=["c", "b", "a", "z"])
    assert r["labels"] == ["c", "b", "a", "z"]
    assert r["confusion_matrix"]["matrix"][0] == [1, 0, 0, 0]
    assert r["per_class"]["z"] == {"precision": 0.0, "sensitivity": 0.0, "specificity": 1.0, "f1": 0.0, "support": 0}

    ri = classification_report_ndlm(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert ri["labels"] == [0, 1, 2] and isinstance(ri["labels"][0], int)
    assert set(ri["per_class"]) == {"0", "1", "2"}
    json.dumps(ri)


def test_perfect_predictions():
    y = ["x", "y", "y", "z"]
    r = classification_report_ndlm(y, y)
    assert r["accuracy"] == 100.0 and r["error"] == 0.0
    for v in r["per_class"].values():
        assert v["precision"] == v["sensitivity"] == v["specificity"] == v["f1"] == 1.0


def test_paper_results():
    assert PAPER_RESULTS["table_1"]["accuracy"] == 96.19
    assert PAPER_RESULTS["table_1"]["error"] == 3.81
    t2 = PAPER_RESULTS["table_2"]
    as_tuples = {k: (v["precision"], v["sensitivity"], v["specificity"], v["f1"]) for k, v in t2.items()}
    assert as_tuples == {
        "basophil": (0.91, 0.93, 0.99, 0.92),
        "eosinophil": (0.99, 0.98, 1.00, 0.99),
        "lymphocyte": (0.94, 0.93, 0.99, 0.94),
        "monocyte": (0.89, 0.95, 0.98, 0.92),
        "neutrophil": (0.98, 0.96, 0.99, 0.97),
    }
    assert PAPER_RESULTS["table_3"] == {
        "DFCN": 94.56,
        "DL": 94.76,
        "DFTL": 94.7,
        "CDFL": 90.64,
        "NDEL": 95.69,
        "ResNet": 95.22,
    }


def _wbc_report():
    classes = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    rng = np.random.default_rng(1)
    y_true = rng.choice(classes, 300)
    y_pred = y_true.copy()
    flip = rng.random(300) < 0.1
    y_pred[flip] = rng.choice(classes, int(flip.sum()))
    return classification_report_ndlm(y_true, y_pred)


def test_markdown_with_paper_numbers():
    r = _wbc_report()
    md = to_markdown(r, title="Run 1", extra={"epochs": 100, "seed": 0, "note": "a|b"})
    assert md.startswith("# Run 1\n")
    for heading in ("## Table I", "## Table II", "## Confusion matrix", "## Run details"):
        assert heading in md
    for number in ("96.19", "3.81", "94.56", "94.76", "94.70", "90.64", "95.69", "95.22", "5.44", "4.31"):
        assert number in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines() if line.startswith("|")}
    # ours and the paper's per metric: basophil .91/.93/.99/.92 appear in the basophil row
    cells = [c.strip() for c in rows["Basophil"].split("|")[1:-1]]
    assert cells[2::2][:4] == ["0.91", "0.93", "0.99", "0.92"]
    assert cells[1] == f"{r['per_class']['basophil']['precision']:.2f}"
    assert [c.strip() for c in rows["Eosinophil"].split("|")[1:-1]][2::2][:4] == ["0.99", "0.98", "1.00", "0.99"]
    assert f"**{r['accuracy']:.2f}**" in md
    assert "a\\|b" in md  # table-safe
    cm_row = [c.strip() for c in rows["basophil"].split("|")[1:-1]]
    assert [int(v) for v in cm_row[1:6]] == r["confusion_matrix"]["matrix"][0]

    plain = to_markdown(r, compare_with_paper=False)
    assert "96.19" not in plain and "paper" not in plain.lower()


def test_markdown_unknown_classes_show_dash():
    md = to_markdown(classification_report_ndlm(Y_TRUE, Y_PRED))
    assert "| A | 1.00 | – |" in md


def test_to_json_roundtrip(tmp_path):
    r = _wbc_report()
    doc = dict(r, extra={"arr": np.arange(3), "f": np.float32(0.5), "i": np.int64(7)})
    path = to_json(doc, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert back["accuracy"] == pytest.approx(r["accuracy"])
    assert back["per_class"] == r["per_class"]
    assert back["extra"] == {"arr": [0, 1, 2], "f": 0.5, "i": 7}


def test_plots_are_valid_pngs(tmp_path):
    r = _wbc_report()
    _valid_png(plot_confusion_matrix(r, tmp_path / "cm.png"))
    _valid_png(plot_learning_curves(_history(), tmp_path / "lc.png"))
    # partial histories: loss only; iteration loss only; accuracies in percent
    _valid_png(plot_learning_curves({"loss": [1.0, 0.5, 0.3]}, tmp_path / "lc2.png"))
    _valid_png(plot_learning_curves({"iteration_loss": [1.0, 0.8, 0.5, 0.4]}, tmp_path / "lc3.png"))
    _valid_png(plot_learning_curves({"val_accuracy": [50.0, 70.0, 90.0]}, tmp_path / "lc4.png"))

    class Fitted:  # a fitted NDLMClassifier's curves
        loss_curve_ = [1.0, 0.6, 0.4]
        batch_loss_curve_ = [1.2, 0.9, 0.7, 0.5, 0.45, 0.35]
        train_scores_ = [0.5, 0.7, 0.8]
        validation_scores_ = None

    _valid_png(plot_learning_curves(Fitted(), tmp_path / "lc5.png"))
    from ndlm_sk.report import _history_of

    assert _history_of(Fitted()) == {
        "loss": Fitted.loss_curve_,
        "iteration_loss": Fitted.batch_loss_curve_,
        "train_accuracy": Fitted.train_scores_,
    }
    with pytest.raises(ValueError, match="none of"):
        plot_learning_curves({"other": [1]}, tmp_path / "bad.png")


def test_write_report(tmp_path):
    r = _wbc_report()
    h = _history()
    written = write_report(tmp_path / "out", r, history=h, extra={"preset": "ndlm"})
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "learning_curves.png",
        "report.json",
        "report.md",
    ]
    assert set(written) == {"markdown", "json", "confusion_matrix", "learning_curves"}
    _valid_png(out / "confusion_matrix.png")
    _valid_png(out / "learning_curves.png")
    doc = json.loads((out / "report.json").read_text())
    assert doc["extra"] == {"preset": "ndlm"}
    assert doc["history"]["loss"] == pytest.approx(h["loss"])
    assert doc["confusion_matrix"] == r["confusion_matrix"]
    md = (out / "report.md").read_text()
    assert "96.19" in md and "preset" in md

    written = write_report(tmp_path / "out2", r)
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == ["confusion_matrix.png", "report.json", "report.md"]


def test_missing_matplotlib(tmp_path, monkeypatch):
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    r = classification_report_ndlm(Y_TRUE, Y_PRED)
    with pytest.raises(ImportError, match=r"pip install ndlm_sk\[report\]"):
        plot_confusion_matrix(r, tmp_path / "cm.png")
    with pytest.raises(ImportError, match=r"pip install ndlm_sk\[report\]"):
        plot_learning_curves(_history(), tmp_path / "lc.png")
    with pytest.warns(UserWarning, match="figures skipped"):
        write_report(tmp_path / "out", r, history=_history())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]
