"""ndlm_sk.smear and `ndlm-sk count`: the differential of one smear."""

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ndlm_sk.cli import main
from ndlm_sk.datasets import pbc_sample_path
from ndlm_sk.smear import DEFAULT_REFERENCE, clopper_pearson, differential

CLASSES = np.array(["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"])


class FixedModel:
    """predict_proba returns given rows: the differential's arithmetic is checked exactly."""

    classes_ = CLASSES

    def __init__(self, proba):
        self.proba = np.asarray(proba, dtype=float)

    def predict_proba(self, X):
        return self.proba[: len(X)]


def _proba(labels, top=0.96):
    p = np.full((len(labels), 5), (1 - top) / 4)
    p[np.arange(len(labels)), labels] = top
    return p


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 100)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 100), rel=1e-6)  # closed form for k=0
    lo, hi = clopper_pearson(50, 100)
    assert (lo, hi) == pytest.approx((0.3983, 0.6017), abs=1e-4)  # Rümke / standard tables


def test_differential_counts_intervals_flags():
    # 100 cells: 90 neutrophils, 10 lymphocytes: neutrophilia and lymphopenia, both intervals outside
    labels = [4] * 90 + [2] * 10
    model = FixedModel(_proba(labels))
    summary, cells = differential(model, np.zeros((100, 4, 4, 3), np.uint8))
    assert summary["n_cells"] == 100 and summary["counts"]["neutrophil"] == 90
    assert summary["percent"]["lymphocyte"] == pytest.approx(10.0)
    lo, hi = summary["ci95"]["neutrophil"]
    assert lo > DEFAULT_REFERENCE["percent"]["neutrophil"][1] and hi < 100
    # 0 of 100 monocytes / eosinophils: the upper limit (3.6 %) is inside their ranges, so no "-penia"
    assert summary["flags"] == ["lymphopenia", "neutrophilia"]
    assert summary["n_review"] == 0 and cells["review"].sum() == 0


def test_no_flag_when_interval_overlaps_range():
    # 10 cells, 9 neutrophils: 90 % but the interval reaches into the 40-80 % range: no flag
    model = FixedModel(_proba([4] * 9 + [2]))
    summary, _ = differential(model, np.zeros((10, 4, 4, 3), np.uint8))
    assert summary["ci95"]["neutrophil"][0] < 80
    assert "neutrophilia" not in summary["flags"]


def test_review_threshold_wbc_and_own_reference():
    p = _proba([4, 4, 2, 2])
    p[0] = [0.1, 0.1, 0.1, 0.2, 0.5]  # uncertain cell
    model = FixedModel(p)
    ref = {"neutrophil": [0, 10], "lymphocyte": [0, 100]}
    summary, _ = differential(model, np.zeros((4, 4, 4, 3), np.uint8), ["a", "b", "c", "d"], reference=ref, wbc=8.0)
    assert summary["review"] == ["a"] and summary["reference_range"] == ref
    assert summary["absolute"]["counts"]["neutrophil"] == pytest.approx(4.0)
    assert summary["absolute"]["reference_range"]["neutrophil"] == pytest.approx([0, 0.8])
    with pytest.raises(ValueError, match="wbc"):
        differential(model, np.zeros((4, 4, 4, 3), np.uint8), wbc=-1)
    with pytest.raises(ValueError, match="low <= high"):
        differential(model, np.zeros((4, 4, 4, 3), np.uint8), reference={"neutrophil": [50, 10]})


def _run(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    d = tmp_path_factory.mktemp("count")
    model = d / "m.ndlm"
    code, _, err = _run("train", "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--threads", "1",
                        "--save", model)  # fmt: skip
    assert code == 0, err
    smear = d / "smear"
    smear.mkdir()
    for c in CLASSES:
        for f in sorted((pbc_sample_path() / c).glob("*.jpg"))[:4]:
            shutil.copy(f, smear / f.name)
    (smear / "broken.jpg").write_bytes(b"not a jpeg")
    out = d / "out"
    code, stdout, err = _run("count", smear, "--model", model, "--out", out, "--wbc", "7.2", "--review-threshold",
                             "0.99", "--threads", "1")  # fmt: skip
    assert code == 0, err
    return out, stdout, err


def test_count_cli_writes_every_file(counted):
    out, stdout, err = counted
    assert "broken.jpg" in err and "20 cells" in stdout
    doc = json.loads((out / "differential.json").read_text())
    assert doc["n_cells"] == 20 and sum(doc["counts"].values()) == 20
    assert set(doc) >= {"classes", "counts", "percent", "ci95", "reference_range", "flags", "review", "model"}
    assert "absolute" in doc and doc["absolute"]["wbc_1e9_per_L"] == 7.2
    rows = (out / "cells.csv").read_text().splitlines()
    assert len(rows) == 21 and rows[0].endswith(",review")
    assert sum(int(r.rsplit(",", 1)[1]) for r in rows[1:]) == doc["n_review"] == len(doc["review"])
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 + min(doc["n_review"], 60 * 5)
    assert (out / "differential.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_renders_in_headless_chromium(counted):
    """Open report.html in Debian's chromium: no console error, every image decoded; save a screenshot."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("needs the chromium browser (apt-get install chromium)")
    out, _, _ = counted
    page = (out / "report.html").resolve().as_uri()
    # the DOM after scripts ran, with a probe appended that reports images that failed to decode
    probe = out / "probe.html"
    probe.write_text(
        (out / "report.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.onload=()=>{const bad=[...document.images].filter(i=>!i.complete||i.naturalWidth==0);"
            "document.title='IMAGES '+document.images.length+' BAD '+bad.length;};</script></body>",
        )
    )
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    res = subprocess.run(common + ["--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "BAD 0" in res.stdout and "IMAGES 0" not in res.stdout
    console_errors = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)]
    assert not console_errors, console_errors
    shot = Path(__file__).resolve().parents[1] / "docs" / "count_report.png"
    shot.parent.mkdir(exist_ok=True)
    res = subprocess.run(common + ["--window-size=1000,1400", f"--screenshot={shot}", page],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
