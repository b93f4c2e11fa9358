"""Strict JSON: nothing fgpo writes or prints holds NaN or Infinity.

The tiny pipeline runs as a user runs it (`fgpo pipeline --profile tiny`, relative paths, from a
folder that is not the checkout); its stdout and every .json / .jsonl file under its storage and
work folders must parse with a parser that refuses NaN / Infinity.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import jsonio

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def strict_files(root: Path) -> list[Path]:
    """Every .json / .jsonl under root, each parsed strictly (AssertionError names the file)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl"))
    for p in files:
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix == ".jsonl":
                for line in text.splitlines():
                    if line.strip():
                        jsonio.loads_strict(line)
            else:
                jsonio.loads_strict(text)
        except ValueError as e:
            raise AssertionError(f"{p.relative_to(root)}: {e}") from None
    return files


def test_dumps_replaces_non_finite_numbers_and_counts_them(tmp_path):
    obj = {"a": math.nan, "b": [1.0, math.inf, -math.inf], "c": np.float32("nan"), "d": np.int64(3),
           "e": np.array([1.5, np.nan]), "f": Path("x"), "g": {"h": 2.5}, "i": pd.NA, "j": pd.NaT}
    clean, n = jsonio.sanitize(obj)
    assert n == 7
    text = jsonio.dumps(obj)
    assert jsonio.loads_strict(text) == {"a": None, "b": [1.0, None, None], "c": None, "d": 3,
                                         "e": [1.5, None], "f": "x", "g": {"h": 2.5}, "i": None, "j": None}
    assert jsonio.write_json(tmp_path / "x.json", obj) == 7
    jsonio.loads_strict((tmp_path / "x.json").read_text())
    with pytest.raises(ValueError, match="NaN"):
        jsonio.loads_strict(json.dumps({"a": math.nan}))
    with pytest.raises(ValueError, match="Infinity"):
        jsonio.loads_strict("[Infinity]")


def test_score_from_ratings_pd_mean_is_null_with_a_count(tmp_path, created_at, capsys, monkeypatch):
    """Pairs that lack another aspect's rating have no PD: pd_mean averages the rest, and
    pd_missing counts them; the printed result and the manifest are strict JSON."""
    from fgpo_tasks import cli, contract

    rows = []
    for i in range(12):
        rc = {"helpfulness": 3.0, "coherence": 4.0 - (i % 3)}
        rr = {"helpfulness": 1.0, "coherence": 2.0}
        if i % 4 == 0:  # no rating of the other aspect: no PD for this pair
            rc, rr = {"helpfulness": 3.0}, {"helpfulness": 1.0}
        rows.append(contract.make_pair(prompt=f"q{i}", chosen=f"c{i}", rejected=f"r{i}", aspect="helpfulness",
                                       source="t", batch_id="b", ratings_chosen=rc, ratings_rejected=rr))
    contract.write_pairs(pd.DataFrame(rows), tmp_path / "pool", stage="ingest", config={}, created_at=created_at)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["score", "--data", "pool", "--from-ratings", "--out", "sc"]) == 0
    out = jsonio.loads_strict(capsys.readouterr().out)
    assert out["pd_missing"] == 3 and isinstance(out["pd_mean"], float)
    strict_files(tmp_path / "sc")
    manifest = jsonio.loads_strict((tmp_path / "sc" / "manifest.json").read_text())
    assert manifest["metrics"]["pd_missing"] == 3


def test_tiny_pipeline_writes_and_prints_strict_json_only(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "FGPO_WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(REPO),
           "OMP_NUM_THREADS": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "17179869184"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([str(BIN / "fgpo"), "--created-at", "2026-01-01T00:00:00+00:00", "pipeline",
                           "--profile", "tiny", "--run-key", "strict-1", "--storage-root", "store",
                           "--tracking-uri", "sqlite:///mlflow.db"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = jsonio.loads_strict(proc.stdout)
    assert result["register"]["version"] == "1"
    assert (cwd / "store" / "runs").is_dir() and (cwd / "mlflow.db").is_file()  # relative to the cwd
    files = strict_files(cwd) + strict_files(tmp_path / "work")
    names = {p.name for p in files}
    assert {"manifest.json", "step.json", "validation_summary.json", "results.json"} <= names, names
    assert len(files) >= 20
