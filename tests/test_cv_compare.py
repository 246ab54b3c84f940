"""benchmarks/cv_compare.py end to end on the embedded sample (tiny images, 2 models, 2 folds)."""

import json
import sys
from pathlib import Path

from ndlm_sk.datasets import pbc_sample_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cv_compare  # noqa: E402


def test_cv_compare_runs_and_resumes(tmp_path, capsys):
    argv = ["--data", str(pbc_sample_path()), "--out", str(tmp_path / "cv"), "--models", "ndlm,ndlm-augment,cdfl"]
    argv += ["--folds", "2", "--image-size", "24", "--max-iter", "2", "--patience", "1", "--threads", "1"]
    argv += ["--batch-size", "64", "--cache-dir", str(tmp_path / "cache")]
    cv_compare.main(argv)
    doc = json.loads((tmp_path / "cv" / "results.json").read_text())
    assert doc["folds"] == 2 and doc["models"] == ["ndlm", "ndlm-augment", "cdfl"]
    assert len(doc["scores"]["cdfl"]["accuracy"]) == 2
    assert set(doc["tests"]["cdfl"]) == {"t", "p_ttest", "mcnemar_b", "mcnemar_c", "p_mcnemar"}
    first = (tmp_path / "cv" / "ndlm" / "fold0.json").read_text()
    capsys.readouterr()
    cv_compare.main(argv)  # every (model, fold) done: nothing retrained
    assert "fold 0:" not in capsys.readouterr().out
    assert (tmp_path / "cv" / "ndlm" / "fold0.json").read_text() == first
    md = (tmp_path / "cv" / "results.md").read_text()
    assert "NDLM vs" in md and "sensitivity / specificity" in md and "at most 2 epochs" in md
    assert (tmp_path / "cv" / "fold_accuracy.png").stat().st_size > 1000
    rows = (tmp_path / "cv" / "oof_predictions.csv").read_text().splitlines()
    assert rows[0] == "index,label,ndlm,ndlm-augment,cdfl" and len(rows) == 1 + 200
    fold = json.loads(first)
    rates = fold["per_class"]["basophil"]
    assert 0 <= rates["sensitivity"] <= 1 and 0 <= rates["specificity"] <= 1
    # the fold's accuracy from cross_validate agrees with its saved predictions
    import numpy as np
    from ndlm_sk.datasets import load_pbc

    _, y = load_pbc(pbc_sample_path(), 24, cache=True, cache_dir=tmp_path / "cache")
    te = np.asarray(fold["test_index"])
    assert np.isclose(np.mean(y[te].astype(str) == np.asarray(fold["pred"])), fold["accuracy"])
