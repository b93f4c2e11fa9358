"""Selection confidence: the statistics against known answers, the verdict on constructed proxies,
what select does on each verdict (warn, fallback to PD from ratings, fail), the conflict review."""

from __future__ import annotations

import html
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from fgpo_tasks import confidence, conflicts, contract, synthetic
from fgpo_tasks.confidence import (ConfidenceConfig, auc, decide, rating_agreement, selection_confidence,
                                   verdict, wilson_interval)
from fgpo_tasks.errors import ConfigError, FgpoError
from fgpo_tasks.scoring import SCORES_FILE, ScoreConfig, run_score
from fgpo_tasks.selection import SelectConfig, run_select

ASPECTS = ("a", "b", "c")


def _models(accuracies: dict[str, float], n: int) -> list[dict]:
    """Proxy records as ``load_models`` returns them (only what the report reads)."""
    return [{"aspect": a, "metrics": {"heldout_accuracy": acc, "n_heldout": n}} for a, acc in accuracies.items()]


# ---------------------------------------------------------------------------------------------
# Statistics with known answers

def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(0.5, 100, 0.95)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(1.0, 10, 0.95)  # never a point at p = 1: n / (n + z^2)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(10 / (10 + 1.959964 ** 2), abs=1e-6)
    assert wilson_interval(0.7, 0) is None
    assert np.diff(wilson_interval(0.7, 1000, 0.99)) > np.diff(wilson_interval(0.7, 1000, 0.9))


def test_auc_by_hand_and_against_the_pairwise_loop():
    # positives score 2 and 4, negatives 1 and 3: (2>1), (4>1), (4>3) of 4 comparisons
    assert auc([1, 2, 3, 4], [False, True, False, True]) == 0.75
    assert auc([1, 1, 1], [True, False, False]) == 0.5  # ties count one half
    assert auc([1, 2], [True, True]) is None
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=200), 1)  # many ties
    y = rng.random(200) < 0.3
    naive = np.mean([(p > q) + 0.5 * (p == q) for p in s[y] for q in s[~y]])
    assert auc(s, y) == pytest.approx(naive)


def test_rating_agreement_known_answers():
    rng = np.random.default_rng(1)
    r = rng.normal(size=300)
    same = rating_agreement(r, r)
    assert same["conflict_auc"] == 1.0 and same["spearman"] == pytest.approx(1.0)
    assert same["n_pairs"] == 300 and same["n_conflicting"] == int((r > 0).sum())
    opposite = rating_agreement(-r, r)
    assert opposite["conflict_auc"] == 0.0 and opposite["spearman"] == pytest.approx(-1.0)
    noise = rating_agreement(rng.normal(size=300), r)
    lo, hi = noise["conflict_auc_ci"]
    assert lo < 0.5 < hi  # unrelated PD: the interval covers chance
    # pairs without PD from ratings are left out, not counted
    with_gaps = np.where(np.arange(300) % 3 == 0, np.nan, r)
    assert rating_agreement(r, with_gaps)["n_pairs"] == 200


# ---------------------------------------------------------------------------------------------
# The verdict on constructed proxies

def test_chance_proxies_give_none():
    report = selection_confidence("reward_models", _models({a: 0.5 for a in ASPECTS}, 200), None, None,
                                  ConfidenceConfig())
    assert report["verdict"] == "none"
    assert all(p["ci"][0] < 0.5 < p["ci"][1] for p in report["proxies"].values())
    assert "no proxy is distinguishable from chance" in report["reasons"][0]
    # a proxy worse than chance is no evidence either; too few held-out pairs neither
    assert verdict(confidence.proxy_evidence(_models({"a": 0.3, "b": 0.52}, 400)), None,
                   ConfidenceConfig())[0] == "none"
    assert verdict(confidence.proxy_evidence(_models({"a": 0.8}, 4)), None, ConfidenceConfig())[0] == "none"


def test_pd_at_chance_against_the_ratings_gives_none_whatever_the_proxies_accuracy():
    """The helpful-vs-safe case of issue 13: proxies above chance on their own aspect, but PD does
    not find the rating conflicts. The ratings measure PD itself, so they decide."""
    rng = np.random.default_rng(4)
    pd_r = rng.normal(size=500)
    models = _models({"helpful": 0.62, "safe": 0.5}, 300)
    report = selection_confidence("reward_models", models, rng.normal(size=500), pd_r, ConfidenceConfig())
    assert report["ratings"]["conflict_auc_ci"][0] <= 0.5  # unrelated PD: the interval reaches chance
    assert report["verdict"] == "none" and "conflict AUC" in report["reasons"][0]
    off = ConfidenceConfig(none_if_auc_at_chance=False)
    assert selection_confidence("reward_models", models, rng.normal(size=500), pd_r, off)["verdict"] == "weak"


