"""benchmarks/gpu_check.py end to end on the CPU in --smoke mode (tiny sizes), so the GPU check
cannot rot between GPU runs: every measurement runs, the loss comparison with TRL holds, and a
smoke run never writes BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_runs_every_measurement(tmp_path):
    bench = (REPO / "BENCHMARKS.md").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "FGPO_WORK_DIR": str(tmp_path / "fgpo-work")}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke",
                          "--work", str(tmp_path / "work")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "work" / "gpu_check.json").read_text())
    assert figures["peak_flops"] > 0 and figures["ours"]["pairs_s"] > 0 and figures["ours"]["mfu"] > 0
    assert figures["ref_pairs_s"] > 0 and figures["proxy_texts_s"] > 0
    assert figures["ours_packed"]["pairs_s"] > 0 and figures["ours_packed"]["max_loss_diff"] < 1e-2  # bf16
    try:
        import trl  # noqa: F401
    except ImportError:
        pytest.skip("trl not installed: the comparison arm is not exercised")
    assert figures["trl"]["pairs_s"] > 0
    assert figures["loss"]["abs_diff"] <= 1e-4 and figures["loss"]["vs_log2"] > 1e-3
    section = (tmp_path / "work" / "gpu_check_smoke.md").read_text()
    assert "SMOKE RUN" in section and "not judged in a smoke run" in section
    assert (REPO / "BENCHMARKS.md").read_text() == bench  # smoke figures never reach BENCHMARKS.md


def test_gpu_check_without_a_gpu_refuses_a_real_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr
