"""Every Python snippet of README.md runs on its own, in a fresh interpreter, in an empty folder."""

import os
import re
import subprocess
import sys
from pathlib import Path

import ndlm_sk
import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
# the onnxruntime-only snippet needs ndlm.onnx and cell.jpg: tests/test_onnx.py runs it with them
OWN = [s for s in SNIPPETS if "onnxruntime" not in s]
SLOW = ("max_iter=30",)  # 30 epochs at 300x300: minutes on one thread


def test_readme_has_the_snippets():
    assert len(OWN) >= 3 and len(SNIPPETS) == len(OWN) + 1


@pytest.mark.parametrize(
    "code",
    [pytest.param(s, marks=pytest.mark.slow) if any(k in s for k in SLOW) else s for s in OWN],
    ids=[s.splitlines()[0][:40] for s in OWN],
)
def test_readme_snippet_runs(code, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NDLM_SK_CACHE": str(tmp_path / "cache")}
    src = str(Path(ndlm_sk.__file__).resolve().parents[1])  # where this process found ndlm_sk
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
