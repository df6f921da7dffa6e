"""tools/gpu_smoke.py as `make test` runs it: on a machine without a GPU it says so, marks every
step skipped and exits 0; on one with a GPU it runs every step and must find no surprise."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tools.gpu_smoke import STEPS, gpu_absent

from .helpers import ROOT


# On a GPU every step loads real models (the smoke script allows itself 900 s); on the CPU it
# takes seconds. The suite's 300 s per test would cut a GPU run short.
@pytest.mark.timeout(960)
def test_the_gpu_smoke_test_runs_and_reports(tmp_path):
    report_path = tmp_path / "gpu_smoke.json"
    out = subprocess.run([sys.executable, "-m", "tools.gpu_smoke", "--out", str(report_path),
                          "--work", str(tmp_path / "work")], cwd=ROOT, env=dict(os.environ),
                         capture_output=True, text=True, timeout=900)
    report = json.loads(report_path.read_text())
    assert list(report["steps"]) == list(STEPS)
    absent = gpu_absent()
    if absent is not None:
        assert out.returncode == 0, out.stderr
        assert report["gpu"] is False and report["reason"] == absent
        assert {step["status"] for step in report["steps"].values()} == {"skipped"}
        assert f"no GPU here: {absent}" in out.stdout
    else:
        assert out.returncode == 0, json.dumps(report["steps"], indent=2)[-4000:]
        assert report["gpu"] is True and report["surprises"] == []
