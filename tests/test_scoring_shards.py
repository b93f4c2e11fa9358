"""Sharded scoring (one unit per shard of the pool and reward model, then a reduce) writes exactly
the scores of one unsharded pass, and the score stage has the same key and result either way."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import contract, synthetic
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.scoring import (ScoreConfig, model_margins, read_scores, reduce_shards, run_score, score_shard,
                                shard_bounds, shard_plan)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tiny profile's models (tiny-bert, frozen) trained on 200 pairs; 243 pairs to score, so
    40 + 3 new pairs whose texts no reward model embedded yet."""
    from fgpo_tasks.reward_models import RewardModelConfig, discover_models, run_reward_models

    root = tmp_path_factory.mktemp("shards")
    df = pd.DataFrame(synthetic.generate(synthetic.SyntheticConfig(n_pairs=243, seed=5, conflict_rate=0.3)))
    contract.write_pairs(df.iloc[:200], root / "train", stage="test", config={}, created_at="t")
    contract.write_pairs(df, root / "pool", stage="test", config={}, created_at="t")
    cfg = RewardModelConfig(backbone="tiny-bert", epochs=4, max_length=128, compare_undebiased=False,
                            cache_dir=str(root / "emb"))
    run_reward_models(root / "train", root / "rm", cfg, "t")
    models = [m["dir"] for m in discover_models(root / "rm")]
    # the unsharded reference, scored first (its new texts enter the shared embedding cache)
    base = ScoreConfig(use_cache=False, progress=False)
    run_score(root / "pool", root / "unsharded", base, "t", model_dirs=models)
    return {"root": root, "models": models, "n": len(df)}


def _sharded(world, out, shard_size, **extra):
    root, cfg = world["root"], ScoreConfig(use_cache=False, progress=False, shard_size=shard_size, **extra)
    for unit in shard_plan(world["n"], world["models"], shard_size):  # what the DAG's mapped tasks run
        score_shard(root / "pool", unit["model"], unit["shard"], cfg, out / "shards")
    return reduce_shards(root / "pool", out / "scores", cfg, "t", world["models"], out / "shards")


def test_shard_bounds_cover_every_row_once():
    assert shard_bounds(10, None) == [(0, 10)] and shard_bounds(10, 10) == [(0, 10)]
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]  # the last shard is short
    plan = shard_plan(10, ["/m/b", "/m/a"], 4)
    assert len(plan) == 3 * 2 and plan[:2] == [{"model": "/m/a", "shard": 0}, {"model": "/m/b", "shard": 0}]
    with pytest.raises(ConfigError, match="shard_size must be a positive integer or null, got 0"):
        ScoreConfig(shard_size=0)


@pytest.mark.parametrize("shard_size", [50, 97, 243])  # 4 x 50 + 43; 2 x 97 + 49; one shard
def test_sharded_scores_equal_unsharded_exactly(world, tmp_path, shard_size):
    root = world["root"]
    metrics = _sharded(world, tmp_path, shard_size)
    want, want_manifest = read_scores(root / "unsharded")
    got, got_manifest = read_scores(tmp_path / "scores")
    pd.testing.assert_frame_equal(got, want, check_exact=True)  # margins, raw margins, PD, n_other
    assert (tmp_path / "scores" / "scores.parquet").read_bytes() == (root / "unsharded" / "scores.parquet").read_bytes()
    assert got_manifest["quantiles"] == want_manifest["quantiles"]
    assert got_manifest["fingerprint"] == want_manifest["fingerprint"]
    for key in ("pd_mean", "pd_negative_fraction", "spearman_pd_vs_ratings", "scored", "from_cache"):
        assert metrics[key] == want_manifest["metrics"][key], key
    n_shards = len(shard_bounds(world["n"], shard_size))
    assert len(list((tmp_path / "shards").glob("*/*.parquet"))) == n_shards * len(world["models"])


def test_chunked_margins_equal_one_pass(world):
    """Bounded memory: margins computed 16 pairs at a time equal one pass over all pairs."""
    from fgpo_tasks import reward_models as rm
    from fgpo_tasks.scoring import cross_mask

    df = contract.read_pairs(world["root"] / "pool")
    models = rm.load_models(world["models"])
    mask = cross_mask(df["aspect"].to_numpy(), [m["aspect"] for m in models], df["pair_id"].to_numpy(),
                      [m["training_ids"] for m in models])
    cfg = ScoreConfig(use_cache=False, progress=False)
    whole, _ = model_margins(df, models, mask, cfg)
    chunked, _ = model_margins(df, models, mask, cfg, chunk=16)
    np.testing.assert_array_equal(whole, chunked)
    assert np.isfinite(whole[mask]).all() and np.isnan(whole[~mask]).all()


def test_a_retried_shard_is_not_scored_again_and_the_reduce_scores_missing_ones(world, tmp_path, monkeypatch):
    from fgpo_tasks import scoring

    root = world["root"]
    cfg = ScoreConfig(use_cache=False, progress=False, shard_size=100)
    first = score_shard(root / "pool", world["models"][0], 2, cfg, tmp_path / "shards")
    assert first["rows"] == [200, 243] and first["scored"] > 0
    calls = []
    real = scoring.model_margins
    monkeypatch.setattr(scoring, "model_margins", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert score_shard(root / "pool", world["models"][0], 2, cfg, tmp_path / "shards") == first
    assert calls == []
    reduce_shards(root / "pool", tmp_path / "scores", cfg, "t", world["models"], tmp_path / "shards")
    assert len(calls) == 3 * len(world["models"]) - 1  # every shard but the one already written
    pd.testing.assert_frame_equal(read_scores(tmp_path / "scores")[0], read_scores(root / "unsharded")[0],
                                  check_exact=True)
    with pytest.raises(ConfigError, match="shard 3 out of range: .* has 3 shard"):
        score_shard(root / "pool", world["models"][0], 3, cfg, tmp_path / "other")


def test_the_score_stage_has_one_key_and_result_sharded_or_not(world, tmp_path):
    from fgpo_tasks import workflow
    from fgpo_tasks.stages import Store

    root = world["root"]
    data = str(root / "pool")
    plain = workflow.score(Store(tmp_path / "a"), data, world["models"],
                           ScoreConfig(use_cache=False, progress=False), "t")
    config = ScoreConfig(use_cache=False, progress=False, shard_size=60)
    store = Store(tmp_path / "b")
    units = shard_plan(world["n"], world["models"], 60)
    done = [workflow.score_shard(store, data, world["models"], config, u["model"], u["shard"]) for u in units]
    assert {d["stage_key"] for d in done} == {plain.key} and not any(d["done"] for d in done)
    sharded = workflow.score(store, data, world["models"], config, "t")
    assert sharded.key == plain.key and sharded.computed
    drop = ("seconds", "scores")
    assert ({k: v for k, v in sharded.result.items() if k not in drop}
            == {k: v for k, v in plain.result.items() if k not in drop})
    assert (sharded.dir / "scores" / "scores.parquet").read_bytes() == (plain.dir / "scores" / "scores.parquet").read_bytes()
    record = json.loads((sharded.dir / "stage.json").read_text())
    assert "shard_size" not in record["config"]  # inert: not part of the key
    # once the stage is stored a (retried) shard task does nothing
    again = workflow.score_shard(store, data, world["models"], config, units[0]["model"], 0)
    assert again["done"] and again["stage_key"] == plain.key
