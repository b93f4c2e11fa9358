"""Data-parallel scoring: `accelerate launch --num_processes 2 -m fgpo_tasks.cli score` (gloo on
CPUs) writes the scores one process writes, each process embedding and scoring its own shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from fgpo_tasks import cli, synthetic
from fgpo_tasks.contract import write_pairs
from fgpo_tasks.scoring import read_scores

from tests.test_dpo_distributed import ACCELERATE_CPU_DDP


@pytest.mark.slow
def test_two_processes_write_the_scores_of_one(tmp_path, created_at, capfd):
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_models

    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=90, seed=7))
    write_pairs(pd.DataFrame(rows), tmp_path / "pool", stage="test", config={}, created_at=created_at)
    run_reward_models(tmp_path / "pool", tmp_path / "rm", RewardModelConfig(
        backbone="tiny-bert", epochs=2, max_length=128, compare_undebiased=False,
        cache_dir=str(tmp_path / "emb-train")), created_at)
    (tmp_path / "acc.yaml").write_text(yaml.safe_dump(ACCELERATE_CPU_DDP))

    def args(name):  # its own (cold) embedding and score caches: every margin is computed afresh
        return ["--created-at", created_at, "score", "--data", str(tmp_path / "pool"), "--reward-models",
                str(tmp_path / "rm"), "--out", str(tmp_path / name),
                "--set", f"embedding_cache_dir={tmp_path / f'emb-{name}'}", "--set", f"cache_dir={tmp_path / f'sc-{name}'}"]

    assert cli.main(args("one")) == 0
    capfd.readouterr()
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(p) for p in sys.path if p])}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "acc.yaml"),
                           "-m", "fgpo_tasks.cli", *args("two")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    printed = json.loads(proc.stdout[proc.stdout.index("{"):])  # only the main process prints
    assert printed["num_processes"] == 2 and printed["n_pairs"] == 90
    one, two = read_scores(tmp_path / "one")[0], read_scores(tmp_path / "two")[0]
    pd.testing.assert_frame_equal(one, two, check_exact=True)
    assert (tmp_path / "one" / "scores.parquet").read_bytes() == (tmp_path / "two" / "scores.parquet").read_bytes()
    assert not list(tmp_path.glob(".two.shards-*"))  # the shard folder is gone
    # both processes embedded: the second cache holds every text once, as the first does
    from fgpo_tasks.reward_models import EmbeddingCache

    caches = [EmbeddingCache(tmp_path / f"emb-{n}", next((tmp_path / f"emb-{n}").iterdir()).name) for n in ("one", "two")]
    for c in caches:
        c.refresh()
    assert len(caches[0]) == len(caches[1]) > 0
