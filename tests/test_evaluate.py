"""Evaluation: win rate, bootstrap CI and length-controlled win rate against hand-computed cases;
generation and the results folder on tiny policies; evaluation models vs proxy models."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from fgpo_tasks.errors import ConfigError, FgpoError, InputError
from fgpo_tasks.evaluate import (EvalConfig, bootstrap_ci, generate_responses, length_controlled_win_rate,
                                 load_prompts, preferences, run_evaluate, win_rate)
from mlflow_server import build_policies

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: OpenMP threads fighting other jobs cost 100x on tiny models


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    return build_policies(tmp_path_factory.mktemp("policies"))


def small_config(**kw) -> EvalConfig:
    values = dict(n_prompts=6, max_new_tokens=8, batch_size=3, bootstrap_samples=200)
    values.update(kw)
    return EvalConfig(**values)


# -- statistics: hand-computed cases -------------------------------------------------------------

def test_preferences_and_win_rate_count_ties_as_half():
    prefs = preferences(np.array([1.0, 2.0, 3.0, 0.0]), np.array([1.0, 1.0, 4.0, 0.05]))
    assert prefs.tolist() == [0.5, 1.0, 0.0, 0.0]
    assert win_rate(prefs) == pytest.approx(1.5 / 4)
    # a tolerance turns small differences into ties
    assert preferences(np.array([0.0]), np.array([0.05]), tie_tolerance=0.1).tolist() == [0.5]


def test_bootstrap_ci_hand_cases():
    # two prompts, one win one loss: resampled means are 0, 0.5, 1 w.p. 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1.
    assert bootstrap_ci(np.array([1.0, 0.0]), n_samples=4000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci(np.array([1.0, 1.0, 1.0]), n_samples=100) == (1.0, 1.0)
    # seeded: same seed, same interval
    prefs = np.random.default_rng(1).integers(0, 2, 50).astype(float)
    assert bootstrap_ci(prefs, seed=7) == bootstrap_ci(prefs, seed=7)
    # 400 Bernoulli(0.7) prompts: the 95% CI spans about 2 * 1.96 * sqrt(.7 * .3 / 400) = 0.090
    prefs = (np.arange(400) % 10 < 7).astype(float)
    lo, hi = bootstrap_ci(prefs, n_samples=2000, seed=0)
    assert lo < 0.7 < hi
    assert 0.08 < hi - lo < 0.10


def test_length_controlled_win_rate_hand_cases():
    # Two length groups: the fit is saturated, logit p(-c) = logit(1/4), logit p(+c) = logit(4/5)
    # with a symmetric length feature +-c, so the intercept is (logit(1/4) + logit(4/5)) / 2
    # = (ln 4 - ln 3) / 2 and LC = 1 / (1 + sqrt(3/4)).
    prefs = np.array([1, 0, 0, 0] + [1, 1, 1, 1, 0], dtype=float)
    dlen = np.array([-20] * 4 + [20] * 5, dtype=float)
    lc = length_controlled_win_rate(prefs, dlen)
    assert lc["lc_win_rate"] == pytest.approx(1 / (1 + math.sqrt(3 / 4)), abs=1e-5)
    assert win_rate(prefs) == pytest.approx(5 / 9)
    # Wins mostly when longer (5/6) but rarely when shorter (1/4): LC < raw win rate 0.6.
    prefs = np.array([1] * 5 + [0] + [1] + [0] * 3, dtype=float)
    dlen = np.array([10] * 6 + [-10] * 4, dtype=float)
    lc = length_controlled_win_rate(prefs, dlen)
    assert lc["lc_win_rate"] == pytest.approx(1 / (1 + math.sqrt(3 / 5)), abs=1e-5)
    assert lc["lc_win_rate"] < win_rate(prefs) == 0.6
    assert lc["lc_length_coef"] > 0
    # No length difference: only the intercept, whose fit is the mean preference (soft ties).
    prefs = np.array([1, 0.5, 0, 1], dtype=float)
    assert length_controlled_win_rate(prefs, np.zeros(4))["lc_win_rate"] == pytest.approx(0.625, abs=1e-6)


# -- config: evaluation models vs proxy models ----------------------------------------------------

def test_eval_model_that_is_a_proxy_model_is_rejected(tmp_path, monkeypatch):
    rm = tmp_path / "rm_helpfulness"
    rm.mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        EvalConfig(eval_models={"helpfulness": ["fgpo:rm_helpfulness"]}, proxy_models=[str(rm)])
    assert "fgpo:rm_helpfulness" in str(e.value) and str(rm) in str(e.value)
    # distinct models are fine
    EvalConfig(eval_models={"helpfulness": ["hf:some/other-rm"]}, proxy_models=[str(rm)])
    with pytest.raises(ConfigError, match="unknown rule"):
        EvalConfig(eval_models={"x": ["rule:nonsense"]})


# -- prompts: held out from the training pool -----------------------------------------------------

def test_training_prompts_are_excluded(tmp_path, created_at):
    from fgpo_tasks.contract import frame, write_pairs
    from fgpo_tasks.synthetic import SyntheticConfig, generate

    pool = frame(generate(SyntheticConfig(n_pairs=30, seed=1)))
    write_pairs(pool, tmp_path / "pool", stage="test", config=None, created_at=created_at)
    write_pairs(pool.iloc[:10], tmp_path / "train", stage="test", config=None, created_at=created_at)
    config = small_config(prompt_source="pairs", prompt_path=str(tmp_path / "pool"), n_prompts=100,
                          exclude_pairs=[str(tmp_path / "train")])
    held, record = load_prompts(config)
    train_prompts = set(pool["prompt"].iloc[:10])
    assert record["excluded_training_prompts"] == len(train_prompts) > 0
    assert {p["prompt"] for p in held} == set(pool["prompt"]) - train_prompts
    # the candidate's fgpo_model.json names its training data, a subset selected from a pool whose
    # prompts are excluded too (the manifest's inputs)
    from fgpo_tasks.contract import write_pairs as wp
    wp(pool.iloc[10:12], tmp_path / "selected", stage="select", config=None, created_at=created_at,
       inputs=[{"path": str(tmp_path / "pool")}])
    model = tmp_path / "model"
    model.mkdir()
    (model / "fgpo_model.json").write_text(json.dumps({"data_dir": str(tmp_path / "selected")}))
    config = small_config(prompt_source="pairs", prompt_path=str(tmp_path / "pool"), n_prompts=100)
    with pytest.raises(FgpoError, match="no held-out prompts"):
        load_prompts(config, model)
    assert load_prompts(small_config(prompt_source="pairs", prompt_path=str(tmp_path / "pool"),
                                     follow_lineage=False), model)[1]["excluded_training_prompts"] == 2
    # synthetic prompts drawn with the training data's own seed are dropped too
    config = small_config(n_prompts=20, prompt_seed=1, exclude_pairs=[str(tmp_path / "pool")])
    held, record = load_prompts(config)
    assert record["excluded_training_prompts"] >= len(set(pool["prompt"])) > 0
    assert not {p["prompt"] for p in held} & set(pool["prompt"])
    # everything excluded: a readable error, not an empty evaluation
    with pytest.raises(FgpoError, match="no held-out prompts"):
        load_prompts(small_config(prompt_source="pairs", prompt_path=str(tmp_path / "train"),
                                  exclude_pairs=[str(tmp_path / "pool")]))


def test_jsonl_prompts_and_bad_line(tmp_path):
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "What is 2 plus 3?"}\n\n{"messages": [{"role": "user", "content": "Hi"}]}\n')
    prompts, record = load_prompts(small_config(prompt_source="jsonl", prompt_path=str(good)))
    assert sorted(p["prompt"] for p in prompts) == ["Hi", "What is 2 plus 3?"] and record["n_prompts"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": ""}\n')
    with pytest.raises(InputError, match=r"bad.jsonl, line 2, field \"prompt\""):
        load_prompts(small_config(prompt_source="jsonl", prompt_path=str(bad)))


# -- generation -----------------------------------------------------------------------------------

def test_generation_is_batch_invariant_and_seeded(policies):
    prompts, _ = load_prompts(small_config(n_prompts=5))
    one = generate_responses(policies["bad"], prompts, small_config(batch_size=1))
    five = generate_responses(policies["bad"], prompts, small_config(batch_size=5))
    assert one == five  # left padding: a prompt's greedy answer does not depend on its batch
    assert any(one)
    sample = dict(decoding="sample", temperature=1.0, top_p=1.0, batch_size=5)
    a = generate_responses(policies["bad"], prompts, small_config(seed=3, **sample))
    b = generate_responses(policies["bad"], prompts, small_config(seed=3, **sample))
    c = generate_responses(policies["bad"], prompts, small_config(seed=4, **sample))
    assert a == b and a != c


def test_generation_cache_reuses_responses_only_for_the_same_model_prompts_and_decoding(
        policies, tmp_path, monkeypatch):
    from fgpo_tasks import evaluate

    calls = []
    real = evaluate.generate_responses
    monkeypatch.setattr(evaluate, "generate_responses", lambda m, p, c, desc="": calls.append(m) or real(m, p, c))
    prompts, _ = load_prompts(small_config(n_prompts=4))
    cache = tmp_path / "gen"
    first = evaluate.cached_responses(policies["bad"], prompts, small_config(), cache_dir=cache)
    assert evaluate.cached_responses(policies["bad"], prompts, small_config(), cache_dir=cache) == first
    assert len(calls) == 1  # the second call was served from the cache
    evaluate.cached_responses(policies["bad"], prompts, small_config(max_new_tokens=3), cache_dir=cache)
    evaluate.cached_responses(policies["good"], prompts, small_config(), cache_dir=cache)
    evaluate.cached_responses(policies["bad"], prompts[:3], small_config(), cache_dir=cache)
    evaluate.cached_responses(policies["bad"], prompts, small_config(generation_cache=False), cache_dir=cache)
    assert len(calls) == 5 and len(list(cache.glob("*.json"))) == 4


def test_model_fingerprint_is_memoised_but_follows_a_changed_file(tmp_path):
    from fgpo_tasks.evaluate import model_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    first = model_fingerprint(tmp_path)
    assert model_fingerprint(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"abcd")  # new size (and mtime): hashed again
    assert model_fingerprint(tmp_path) != first


# -- the stage ------------------------------------------------------------------------------------

def test_run_evaluate_writes_every_figure(policies, tmp_path, created_at):
    out = tmp_path / "eval"
    config = small_config(eval_models={"correctness": ["rule:correctness"],
                                       "conciseness": ["rule:conciseness", "rule:detail"]})
    summary = run_evaluate(policies["good"], policies["ref"], out, config, created_at)
    for name in ("results.json", "results.md", "results.csv", "generations.jsonl", "manifest.json",
                 "plots/correctness.png", "plots/conciseness.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == results["prompts"]["n_prompts"] == summary["n_prompts"] == 6
    # 'good' answers nothing (0 words), ref babbles: good wins conciseness on every prompt;
    # nobody states a right answer: correctness ties everywhere.
    assert all(g["candidate"] == "" and g["baseline"] for g in gens)
    conc = results["aspects"]["conciseness"]
    assert conc["models"]["rule:conciseness"]["win_rate"] == 1.0
    assert conc["models"]["rule:detail"]["win_rate"] == 0.5  # both say no detail sentence
    assert conc["win_rate"] == pytest.approx(0.75)  # two models per aspect: preferences averaged
    assert results["aspects"]["correctness"]["win_rate"] == 0.5
    assert results["aspects"]["correctness"]["win_rate_ci"] == [0.5, 0.5]
    # figures agree with the per-prompt scores in generations.jsonl
    prefs = [g["preference"]["conciseness"] for g in gens]
    assert np.mean(prefs) == pytest.approx(conc["win_rate"])
    cand = np.mean([g["candidate_scores"]["rule:conciseness"] for g in gens])
    assert conc["models"]["rule:conciseness"]["candidate_mean_reward"] == pytest.approx(cand)
    assert results["overall"]["win_rate"] == pytest.approx((0.75 + 0.5) / 2) == summary["win_rate"]
    rows = list(csv.reader((out / "results.csv").open()))
    assert rows[0][0] == "aspect" and [r[0] for r in rows[1:]] == ["correctness", "conciseness",
                                                                    "overall (mean of aspects)"]
    assert results["candidate"]["fingerprint"] != results["baseline"]["fingerprint"]
    # the same config reproduces the same results
    run_evaluate(policies["good"], policies["ref"], tmp_path / "again", config, created_at)
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["aspects"] == results["aspects"]


def test_cli_evaluate(policies, tmp_path, created_at):
    from fgpo_tasks.cli import main

    cfg = tmp_path / "eval.yaml"
    cfg.write_text("evaluate:\n  n_prompts: 3\n  max_new_tokens: 4\n  bootstrap_samples: 50\n"
                   "  eval_models: {conciseness: [rule:conciseness]}\n")
    rc = main(["--created-at", created_at, "evaluate", "--model", str(policies["good"]),
               "--baseline", str(policies["ref"]), "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert rc == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["prompts"]["n_prompts"] == 3 and list(results["aspects"]) == ["conciseness"]
    cfg.write_text("evaluate:\n  eval_models: {helpfulness: [fgpo:/rm]}\n  proxy_models: [fgpo:/rm]\n")
    assert main(["evaluate", "--model", "x", "--baseline", "y", "--config", str(cfg),
                 "--out", str(tmp_path / "o2")]) == 2


def test_missing_model_folder_is_a_readable_error(tmp_path, created_at):
    with pytest.raises(FgpoError, match="not a model folder"):
        run_evaluate(tmp_path / "nope", tmp_path / "nope", tmp_path / "o", small_config(), created_at)


def test_scorer_specs_dispatch(monkeypatch):
    from fgpo_tasks import reward_models
    from fgpo_tasks.evaluate import build_scorer

    prompts, responses = ["What is 2 plus 3?"] * 2, ["The answer is 5.", "The answer is 6. Thank you for asking!"]
    assert build_scorer("rule:correctness", small_config())(prompts, responses).tolist() == [1.0, 0.0]
    seen = []
    monkeypatch.setattr(reward_models, "load_scorer",
                        lambda d: seen.append(d) or (lambda p, r: np.full(len(r), 2.0)))
    assert build_scorer("fgpo:/models/rm_x", small_config())(prompts, responses).tolist() == [2.0, 2.0]
    assert seen == ["/models/rm_x"]
    # a sequence-classification model (here the tiny test BERT with a fresh scalar head)
    hf = build_scorer("hf:tiny-bert", small_config(score_batch_size=1))
    scores = hf(prompts, responses)
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and scores[0] != scores[1]
    assert np.allclose(hf(prompts, responses), scores)
