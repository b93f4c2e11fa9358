"""The experiment runner: arms share the pool's scoring, every arm is in the table and in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fgpo_tasks import experiment
from fgpo_tasks.config import from_dict
from fgpo_tasks.errors import ConfigError
from fgpo_tasks.experiment import ExperimentConfig


def tiny_config(tmp_path, policy: str) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "name": "tiny", "seeds": [0], "budget": 0.3, "starting_policy": policy, "threads": 1,
        "experiment_name": "test-experiment", "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "out_dir": str(tmp_path / "exp"),
        "pools": [{"name": "c20", "ingest": {"synthetic": {"n_pairs": 80, "conflict_rate": 0.2}}}],
        "arms": [{"name": "pd", "strategy": "pd"}, {"name": "dfpo", "strategy": "all", "loss_type": "dfpo"},
                 {"name": "all", "strategy": "all"}],
        "stages": {
            "validate": {"min_pairs_per_aspect": 5, "rating_min": -100.0, "rating_max": 100.0, "data_docs": False},
            "reward_models": {"backbone": "tiny-bert", "max_length": 64, "max_prompt_length": 24, "epochs": 3,
                              "compare_undebiased": False},
            "score": {"progress": False},
            "dpo": {"lr": 1e-3, "batch_size": 8, "max_steps": 3, "max_length": 96, "max_prompt_length": 24,
                    "checkpoint_every": 0, "logging_steps": 1},
            "evaluate": {"n_prompts": 6, "max_new_tokens": 16, "batch_size": 6, "decoding": "sample",
                         "bootstrap_samples": 20, "plots": False},
        },
    })


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """One tiny experiment (2 arms, 1 pool, 1 seed), its calls to the shared stages counted."""
    from fgpo_tasks import reward_models, scoring
    from fgpo_tasks.sft import SFTConfig, run_sft

    tmp = tmp_path_factory.mktemp("experiment")
    policy = tmp / "policy"
    run_sft(policy, SFTConfig(tiny_dims={"hidden": 32, "layers": 1, "heads": 2}, bpe_vocab=300,
                              synthetic={"n_pairs": 40, "seed": 99}, max_steps=10, lr=1e-2, batch_size=8),
            "2026-01-01T00:00:00+00:00")
    cfg = tiny_config(tmp, str(policy))
    calls = {"score": 0, "reward_model": []}
    real_score, real_rm = scoring.run_score, reward_models.run_reward_model
    mp = pytest.MonkeyPatch()
    mp.setattr(scoring, "run_score", lambda *a, **k: calls.__setitem__("score", calls["score"] + 1) or real_score(*a, **k))
    mp.setattr(reward_models, "run_reward_model", lambda d, aspect, *a, **k: calls["reward_model"].append(aspect)
               or real_rm(d, aspect, *a, **k))
    from fgpo_tasks import stages

    computed, real_run = [], stages.Store.run

    def spy(self, stage, **kw):
        run = real_run(self, stage, **kw)
        if run.computed:
            computed.append(stage)
        return run

    mp.setattr(stages.Store, "run", spy)
    summary = experiment.run_experiment(cfg, "tiny-key", "2026-01-01T00:00:00+00:00")
    n_first = len(computed)
    again = experiment.run_experiment(cfg, "tiny-key", "2026-01-01T00:00:00+00:00")  # resumes: no new work
    mp.undo()
    assert len(computed) == n_first, f"the rerun computed {computed[n_first:]}"
    return {"cfg": cfg, "tmp": tmp, "summary": summary, "again": again, "calls": calls, "policy": str(policy),
            "computed": computed}


def _arm(ran, name) -> dict:
    return json.loads((ran["tmp"] / "exp" / "arms" / "c20" / "seed0" / name / "step.json").read_text())


def test_arms_share_one_scoring_of_the_pool(ran):
    calls = ran["calls"]
    assert calls["score"] == 1  # two arms use PD, once computed; the rerun recomputed nothing
    assert sorted(calls["reward_model"]) == ["conciseness", "correctness", "detail", "politeness"]
    pd_arm, dfpo_arm = _arm(ran, "pd"), _arm(ran, "dfpo")
    pool = json.loads((ran["tmp"] / "exp" / "pools" / "c20" / "seed0" / "step.json").read_text())
    card = json.loads((Path(dfpo_arm["model"]) / "fgpo_model.json").read_text())
    assert card["config"]["scores_dir"] == pool["scores"] and card["config"]["loss_type"] == "dfpo"
    assert (pd_arm["n_pool"], pd_arm["n_selected"], dfpo_arm["n_selected"]) == (80, 24, 80)
    # both pay for the shared proxies in their cost, and training from the same starting policy
    assert pd_arm["cost"]["selection_s"] >= pool["score_seconds"] + sum(pool["rm_seconds"].values())
    for arm in (pd_arm, dfpo_arm):
        assert arm["cost"]["training_s"] > 0 and arm["evaluation"]["n_prompts"] == 6
        results = json.loads((Path(arm["evaluation_dir"]) / "results.json").read_text())
        assert results["baseline"]["path"].endswith("policy")


def test_every_arm_records_the_selection_verdict_of_its_scores(ran):
    from fgpo_tasks import confidence

    pool = json.loads((ran["tmp"] / "exp" / "pools" / "c20" / "seed0" / "step.json").read_text())
    report = json.loads((Path(pool["scores"]) / confidence.REPORT_FILE).read_text())
    assert pool["selection_confidence"] == report["verdict"] in ("ok", "weak", "none")
    pd_arm = _arm(ran, "pd")
    assert pd_arm["selection_confidence"] == report["verdict"] and pd_arm["confidence_action"]
    assert pd_arm["strategy_run"] in ("pd", "pd_ratings")  # pd_ratings only on a fallback
    md = (ran["tmp"] / "exp" / "results.md").read_text()
    assert f"selection confidence {report['verdict']} (seed 0)" in md


def test_every_arm_is_evaluated_on_the_same_held_out_prompts(ran):
    ev = json.loads((ran["tmp"] / "exp" / "evaluation" / "step.json").read_text())
    prompts = {json.loads(line)["prompt"] for line in open(ev["prompts"])}
    from fgpo_tasks import contract

    pool = json.loads((ran["tmp"] / "exp" / "pools" / "c20" / "seed0" / "step.json").read_text())
    sft_data = json.loads((ran["tmp"] / "exp" / "prepare" / "step.json").read_text())["policy_data"]
    seen = set(contract.read_pairs(pool["data"])["prompt"]) | set(contract.read_pairs(sft_data)["prompt"])
    assert len(prompts) == 6 and not prompts & seen
    for name in ("pd", "dfpo", "all"):
        gens = Path(_arm(ran, name)["evaluation_dir"]) / "generations.jsonl"
        assert {json.loads(line)["prompt"] for line in gens.read_text().splitlines()} == prompts


def test_results_table_has_every_arm(ran):
    summary, root = ran["summary"], ran["tmp"] / "exp"
    assert summary["arms_run"] == summary["arms_planned"] == 3 and ran["again"]["arms_run"] == 3
    md = (root / "results.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith(("| pd ", "| dfpo ", "| all "))]
    assert len(rows) == 3
    table = pd.read_csv(root / "results.csv")
    assert table["arm"].tolist() == ["pd", "dfpo", "all"] and table["seeds"].tolist() == [1, 1, 1]
    assert table["lc_win_rate.mean"].between(0, 1).all()
    assert (root / "results.png").stat().st_size > 10_000
    # the length profile of a selection: 'all' keeps the pool, so it has the pool's own
    from fgpo_tasks import contract

    pool = contract.read_pairs(json.loads((root / "pools" / "c20" / "seed0" / "step.json").read_text())["data"])
    d = pool["chosen"].str.split().str.len() - pool["rejected"].str.split().str.len()
    row = table.set_index("arm").loc["all"]
    assert row["selected_chosen_longer.mean"] == pytest.approx((d > 0).mean())
    assert row["selected_word_difference.mean"] == pytest.approx(d.mean())
    assert f"| {(d > 0).mean():.2f} ({d.mean():.0f}) |" in next(r for r in rows if r.startswith("| all "))


def test_each_arm_is_an_mlflow_run_tagged_with_its_strategy(ran):
    from mlflow import MlflowClient

    client = MlflowClient(ran["cfg"].tracking_uri)
    exp = client.get_experiment_by_name("test-experiment")
    runs = client.search_runs([exp.experiment_id], "tags.`fgpo.role` = 'arm'")
    by_arm = {r.data.tags["fgpo.arm"]: r for r in runs}
    assert set(by_arm) == {"pd", "dfpo", "all"}  # the rerun resumed the same runs instead of adding some
    assert by_arm["pd"].data.tags["fgpo.strategy"] == "pd" and by_arm["dfpo"].data.tags["fgpo.loss_type"] == "dfpo"
    for r in by_arm.values():
        assert r.info.status == "FINISHED"
        assert {"eval.overall.lc_win_rate", "cost.selection_s", "cost.training_s"} <= set(r.data.metrics)
        assert r.data.params["pool"] == "c20" and r.data.tags["fgpo.seed"] == "0"
    shared = client.search_runs([exp.experiment_id], "tags.`fgpo.role` = 'shared'")
    assert len(shared) == 1 and "score_seconds" in shared[0].data.metrics
    report = client.search_runs([exp.experiment_id], "tags.`fgpo.role` = 'report'")
    assert len(report) == 1 and {a.path for a in client.list_artifacts(report[0].info.run_id, "report")} >= {
        "report/results.md", "report/results.png"}


# ------------------------------------------------------------------------------ units without training

def _fake_arm(pool, seed, arm, strategy, lc, delta, cost, loss="sigmoid"):
    return {"pool": pool, "seed": seed, "arm": arm, "strategy": strategy, "loss_type": loss, "n_selected": 10,
            "selected_conflict_fraction": 0.1, "cost": {"selection_s": 1.0, "training_s": cost - 1.0, "total_s": cost},
            "evaluation": {"overall": {"win_rate": lc, "lc_win_rate": lc, "reward_delta": delta},
                           "aspects": {"a": {"reward_delta": delta, "win_rate": lc, "lc_win_rate": lc}}}}


def test_aggregate_gives_mean_and_spread_over_seeds_and_marks_skipped_arms():
    cfg = from_dict(ExperimentConfig, {"pools": [{"name": "p"}], "seeds": [0, 1], "arms": [
        {"name": "all", "strategy": "all"}, {"name": "pd", "strategy": "pd"},
        {"name": "pd_ratings", "strategy": "pd_ratings"}]})
    arms = [_fake_arm("p", 0, "all", "all", 0.5, 0.0, 10.0), _fake_arm("p", 1, "all", "all", 0.6, 0.2, 20.0),
            _fake_arm("p", 0, "pd", "pd", 0.7, 1.0, 5.0), _fake_arm("p", 1, "pd", "pd", 0.9, 3.0, 5.0),
            {"pool": "p", "seed": 0, "arm": "pd_ratings", "skipped": "no ratings"}]
    rows = {r["arm"]: r for r in experiment.aggregate(cfg, arms)}
    assert rows["pd"]["lc_win_rate"] == pytest.approx((0.8, 0.1414213), rel=1e-5)
    assert rows["pd"]["a.reward_delta"] == pytest.approx((2.0, 1.4142136), rel=1e-5)
    assert rows["pd"]["cost_vs_all"] == pytest.approx((0.375, 0.1767767), rel=1e-5)  # 5/10 and 5/20
    assert rows["pd_ratings"]["skipped"] == "no ratings"
    md = experiment.markdown(cfg, list(rows.values()), {"n_prompts": 3, "eval_models_text": "rule"})
    assert "| pd | 10 ± 0 | 0.10 ± 0.00 | n/a (n/a) | 0.800 ± 0.141 | 0.800 ± 0.141 | 2.000 ± 1.414 |" in md and "skipped: no ratings" in md


def test_selection_cost_counts_what_each_strategy_needs():
    pool = {"embed_seconds": 2.0, "rm_seconds": {"a": 3.0, "b": 4.0, "__all__": 5.0}, "score_seconds": 1.0}
    cost = lambda **arm: experiment._selection_cost(experiment.ArmSpec(name="x", **arm), pool)  # noqa: E731
    assert cost(strategy="pd") == cost(strategy="pd_high") == 2.0 + 7.0 + 1.0
    assert cost(strategy="raf") == 2.0 + 5.0
    assert cost(strategy="all", loss_type="dfpo") == 10.0
    assert cost(strategy="random") == cost(strategy="all") == cost(strategy="pd_ratings") == 0.0


def test_evaluation_split_is_disjoint_by_prompt():
    from fgpo_tasks.synthetic import SyntheticConfig, generate

    df = pd.DataFrame(generate(SyntheticConfig(n_pairs=400, seed=3)))
    train, rm, prompts = experiment.split_for_evaluation(df, 0.3, 0.5, seed=0)
    assert len(train) + len(rm) + len(prompts) == len(df)
    parts = [set(x["prompt"]) for x in (train, rm, prompts)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    held = len(parts[1]) + len(parts[2])  # the coin is per prompt: ~30% of the distinct prompts
    assert 0.2 < held / df["prompt"].nunique() < 0.4 and 0.3 < len(parts[2]) / held < 0.7


def test_config_checks_name_the_bad_value():
    with pytest.raises(ConfigError, match="arm names must be unique"):
        from_dict(ExperimentConfig, {"arms": [{"name": "a"}, {"name": "a", "strategy": "random"}]})
    with pytest.raises(ConfigError, match="strategy must be one of"):
        from_dict(ExperimentConfig, {"arms": [{"name": "a", "strategy": "best"}]})
    with pytest.raises(ConfigError, match="eval_split"):
        from_dict(ExperimentConfig, {"eval_split": {"fraction": 1.5}})
    for path in ("configs/experiments/synthetic.yaml", "configs/experiments/helpsteer2.yaml"):
        cfg = experiment.load_experiment(path)
        assert {a.strategy for a in cfg.arm_specs} >= {"all", "random", "pd", "raf", "pd_high"}
        assert any(a.loss_type == "dfpo" for a in cfg.arm_specs)


def test_pd_ratings_is_skipped_where_too_few_pairs_carry_other_ratings(tmp_path):
    cfg = from_dict(ExperimentConfig, {"out_dir": str(tmp_path), "pools": [{"name": "p"}],
                                       "arms": [{"name": "pr", "strategy": "pd_ratings"}]})
    for step, body in (("prepare", {"policy": "x"}), ("evaluation", {"prompts": "x"}),
                       ("pools/p/seed0", {"n_pairs": 200, "ratings_pd": True, "n_ratings_pd": 2, "scores": "s"})):
        experiment._commit(tmp_path / step, body)
    out = experiment.run_arm(cfg, "k", "p", 0, "pr", "2026-01-01T00:00:00+00:00")
    assert out["skipped"].startswith("only 2 of 200 pairs") and "60" in out["skipped"]
    assert experiment.aggregate(cfg, [out])[0]["skipped"] == out["skipped"]


def test_two_arms_with_the_same_selection_share_it(ran):
    """``all`` with the sigmoid loss and with DFPO select the same pairs: one select stage."""
    dfpo, plain = _arm(ran, "dfpo"), _arm(ran, "all")
    assert dfpo["stage_keys"]["select"] == plain["stage_keys"]["select"] and dfpo["selected"] == plain["selected"]
    assert dfpo["stage_keys"]["train_dpo"] != plain["stage_keys"]["train_dpo"]  # the losses differ
    assert ran["computed"].count("select") == 2  # pd's and the shared one, once each
    assert sorted(s for s in ran["computed"] if s == "train_dpo") == ["train_dpo"] * 3


def test_a_changed_config_under_the_run_key_recomputes_what_it_reaches_only(ran, monkeypatch):
    from fgpo_tasks import stages

    seen = []
    real = stages.Store.run

    def spy(self, stage, **kw):
        run = real(self, stage, **kw)
        if run.computed:
            seen.append(stage)
        return run

    monkeypatch.setattr(stages.Store, "run", spy)
    cfg = tiny_config(ran["tmp"], ran["policy"])
    cfg.stages["dpo"]["lr"] = 5e-4
    before = _arm(ran, "pd")
    experiment.run_experiment(cfg, "tiny-key", "2026-01-01T00:00:00+00:00")
    after = _arm(ran, "pd")
    assert sorted(set(seen)) == ["evaluate", "train_dpo"]  # no pool, proxy, score or selection stage
    assert after["stage_keys"]["select"] == before["stage_keys"]["select"]
    assert after["stage_keys"]["train_dpo"] != before["stage_keys"]["train_dpo"]
    card = json.loads((Path(after["model"]) / "fgpo_model.json").read_text())
    assert card["config"]["lr"] == 5e-4


def test_mlflow_run_keys_follow_the_config_so_a_restarted_run_key_never_clashes(tmp_path):
    """A run key restarted with another config (its folder deleted, as the refusal above advises)
    must open new MLflow runs: MLflow refuses to change a logged param of the old ones."""
    cfg = tiny_config(tmp_path, "tiny-llama")
    key = experiment._mlflow_key(cfg, "k", "c20", "s0", "pd")
    assert key.startswith("k:") and key.endswith(":c20:s0:pd")
    same = tiny_config(tmp_path, "tiny-llama")
    same.seeds, same.threads = [0, 1, 2], 2  # free fields: a finished unit stays valid
    assert experiment._mlflow_key(same, "k", "c20", "s0", "pd") == key
    changed = tiny_config(tmp_path, "tiny-llama")
    changed.stages["dpo"]["lr"] = 5e-4
    assert experiment._mlflow_key(changed, "k", "c20", "s0", "pd") != key


def test_true_conflict_share_needs_ratings_pd_on_most_of_the_selection(tmp_path):
    from fgpo_tasks import contract, synthetic
    from fgpo_tasks.scoring import ScoreConfig, run_score

    df = pd.DataFrame(synthetic.generate(synthetic.SyntheticConfig(n_pairs=40, seed=5, conflict_rate=0.3)))
    df.loc[10:, ["ratings_chosen", "ratings_rejected"]] = None  # only the first 10 pairs are rated
    contract.write_pairs(df, tmp_path / "pool", stage="test", config={}, created_at="t")
    run_score(tmp_path / "pool", tmp_path / "scores", ScoreConfig(from_ratings=True, pool_ratings=False,
                                                                  progress=False), "t")
    contract.write_pairs(df.iloc[:10], tmp_path / "rated", stage="test", config={}, created_at="t")
    rated = experiment._true_conflict(str(tmp_path / "rated"), str(tmp_path / "scores"))
    assert rated["selected_with_ratings_pd"] == 10 and 0 <= rated["selected_conflict_fraction"] <= 1
    mostly_unrated = experiment._true_conflict(str(tmp_path / "pool"), str(tmp_path / "scores"))
    assert mostly_unrated == {"selected_with_ratings_pd": 10}  # 10 of 40: no share reported
