"""fgpo rm-eval: each proxy's margins on its own aspect, accuracy with a CI, length correlation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, jsonio, synthetic
from fgpo_tasks.rm_eval import RmEvalConfig, accuracy, bootstrap_ci, correlations, run_rm_eval

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accuracy_ci_and_correlation_on_known_margins():
    assert accuracy([1.0, -1.0, 0.0, 2.0]) == pytest.approx(0.625)  # a tie counts one half
    assert accuracy([]) is None
    assert bootstrap_ci([1.0] * 20, 200, 0.95, 0) == [1.0, 1.0]
    lo, hi = bootstrap_ci(np.r_[np.ones(50), -np.ones(50)], 500, 0.95, 0)
    assert lo < 0.5 < hi and hi - lo < 0.3
    p, s = correlations([2.0, 4.0, 6.0, 10.0], [1, 2, 3, 5])
    assert p == pytest.approx(1.0) and s == pytest.approx(1.0)
    assert correlations([1.0, 1.0, 1.0], [1, 2, 3]) == (None, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fgpo_tasks.config import load_config
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_models

    root = tmp_path_factory.mktemp("rm_eval")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=200, aspects=("politeness", "detail"),
                                                        seed=5, conflict_rate=0.2))
    df = pd.DataFrame(rows)
    contract.write_pairs(df.iloc[:160], root / "train", stage="test", config={}, created_at="t")
    contract.write_pairs(df, root / "all", stage="test", config={}, created_at="t")
    cfg = load_config(RewardModelConfig, os.path.join(REPO, "configs/reward_models/tiny.yaml"),
                      cache_dir=str(root / "emb"))
    run_reward_models(root / "train", root / "rm", cfg, "t")
    return root


def test_margins_are_the_scoring_margins_and_accuracy_their_sign(world, created_at):
    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.scoring import ScoreConfig, model_margins

    out = world / "eval"
    res = run_rm_eval(world / "rm", world / "all", out, RmEvalConfig(n_bootstrap=300, progress=False),
                      created_at)
    table = pd.read_parquet(out / "margins.parquet")
    assert list(table.columns) == ["pair_id", "aspect", "margin"]
    report = jsonio.loads_strict((out / "rm_eval.json").read_text())
    assert report["aspects"] == jsonio.loads_strict(jsonio.dumps(res["aspects"]))  # returned = written
    assert (out / "margins.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    df = contract.read_pairs(world / "all")
    models = rm.discover_models(world / "rm")
    assert sorted(report["aspects"]) == ["detail", "politeness"]
    for m in models:
        a = m["aspect"]
        own = df[df["aspect"] == a]
        held = own[~own["pair_id"].isin(m["training_ids"])]
        got = table[table["aspect"] == a].set_index("pair_id")["margin"]
        # held-out pairs only: those the proxy trained on are counted, not scored
        assert set(got.index) == set(held["pair_id"]) and len(held) > 0
        s = report["aspects"][a]
        assert s["n"] == len(held) and s["n_excluded_training"] == len(own) - len(held)
        # the same margins `fgpo score` computes with this proxy for these pairs
        want, _ = model_margins(held.reset_index(drop=True), [m], np.ones((len(held), 1), bool),
                                ScoreConfig(use_cache=False, progress=False))
        np.testing.assert_allclose(got.loc[held["pair_id"]].to_numpy(), want[:, 0], rtol=1e-6, atol=1e-9)
        v = got.to_numpy()
        assert s["accuracy"] == pytest.approx(np.mean(v > 0) + 0.5 * np.mean(v == 0))
        lo, hi = s["accuracy_ci"]
        assert 0.0 <= lo <= s["accuracy"] <= hi <= 1.0
        dlen = (held["chosen"].str.split().str.len() - held["rejected"].str.split().str.len()).to_numpy()
        assert s["length_pearson"] == pytest.approx(np.corrcoef(got.loc[held["pair_id"]], dlen)[0, 1])

    every = run_rm_eval(world / "rm", world / "all", world / "eval_all",
                        RmEvalConfig(n_bootstrap=50, exclude_training=False, progress=False), created_at)
    for a, s in every["aspects"].items():
        assert s["n"] == int((df["aspect"] == a).sum()) and s["n_excluded_training"] == 0


def test_cli_from_another_folder_with_relative_paths(world, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": REPO}
    rel = lambda p: os.path.relpath(p, cwd)  # noqa: E731
    r = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "rm-eval", "--reward-models", rel(world / "rm"),
                        "--data", rel(world / "all"), "--out", "ev", "--set", "n_bootstrap=50"],
                       cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["aspects"]["detail"]["n"] > 0
    assert set(pd.read_parquet(cwd / "ev" / "margins.parquet")["aspect"]) == {"detail", "politeness"}
    r = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "rm-eval", "--reward-models", "nope",
                        "--data", rel(world / "all"), "--out", "ev2"], cwd=cwd, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("fgpo rm-eval: error:")
    assert "nope" in r.stderr and "Traceback" not in r.stderr
    h = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "--help"], cwd=cwd, env=env,
                       capture_output=True, text=True).stdout
    listed = [line.split()[0] for line in h.splitlines() if line.startswith("    ") and line.split()]
    assert listed.index("reward-models") < listed.index("rm-eval") < listed.index("score")