def test_exact_proxies_give_ok_with_and_without_ratings():
    rng = np.random.default_rng(2)
    pd_r = rng.normal(size=400)
    models = _models({a: 1.0 for a in ASPECTS}, 100)
    assert selection_confidence("reward_models", models, pd_r, None, ConfidenceConfig())["verdict"] == "ok"
    report = selection_confidence("reward_models", models, pd_r, pd_r, ConfidenceConfig())
    assert report["verdict"] == "ok" and report["ratings_used"]
    assert report["ratings"]["conflict_auc"] == 1.0 and report["mean_accuracy"] == 1.0


def test_in_between_proxies_give_weak_and_say_why():
    cfg = ConfidenceConfig()
    rng = np.random.default_rng(3)
    pd_r = rng.normal(size=400)
    # above chance (CI low end > 0.5) but below the accuracy thresholds
    r = selection_confidence("reward_models", _models({"a": 0.6, "b": 0.62, "c": 0.55}, 500), None, None, cfg)
    assert r["verdict"] == "weak"
    assert any("mean held-out accuracy 0.590 < ok_mean_accuracy 0.65" in x for x in r["reasons"])
    assert any("c 0.550" in x for x in r["reasons"])
    # accurate proxies whose PD does not separate the rating conflicts: weak, by the AUC
    good = _models({a: 0.8 for a in ASPECTS}, 500)
    noisy = pd_r + rng.normal(scale=3.0, size=400)
    r = selection_confidence("reward_models", good, noisy, pd_r, cfg)
    assert r["verdict"] == "weak" and r["ratings"]["conflict_auc"] < 0.7
    assert any("conflict AUC" in x for x in r["reasons"])
    # too few pairs with ratings: the rating figures are reported but do not decide
    few = selection_confidence("reward_models", good, noisy[:10], pd_r[:10], cfg)
    assert few["verdict"] == "ok" and few["ratings"]["n_pairs"] == 10 and not few["ratings_used"]


def test_thresholds_come_from_the_config():
    models = _models({a: 0.6 for a in ASPECTS}, 1000)
    assert selection_confidence("reward_models", models, None, None, ConfidenceConfig())["verdict"] == "weak"
    loose = ConfidenceConfig(ok_mean_accuracy=0.6, ok_min_accuracy=0.55)
    assert selection_confidence("reward_models", models, None, None, loose)["verdict"] == "ok"
    with pytest.raises(ConfigError, match="ok_conflict_auc must be in \\[0, 1\\], got 1.5"):
        ConfidenceConfig(ok_conflict_auc=1.5)
    with pytest.raises(ConfigError, match="score \\[confidence\\]: unknown field"):
        ScoreConfig(confidence={"ok_accuracy": 0.6})
    assert ScoreConfig(confidence={"ok_spearman": 0.5}).confidence_config().ok_spearman == 0.5
    # PD from ratings involves no proxy
    assert selection_confidence("ratings", [], None, None, ConfidenceConfig())["verdict"] == "ok"


def test_metrics_are_flat_numbers():
    report = selection_confidence("reward_models", _models({"a": 0.7, "b": 0.9}, 100), None, None,
                                  ConfidenceConfig())
    m = confidence.metrics(report)
    assert m["confidence.verdict_level"] == 2.0 and m["confidence.accuracy.b"] == 0.9
    assert m["confidence.mean_accuracy"] == pytest.approx(0.8)
    assert all(isinstance(v, float) for v in m.values())


def test_decide_acts_only_on_none_and_only_for_proxy_pd():
    none = {"verdict": "none", "reasons": ["chance"]}
    assert decide(none, "pd", "warn", True).action == "warned"
    assert decide(none, "pd", "fallback_ratings", True).strategy == "pd_ratings"
    assert decide(none, "pd", "fallback_ratings", False).action == "cannot_fallback"
    assert decide(none, "pd_high", "fallback_ratings", True).strategy == "pd_high"
    for strategy in ("random", "pd_ratings", "all", "ova"):  # they do not rank by proxy PD
        assert decide(none, strategy, "fail", True).action == "none"
    assert decide({"verdict": "weak", "reasons": []}, "pd", "fail", True).action == "none"
    with pytest.raises(FgpoError, match="on_weak_proxies=fail"):
        decide(none, "pd", "fail", True)


# ---------------------------------------------------------------------------------------------
# select on a pool whose proxies are at chance

