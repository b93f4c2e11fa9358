"""Every command with relative paths, run as a user runs it: the installed `fgpo` from a folder
that is not the checkout, every input, output and config given relative to that folder.

(`fgpo pipeline` with a relative --storage-root and --tracking-uri runs in
tests/test_strict_json.py; `fgpo validate` with data docs and relative paths in
tests/test_validate.py.) Every command's stdout must be strict JSON, and every JSON it wrote too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fgpo_tasks import jsonio

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def test_every_command_with_relative_paths_from_another_folder(tmp_path):
    from test_strict_json import strict_files

    cwd = tmp_path / "project"
    (cwd / "cfg").mkdir(parents=True)
    for rel in ("ingest/synthetic.yaml", "reward_models/tiny.yaml", "dpo/tiny_cpu.yaml", "evaluate.yaml",
                "sft/toy.yaml"):
        shutil.copy(REPO / "configs" / rel, cwd / "cfg" / Path(rel).name)
    (cwd / "cfg" / "validate.yaml").write_text("rating_min: -100.0\nrating_max: 100.0\n")  # the toy world's scale
    env = {**os.environ, "FGPO_WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184",
           "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}

    def fgpo(*args: str) -> dict:
        proc = subprocess.run([str(BIN / "fgpo"), "--created-at", "2026-01-01T00:00:00+00:00", *args],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"fgpo {' '.join(args)}:\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr
        return jsonio.loads_strict(proc.stdout)

    assert fgpo("ingest", "--source", "toy", "--format", "synthetic", "--config", "cfg/synthetic.yaml",
                "--set", "synthetic.n_pairs=120", "--out", "data/ing")["pairs"] == 120
    assert fgpo("validate", "--data", "data/ing", "--out", "data/val", "--config", "cfg/validate.yaml"
                )["status"] == "passed"
    assert (cwd / "data/val/data_docs/index.html").is_file()
    fgpo("reward-models", "--data", "data/val", "--out", "rm", "--config", "cfg/tiny.yaml", "--set", "epochs=2")
    fgpo("score", "--data", "data/val", "--reward-models", "rm", "--out", "scores")
    fgpo("score", "--data", "data/val", "--from-ratings", "--out", "scores_r")
    assert fgpo("select", "--scores", "scores", "--data", "data/val", "--budget", "0.5", "--out", "sel")
    assert fgpo("export", "--data", "sel", "--format", "trl", "--out", "trl")["rows"] == 60
    fgpo("sft", "--config", "cfg/toy.yaml", "--max-steps", "2", "--out", "models/sft")
    fgpo("train-dpo", "--data", "sel", "--config", "cfg/tiny_cpu.yaml", "--out", "models/dpo")
    fgpo("evaluate", "--model", "models/dpo", "--baseline", "models/sft", "--config", "cfg/evaluate.yaml",
         "--n-prompts", "4", "--max-new-tokens", "8", "--out", "eval")
    fgpo("register", "--model", "models/dpo", "--eval", "eval", "--run-key", "rel-1", "--config",
         "cfg/evaluate.yaml", "--tracking-uri", "sqlite:///mlflow.db")

    for out in ("data/ing", "data/val", "rm", "scores", "scores_r", "sel", "trl", "models/sft", "models/dpo",
                "eval"):
        assert (cwd / out).is_dir(), out
    assert not list(cwd.rglob(".*.tmp-*")), "a temporary folder was left behind"
    assert (cwd / "mlflow.db").is_file()
    assert len(strict_files(cwd)) >= 15
