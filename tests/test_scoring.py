"""PD scoring: the numeric core against a naive loop, the mask, scaling, the stage and its cache."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, synthetic
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.scoring import (ScoreConfig, compute_pd, cross_mask, quantile_scale, rating_margins,
                                read_scores, run_score)


def naive_pd(delta: dict, own: list[str], aspects: list[str], gamma: float) -> list[float]:
    """METHOD.md steps 2-4 written as a loop over pairs: delta[k'][i] is r_k' margin on pair i."""
    q = {}
    for k2 in aspects:
        scored = [abs(delta[k2][i]) for i in range(len(own)) if own[i] != k2]
        q[k2] = float(np.quantile(scored, gamma)) if scored else None
    out = []
    for i, k in enumerate(own):
        total = 0.0
        for k2 in aspects:
            if k2 == k or q[k2] is None:
                continue
            d = delta[k2][i]
            if q[k2] == 0:
                scaled = float(np.sign(d))
            else:
                scaled = max(-1.0, min(1.0, d / q[k2]))
            total += scaled
        out.append(-total)
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.0])
def test_vectorised_pd_equals_naive_loop(seed, gamma):
    rng = np.random.default_rng(seed)
    aspects = ["a", "b", "c", "d"][: rng.integers(2, 5)]
    n = int(rng.integers(5, 60))
    own = list(rng.choice(aspects, size=n))
    raw = rng.normal(size=(n, len(aspects))) * rng.uniform(0.1, 5, size=len(aspects))
    if seed % 2:  # integer margins with many ties: exercises q = 0 -> sign
        raw = np.round(raw * 0.3)
    mask = cross_mask(np.array(own), aspects)
    pd_vec, scaled, q = compute_pd(raw, mask, gamma)
    expected = naive_pd({a: raw[:, j].tolist() for j, a in enumerate(aspects)}, own, aspects, gamma)
    np.testing.assert_allclose(pd_vec, expected, rtol=0, atol=1e-12)
    assert np.all(np.abs(pd_vec) <= len(aspects) - 1 + 1e-12)


def test_cross_extrapolation_mask_excludes_own_aspect_and_training_pairs():
    ids = np.array(["p1", "p2", "p3", "p4"])
    own = np.array(["a", "a", "b", "c"])
    mask = cross_mask(own, ["a", "b", "c"], ids, [{"p1"}, {"p3"}, {"p2"}])
    expected = np.array([
        [False, True, True],   # p1 in D_a
        [False, True, False],  # p2 in D_a, and r_c trained on it
        [True, False, True],   # p3 in D_b
        [True, True, False],   # p4 in D_c
    ])
    np.testing.assert_array_equal(mask, expected)


def test_quantile_scaling_clips_and_uses_sign_when_quantile_is_zero():
    raw = np.array([[0.0, 1.0], [0.0, -4.0], [2.0, 2.0], [-3.0, 0.5], [0.0, np.nan]])
    mask = np.ones_like(raw, dtype=bool)
    mask[3, 1] = False
    scaled, q = quantile_scale(raw, mask, gamma=0.5)
    # column 0: |0,0,2,3,0| -> median 0 -> sign
    assert q[0] == 0
    np.testing.assert_array_equal(scaled[:, 0], [0, 0, 1, -1, 0])
    # column 1: |1,4,2| (row 3 masked, row 4 NaN) -> median 2 -> clip(x / 2)
    assert q[1] == 2
    np.testing.assert_allclose(scaled[:3, 1], [0.5, -1.0, 1.0])
    assert np.isnan(scaled[3, 1]) and np.isnan(scaled[4, 1])
    assert np.all(np.abs(scaled[np.isfinite(scaled)]) <= 1)


def test_rating_margins_and_lower_is_better():
    df = pd.DataFrame({"prompt": ["p", "q"], "chosen": ["x", "y"], "rejected": ["z", "w"],
                       "ratings_chosen": [{"a": 3.0, "b": 1.0}, None],
                       "ratings_rejected": [{"a": 1.0, "b": 2.0}, None]})
    aspects, raw = rating_margins(df, lower_is_better=["b"])
    assert aspects == ["a", "b"]
    np.testing.assert_array_equal(raw[0], [2.0, 1.0])
    assert np.isnan(raw[1]).all()


def test_ratings_are_pooled_across_pairs_of_the_same_responses():
    """HelpSteer2-style: the same response pair rated on 'a' in one file and on 'b' in another."""
    df = pd.DataFrame({"prompt": ["p", "p", "p"], "chosen": ["x", "z", "x"], "rejected": ["z", "x", "v"],
                       "aspect": ["a", "b", "a"],
                       "ratings_chosen": [{"a": 3.0}, {"b": 4.0}, {"a": 3.0}],
                       "ratings_rejected": [{"a": 1.0}, {"b": 2.0}, {"a": 0.0}]})
    _, raw = rating_margins(df)
    # pair 0 (x over z on a) learns b from pair 1, where z beat x on b: b-margin -2
    np.testing.assert_array_equal(raw[0], [2.0, -2.0])
    np.testing.assert_array_equal(raw[1], [-2.0, 2.0])
    assert raw[2, 0] == 3.0 and np.isnan(raw[2, 1])  # v has no b rating
    _, raw_plain = rating_margins(df, pool=False)
    assert np.isnan(raw_plain[0, 1])


def test_config_checks_quote_bad_value():
    with pytest.raises(ConfigError, match="gamma must be in \\(0, 1\\], got 1.5"):
        ScoreConfig(gamma=1.5)


# ---------------------------------------------------------------------------------------------
# The stage on synthetic data with tiny frozen reward models

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fgpo_tasks.reward_models import RewardModelConfig, run_reward_models

    root = tmp_path_factory.mktemp("scoring")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=240, seed=3, conflict_rate=0.3))
    df = pd.DataFrame(rows)
    first, second = df.iloc[:200], df.iloc[200:]
    contract.write_pairs(first, root / "data1", stage="test", config={}, created_at="t")
    contract.write_pairs(df, root / "data2", stage="test", config={}, created_at="t")
    # reward models trained on the first batch only; the second batch arrives later
    cfg = RewardModelConfig(backbone="tiny-bert", epochs=10, max_length=128, compare_undebiased=False,
                            cache_dir=str(root / "emb"))
    run_reward_models(root / "data1", root / "rm", cfg, "t")
    return {"root": root, "df": df, "first": first, "second": second}


def test_scores_table_columns_and_mask(world, created_at):
    root = world["root"]
    cfg = ScoreConfig(cache_dir=str(root / "sc-a"), progress=False)
    m = run_score(root / "data1", root / "scores1", cfg, created_at, reward_models_dir=root / "rm")
    scores, manifest = read_scores(root / "scores1")
    aspects = sorted(synthetic.ASPECTS)
    assert m["aspects"] == aspects
    assert list(scores.columns) == (["pair_id", "aspect"] + [f"margin_{a}" for a in aspects]
                                    + [f"raw_margin_{a}" for a in aspects]
                                    + ["n_other", "pd", "pd_ratings"])
    for a in aspects:  # null exactly on the pair's own aspect
        own = scores["aspect"] == a
        assert scores.loc[own, f"margin_{a}"].isna().all()
        assert scores.loc[~own, f"margin_{a}"].notna().all()
        assert scores[f"margin_{a}"].abs().max() <= 1
    np.testing.assert_allclose(scores["pd"], -scores[[f"margin_{a}" for a in aspects]].sum(axis=1))
    assert set(manifest["quantiles"]) == set(aspects)
    assert all(manifest["models"][a]["fingerprint"] for a in aspects)
    assert (root / "scores1" / "reports" / "conflict_matrix.png").is_file()
    cm = json.loads((root / "scores1" / "reports" / "conflict_matrix.json").read_text())
    assert cm["rows"] == aspects and len(cm["disagree"]) == len(aspects)
    # synthetic ratings are complete, so PD from ratings and its correlation come along
    assert scores["pd_ratings"].notna().all()
    assert m["spearman_pd_vs_ratings"] is not None


def test_score_cache_scores_only_new_pairs(world, created_at):
    root = world["root"]
    cfg = ScoreConfig(cache_dir=str(root / "sc-b"), progress=False)
    m1 = run_score(root / "data1", root / "s1", cfg, created_at, reward_models_dir=root / "rm")
    m2 = run_score(root / "data2", root / "s2", cfg, created_at, reward_models_dir=root / "rm")
    n_new = world["second"]["aspect"].value_counts()
    for a in synthetic.ASPECTS:
        assert m1["from_cache"][a] == 0
        # r_a scores every new pair of the other aspects, and reuses the 150 old ones
        assert m2["scored"][a] == len(world["second"]) - n_new.get(a, 0)
        assert m2["from_cache"][a] == m1["scored"][a]
    s1, _ = read_scores(root / "s1")
    s2, _ = read_scores(root / "s2")
    merged = s1.merge(s2, on="pair_id", suffixes=("_1", "_2"))
    for a in synthetic.ASPECTS:
        np.testing.assert_allclose(merged[f"raw_margin_{a}_1"], merged[f"raw_margin_{a}_2"], equal_nan=True)
    # without the cache every pair is scored again, with the same margins
    m3 = run_score(root / "data2", root / "s3", ScoreConfig(use_cache=False, progress=False),
                   created_at, reward_models_dir=root / "rm")
    assert m3["from_cache"] == {a: 0 for a in synthetic.ASPECTS}
    s3, _ = read_scores(root / "s3")
    np.testing.assert_allclose(s2["pd"], s3["pd"], atol=1e-5)


def test_from_ratings(world, created_at):
    root = world["root"]
    m = run_score(root / "data1", root / "sr", ScoreConfig(from_ratings=True), created_at)
    scores, manifest = read_scores(root / "sr")
    assert manifest["source"] == "ratings" and m["source"] == "ratings"
    np.testing.assert_allclose(scores["pd"], scores["pd_ratings"])
    # the toy world makes conflicting pairs (conflict_rate 0.3) have a positive sign sum
    assert 0.5 < (scores["pd"] < 0).mean() < 0.9


def test_score_errors(world, created_at, tmp_path):
    root = world["root"]
    with pytest.raises(ConfigError, match="reward models .* or --from-ratings"):
        run_score(root / "data1", tmp_path / "x", ScoreConfig(), created_at)
    with pytest.raises(FgpoError, match="no reward models found"):
        run_score(root / "data1", tmp_path / "x", ScoreConfig(), created_at, reward_models_dir=tmp_path)
    # one rated aspect only (like HelpSteer2's per-aspect files): no PD from ratings possible
    df = world["first"].copy()
    df["ratings_chosen"] = [{r["aspect"]: 1.0} for _, r in df.iterrows()]
    df["ratings_rejected"] = [{r["aspect"]: 0.0} for _, r in df.iterrows()]
    contract.write_pairs(df, tmp_path / "own", stage="t", config={}, created_at="t")
    with pytest.raises(FgpoError, match="no pair carries ratings of an aspect other than its own"):
        run_score(tmp_path / "own", tmp_path / "x", ScoreConfig(from_ratings=True, pool_ratings=False),
                  created_at)


def test_cli_score_error_is_one_readable_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "score", "--data", str(tmp_path / "nope"),
                        "--from-ratings", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("fgpo score: error:")
    assert "not an fgpo data directory" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "fgpo_tasks.cli", "score", "--data", "d", "--out", "o"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "one of the arguments --reward-models --from-ratings is required" in r.stderr


def test_ratings_pd_on_arrow_equals_the_frame_path():
    import pyarrow as pa

    from fgpo_tasks.scoring import ratings_pd

    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=600, seed=1))
    for i, r in enumerate(rows):
        if i % 7 == 0:
            r["ratings_chosen"] = None
        elif i % 5 == 0:
            r["ratings_rejected"] = {k: v for k, v in r["ratings_rejected"].items() if k != "detail"}
        if i % 11 == 0 and i:  # a response seen in two pairs: its ratings are pooled
            r["prompt"], r["chosen"] = rows[i - 1]["prompt"], rows[i - 1]["rejected"]
    df = contract.frame(rows)
    table = contract.to_arrow(df)
    assert isinstance(table, pa.Table)
    for pool in (True, False):
        a = ratings_pd(df, 0.9, ["conciseness"], pool)
        b = ratings_pd(table, 0.9, ["conciseness"], pool)
        assert a[0] == b[0]
        for x, y in zip(a[1:], b[1:]):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