@pytest.fixture(scope="module")
def chance_pool(tmp_path_factory):
    """Synthetic pairs (complete ratings, so PD from ratings exists) with scores whose PD comes
    from proxies at chance: the PD column is noise, the report is the one such proxies get."""
    root = tmp_path_factory.mktemp("confidence")
    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=120, seed=7, conflict_rate=0.3))
    contract.write_pairs(pd.DataFrame(rows), root / "data", stage="test", config={}, created_at="t")
    run_score(root / "data", root / "ratings_scores", ScoreConfig(from_ratings=True), "t")

    def scores_dir(name: str, accuracy: float, with_ratings: bool = True):
        table = pd.read_parquet(root / "ratings_scores" / SCORES_FILE)
        # exact proxies reproduce PD from ratings; chance proxies give noise
        table["pd"] = table["pd_ratings"] if accuracy == 1.0 else np.random.default_rng(0).normal(size=len(table))
        if not with_ratings:
            table["pd_ratings"] = np.nan
        manifest = contract.read_manifest(root / "ratings_scores")
        models = _models({a: accuracy for a in synthetic.ASPECTS}, 30)
        manifest.update(source="reward_models", selection_confidence=selection_confidence(
            "reward_models", models, table["pd"], table["pd_ratings"] if with_ratings else None,
            ConfidenceConfig()))
        out = root / name
        out.mkdir()
        table.to_parquet(out / SCORES_FILE, index=False)
        contract.write_manifest(out, manifest)
        return out

    return {"root": root, "chance": scores_dir("chance", 0.5), "good": scores_dir("good", 1.0),
            "chance_no_ratings": scores_dir("chance_no_ratings", 0.5, with_ratings=False)}


def _ids(path) -> set:
    return set(contract.read_pairs(path)["pair_id"])


def test_warn_keeps_pd_and_says_so(chance_pool, created_at, tmp_path, caplog):
    root = chance_pool["root"]
    with caplog.at_level("WARNING"):
        m = run_select(chance_pool["chance"], root / "data", tmp_path / "w", SelectConfig(), created_at)
    assert "selection confidence 'none'" in caplog.text and "on_weak_proxies=warn" in caplog.text
    assert m["strategy"] == "pd" and m["selection_confidence"] == "none" and m["confidence_action"] == "warned"
    s = contract.read_manifest(tmp_path / "w")["selection"]
    assert s["strategy"] == "pd" and s["selection_confidence"] == "none" and s["confidence"]["verdict"] == "none"
    table = pd.read_parquet(chance_pool["chance"] / SCORES_FILE)
    assert _ids(tmp_path / "w") == set(table.nsmallest(36, "pd")["pair_id"])  # still by (noise) PD


def test_fallback_selects_by_pd_from_ratings_and_the_manifest_says_so(chance_pool, created_at, tmp_path):
    root = chance_pool["root"]
    m = run_select(chance_pool["chance"], root / "data", tmp_path / "f",
                   SelectConfig(on_weak_proxies="fallback_ratings"), created_at)
    assert m["strategy"] == "pd_ratings" and m["requested_strategy"] == "pd"
    assert m["confidence_action"] == "fallback" and "pd_ratings" in m["confidence_message"]
    manifest = contract.read_manifest(tmp_path / "f")
    s = manifest["selection"]
    assert s["strategy"] == "pd_ratings" and s["requested_strategy"] == "pd" and s["confidence_action"] == "fallback"
    assert manifest["config"]["strategy"] == "pd" and manifest["config"]["on_weak_proxies"] == "fallback_ratings"
    run_select(chance_pool["chance"], root / "data", tmp_path / "r", SelectConfig(strategy="pd_ratings"), created_at)
    assert _ids(tmp_path / "f") == _ids(tmp_path / "r")
    # good proxies: no fallback, the pd selection itself
    m = run_select(chance_pool["good"], root / "data", tmp_path / "g",
                   SelectConfig(on_weak_proxies="fallback_ratings"), created_at)
    assert m["strategy"] == "pd" and m["selection_confidence"] == "ok" and m["confidence_action"] == "none"


