"""benchmarks/cv_compare.py end to end on the embedded sample (tiny images, 2 models, 2 folds)."""

import json
import sys
from pathlib import Path

from ndlm_sk.datasets import pbc_sample_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cv_compare  # noqa: E402


def test_cv_compare_runs_and_resumes(tmp_path, capsys):
    argv = ["--data", str(pbc_sample_path()), "--out", str(tmp_path / "cv"), "--models", "ndlm,cdfl"]
    argv += ["--folds", "2", "--image-size", "24", "--max-iter", "2", "--patience", "1", "--threads", "1"]
    argv += ["--batch-size", "64", "--cache-dir", str(tmp_path / "cache")]
    cv_compare.main(argv)
    doc = json.loads((tmp_path / "cv" / "results.json").read_text())
    assert doc["folds"] == 2 and doc["models"] == ["ndlm", "cdfl"]
    assert len(doc["scores"]["cdfl"]["accuracy"]) == 2
    assert set(doc["tests"]["cdfl"]) == {"t", "p_ttest", "mcnemar_b", "mcnemar_c", "p_mcnemar"}
    first = (tmp_path / "cv" / "ndlm" / "fold0.json").read_text()
    capsys.readouterr()
    cv_compare.main(argv)  # every (model, fold) done: nothing retrained
    assert "fold 0:" not in capsys.readouterr().out
    assert (tmp_path / "cv" / "ndlm" / "fold0.json").read_text() == first
    assert "NDLM vs" in (tmp_path / "cv" / "results.md").read_text()
