"""Kill a training process (SIGKILL) after a checkpoint, rerun the same command: the final weights
and the metric records equal those of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fgpo_tasks import cli, synthetic
from fgpo_tasks.contract import write_pairs

REPO = Path(__file__).resolve().parent.parent
CONFIG = dict(model="tiny-llama", max_length=96, max_prompt_length=40, lr=2e-3, beta=0.5, batch_size=2,
              grad_accum=2, epochs=3, scheduler="cosine", warmup_ratio=0.1, logging_steps=1,
              checkpoint_every=2, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, created_at, capsys):
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=20, seed=5))
    write_pairs(pd.DataFrame(rows), tmp_path / "pairs", stage="test", config={}, created_at=created_at)
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(yaml.safe_dump({**CONFIG, "ref_cache_dir": str(tmp_path / "cache")}))

    def argv(out):
        return ["--created-at", created_at, "train-dpo", "--data", str(tmp_path / "pairs"), "--config", str(cfg),
                "--out", str(out)]

    assert cli.main(argv(tmp_path / "whole")) == 0  # uninterrupted, in this process

    out = tmp_path / "killed"
    ckpts = tmp_path / ".killed.dpo-run" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "fgpo_tasks.cli", *argv(out)], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # kill once the step-6 checkpoint exists: the resume starts inside the second epoch
        while not (ckpts / "step-0000006" / "fgpo_state.json").is_file():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()

    capsys.readouterr()
    assert cli.main(argv(out)) == 0  # the same command again: resumes
    assert json.loads(capsys.readouterr().out)["resumed_from_step"] >= 6
    records, whole = _records(out), _records(tmp_path / "whole")
    assert [r["step"] for r in records] == [r["step"] for r in whole] == list(range(1, 16))  # 20 pairs, 4 a step, 3 epochs
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in whole], abs=1e-6)
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert not (tmp_path / ".killed.dpo-run").exists()
