"""Data-parallel scoring: `accelerate launch --num_processes 2 -m fgpo_tasks.cli score` (gloo on
CPUs) writes the scores one process writes (byte for byte on the same embeddings), each process
embedding and scoring its own shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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

    def args(name, embeddings):
        return ["--created-at", created_at, "score", "--data", str(tmp_path / "pool"), "--reward-models",
                str(tmp_path / "rm"), "--out", str(tmp_path / name), "--set", f"embedding_cache_dir={embeddings}",
                "--set", f"cache_dir={tmp_path / f'sc-{name}'}"]  # own score cache: every margin computed

    def launch(name, embeddings):
        env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(p) for p in sys.path if p])}
        proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                               str(tmp_path / "acc.yaml"), "-m", "fgpo_tasks.cli", *args(name, embeddings)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        start = proc.stdout.index("{\n")  # only the main process prints its result (JSON)
        printed, _ = json.JSONDecoder().raw_decode(proc.stdout[start:])
        assert proc.stdout.count('"num_processes"') == 1, proc.stdout[-3000:]
        assert printed["num_processes"] == 2 and printed["n_pairs"] == 90
        assert not list(tmp_path.glob(f".{name}.shards-*"))  # the shard folder is gone
        return read_scores(tmp_path / name)[0]

    # The embeddings the proxies were trained on (every text cached once): byte-identical scores.
    warm = tmp_path / "emb-train"
    assert cli.main(args("one", warm)) == 0
    capfd.readouterr()
    one = read_scores(tmp_path / "one")[0]
    pd.testing.assert_frame_equal(one, launch("two", warm), check_exact=True)
    assert (tmp_path / "one" / "scores.parquet").read_bytes() == (tmp_path / "two" / "scores.parquet").read_bytes()
    # A cold embedding cache: each process embeds its own shards' texts (a backbone batch of other
    # texts pads them differently: float32 rounding apart), every text once.
    cold = launch("cold", tmp_path / "emb-cold")
    for col in [c for c in one.columns if c.startswith(("margin_", "raw_margin_"))] + ["pd"]:
        np.testing.assert_allclose(cold[col], one[col], rtol=0, atol=1e-4, equal_nan=True, err_msg=col)
    from fgpo_tasks.reward_models import EmbeddingCache

    caches = [EmbeddingCache(d, next(d.iterdir()).name) for d in (warm, tmp_path / "emb-cold")]
    for c in caches:
        c.refresh()
    assert len(caches[0]) == len(caches[1]) > 0