def test_fallback_without_ratings_warns_that_it_cannot(chance_pool, created_at, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        m = run_select(chance_pool["chance_no_ratings"], chance_pool["root"] / "data", tmp_path / "n",
                       SelectConfig(on_weak_proxies="fallback_ratings"), created_at)
    assert m["strategy"] == "pd" and m["confidence_action"] == "cannot_fallback"
    assert "cannot fall back: the pool carries no PD from ratings" in caplog.text


def test_fail_raises_and_writes_nothing(chance_pool, created_at, tmp_path):
    with pytest.raises(FgpoError, match="selection confidence 'none'.*on_weak_proxies=fail"):
        run_select(chance_pool["chance"], chance_pool["root"] / "data", tmp_path / "x",
                   SelectConfig(on_weak_proxies="fail"), created_at)
    assert not (tmp_path / "x").exists()
    # a strategy that does not rank by proxy PD is not stopped
    m = run_select(chance_pool["chance"], chance_pool["root"] / "data", tmp_path / "rnd",
                   SelectConfig(strategy="random", on_weak_proxies="fail"), created_at)
    assert m["selection_confidence"] == "none" and m["confidence_action"] == "none"


def test_cli_select_prints_the_verdict_and_fails_readably(chance_pool, tmp_path):
    base = [sys.executable, "-m", "fgpo_tasks.cli", "--created-at", "2026-01-01T00:00:00+00:00", "select",
            "--scores", str(chance_pool["chance"]), "--data", str(chance_pool["root"] / "data")]
    r = subprocess.run(base + ["--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["selection_confidence"] == "none" and out["confidence_action"] == "warned"
    assert "selection confidence 'none'" in r.stderr
    cfg = tmp_path / "select.yaml"
    cfg.write_text("on_weak_proxies: fail\n")
    r = subprocess.run(base + ["--out", str(tmp_path / "o2"), "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "on_weak_proxies=fail" in r.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# The conflict review

def _review_inputs():
    df = pd.DataFrame({
        "pair_id": ["p1", "p2", "p3", "p4"],
        "prompt": ["<script>alert(1)</script> ok?", "q2", "q3", "q4"],
        "chosen": ["c1 " * 200, "c2", "c3", "c4"],
        "rejected": ["r1", "r2 & <b>", "r3", "r4"],
    })
    scores = pd.DataFrame({
        "pair_id": df["pair_id"], "aspect": ["a", "b", "a", "c"],
        "margin_a": [np.nan, -0.2, np.nan, 0.9],
        "margin_b": [-1.0, np.nan, 0.5, 0.1],
        "margin_c": [-0.4, -0.9, 0.5, np.nan],
        "n_other": [2, 2, 2, 2],
    })
    scores["pd"] = -scores[["margin_a", "margin_b", "margin_c"]].sum(axis=1)  # 1.4, 1.1, -1.0, -1.0
    scores["pd_ratings"] = [0.5, np.nan, -1.0, 0.0]
    return df, scores


def test_conflict_review_ranks_by_pd_and_names_the_disagreeing_aspects():
    df, scores = _review_inputs()
    review = conflicts.conflict_review(df, scores, list(ASPECTS), n=3)
    assert list(review["pair_id"]) == ["p1", "p2", "p3"]  # p3 and p4 tie at -1.0: pair_id order
    top = review.iloc[0]
    assert top["pd"] == pytest.approx(1.4) and top["aspect"] == "a"
    assert top["disagreeing"] == "b:-1.000;c:-0.400" and top["n_disagree"] == 2
    assert review.iloc[1]["disagreeing"] == "c:-0.900;a:-0.200"
    assert review.iloc[2]["n_disagree"] == 0 and review.iloc[2]["disagreeing"] == ""
    assert np.isnan(top["margin_a"]) and top["margin_b"] == -1.0
    assert top["prompt"] == df["prompt"][0] and top["chosen"] == df["chosen"][0]


def test_conflict_review_files_escape_text_and_keep_full_texts(tmp_path):
    df, scores = _review_inputs()
    summary = conflicts.write_conflict_review(df, scores, list(ASPECTS), tmp_path, n=50)
    assert summary["n_pairs"] == 4 and summary["n_positive_pd"] == 2
    csv = pd.read_csv(tmp_path / conflicts.CSV_FILE)
    assert list(csv.columns) == ["rank", "pair_id", "aspect", "pd", "pd_ratings", "n_other", "n_disagree",
                                 "disagreeing", "margin_a", "margin_b", "margin_c", "prompt", "chosen", "rejected"]
    assert csv["chosen"][0] == df["chosen"][0]  # full text in the CSV
    page = (tmp_path / conflicts.HTML_FILE).read_text()
    assert "<script>" not in page and html.escape("<script>alert(1)</script>") in page
    assert "r2 &amp; &lt;b&gt;" in page
    assert "<details>" in page and page.count("c1 c1") > 1  # snippet, and the full text on expand
    for fetch in ("<script", "<link", " src=", " href=", "@import"):  # self-contained: nothing fetched
        assert fetch not in page


# ---------------------------------------------------------------------------------------------
# The score step writes both, with real tiny proxies

def test_score_step_writes_the_report_and_the_review(tmp_path, created_at, one_thread):
    from fgpo_tasks.reward_models import RewardModelConfig, discover_models, run_reward_models
    from fgpo_tasks.scoring import read_scores

    rows = synthetic.generate(synthetic.SyntheticConfig(n_pairs=120, seed=11, conflict_rate=0.3))
    contract.write_pairs(pd.DataFrame(rows), tmp_path / "data", stage="test", config={}, created_at="t")
    cfg = RewardModelConfig(backbone="tiny-bert", epochs=3, max_length=128, compare_undebiased=False,
                            cache_dir=str(tmp_path / "emb"))
    run_reward_models(tmp_path / "data", tmp_path / "rm", cfg, "t")
    m = run_score(tmp_path / "data", tmp_path / "scores", ScoreConfig(progress=False, conflict_review_pairs=7,
                  cache_dir=str(tmp_path / "sc")), created_at, reward_models_dir=tmp_path / "rm")
    table, manifest = read_scores(tmp_path / "scores")
    report = json.loads((tmp_path / "scores" / confidence.REPORT_FILE).read_text())
    assert manifest["selection_confidence"] == report and m["selection_confidence"] == report["verdict"]
    for rec in discover_models(tmp_path / "rm"):  # the proxies' own held-out figures
        p = report["proxies"][rec["aspect"]]
        assert p["accuracy"] == rec["metrics"]["heldout_accuracy"] and p["n"] == rec["metrics"]["n_heldout"]
    assert report["verdict"] == verdict(report["proxies"], report["ratings"] if report["ratings_used"] else None,
                                        ConfidenceConfig())[0]
    assert report["ratings"]["n_pairs"] == 120  # synthetic ratings are complete
    review = pd.read_csv(tmp_path / "scores" / "reports" / conflicts.CSV_FILE)
    top = table[table["pd"] == table["pd"].max()]
    assert len(review) == 7 and review["pair_id"][0] == sorted(top["pair_id"])[0]
    assert review["pd"][0] == pytest.approx(table["pd"].max())
    assert (tmp_path / "scores" / "reports" / conflicts.HTML_FILE).is_file()
    assert manifest["conflict_review"]["n_pairs"] == 7


def test_the_pipeline_knob_overrides_the_profile_and_is_checked():
    from fgpo_tasks import pipeline

    cfg = pipeline.pipeline_config({"profile": "tiny", "on_weak_proxies": "fallback_ratings"})
    assert cfg.on_weak_proxies == "fallback_ratings"
    assert pipeline.pipeline_config({"profile": "tiny"}).on_weak_proxies is None  # the profile's (warn)
    with pytest.raises(ConfigError, match="on_weak_proxies must be one of .* got 'sometimes'"):
        pipeline.pipeline_config({"profile": "tiny", "on_weak_proxies": "sometimes"})
    with pytest.raises(ConfigError, match="on_weak_proxies must be one of"):
        SelectConfig(on_weak_proxies="sometimes")


def test_pipeline_steps_fall_back_to_pd_from_ratings_and_record_it(tmp_path, one_thread):
    """The tiny profile up to select, with a confidence level so high that its 10 held-out pairs
    per proxy cannot beat chance: the select step falls back and its result and MLflow say so."""
    from mlflow import MlflowClient

    from fgpo_tasks import pipeline

    params = {"profile": "tiny", "storage_root": str(tmp_path / "storage"),
              "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "on_weak_proxies": "fallback_ratings",
              "stages": {"score": {"confidence": {"level": 0.9999}}}}
    at = "2026-01-01T00:00:00+00:00"
    valid = pipeline.step_validate(params, "fb", at, pipeline.step_ingest(params, "fb", at)["data"])
    models = [pipeline.step_reward_model(params, "fb", at, valid["data"], a) for a in valid["reward_models"]]
    scores = pipeline.step_score(params, "fb", at, valid["data"], models)
    assert scores["selection_confidence"] == "none"
    selected = pipeline.step_select(params, "fb", at, valid["data"], scores["scores"])
    assert selected["selection_confidence"] == "none" and selected["confidence_action"] == "fallback"
    assert selected["strategy"] == "pd_ratings" and selected["requested_strategy"] == "pd"
    assert contract.read_manifest(selected["data"])["selection"]["strategy"] == "pd_ratings"
    tags = MlflowClient(params["tracking_uri"]).get_run(selected["mlflow_run_id"]).data.tags
    assert tags["selection_confidence"] == "none" and tags["fgpo.selected_strategy"] == "pd_ratings"
