"""MLflow tracking and the model registry against a real `mlflow server` (SQLite backend), checked
through its REST API: parent/nested runs, params/metrics/datasets, model versions, aliases, the
promotion gate, idempotent re-registration, and failure + retry."""

from __future__ import annotations

import time

import pytest

from fgpo_tasks.errors import FgpoError
from fgpo_tasks.evaluate import EvalConfig, run_evaluate
from fgpo_tasks.registry import CHALLENGER, CHAMPION, GateConfig, gate_decision, register_candidate
from fgpo_tasks.tracking import Tracker, TrackingConfig, flatten, log_evaluation
from mlflow_server import MlflowServer, build_policies

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared cores: OpenMP threads fighting other jobs cost 100x on tiny models

MODEL = "fgpo-test-policy"
GATE = GateConfig(min_win_rate=0.55, max_aspect_regression=0.05, min_prompts=4)  # 4-prompt evaluations
# Fail fast in tests: no retries, short timeout; system metrics sampled quickly.
FAST = TrackingConfig(experiment_name="fgpo-tests", retries=0, backoff_s=0.1, http_timeout_s=10,
                      system_metrics_interval_s=1.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    return build_policies(tmp_path_factory.mktemp("policies"))


def evaluate(candidate, baseline, out, created_at):
    config = EvalConfig(n_prompts=4, max_new_tokens=6, batch_size=4, bootstrap_samples=100,
                        eval_models={"correctness": ["rule:correctness"], "conciseness": ["rule:conciseness"]})
    run_evaluate(candidate, baseline, out, config, created_at)
    return out


def alias_version(server, alias):
    answer = server.rest("registered-models/alias", name=MODEL, alias=alias)
    return answer.get("model_version", {}).get("version")


def versions(server):
    return server.rest("model-versions/search", filter=f"name='{MODEL}'").get("model_versions", [])


def run_data(server, run_id):
    data = server.rest("runs/get", run_id=run_id)["run"]["data"]
    return ({m["key"]: m["value"] for m in data.get("metrics", [])},
            {p["key"]: p["value"] for p in data.get("params", [])},
            {t["key"]: t["value"] for t in data.get("tags", [])})


# -- pure pieces ---------------------------------------------------------------------------------

def _results(overall, aspects, baseline_fp="b" * 64, ci=None, n_prompts=64, candidate_fp="d" * 64):
    return {"baseline": {"path": "/base", "fingerprint": baseline_fp},
            "candidate": {"path": "/cand", "fingerprint": candidate_fp},
            "prompts": {"n_prompts": n_prompts},
            "overall": {"win_rate": overall, "lc_win_rate": overall,
                        "win_rate_ci": ci if ci is not None else [overall - 0.02, overall + 0.02]},
            "aspects": {a: {"win_rate": v, "lc_win_rate": v} for a, v in aspects.items()}}


def test_gate_decision_cases():
    gate = GateConfig(min_win_rate=0.55, max_aspect_regression=0.05, min_prompts=32)
    ok, reason = gate_decision(_results(0.6, {"a": 0.7, "b": 0.5}), gate, None)
    assert ok and "no champion yet" in reason
    ok, reason = gate_decision(_results(0.6, {"a": 0.8, "b": 0.44}), gate, {"version": "1", "fingerprint": "b" * 64})
    assert not ok and "'b'" in reason and "0.440 < 0.450" in reason
    ok, reason = gate_decision(_results(0.5, {"a": 0.5}), gate, None)
    assert not ok and "not above min_win_rate 0.550" in reason
    # evaluated against something other than the champion: no promotion
    ok, reason = gate_decision(_results(0.9, {"a": 0.9}), gate, {"version": "3", "fingerprint": "c" * 64})
    assert not ok and "current champion is version 3" in reason and "changed since the evaluation" in reason
    # a champion without a weight fingerprint cannot be checked: no promotion
    ok, reason = gate_decision(_results(0.9, {"a": 0.9}), gate, {"version": "3", "fingerprint": None})
    assert not ok and "no weight fingerprint" in reason


def test_gate_needs_evidence_a_tie_never_promotes():
    gate = GateConfig()  # the defaults: min_win_rate 0.5, min_prompts 32
    # an exact tie (every preference 0.5): the interval is [0.5, 0.5], its low end is not above 0.5
    ok, reason = gate_decision(_results(0.5, {"a": 0.5, "b": 0.5}, ci=[0.5, 0.5]), gate, None)
    assert not ok and "CI low 0.500" in reason
    # a point estimate above the bar whose interval reaches below it: no promotion
    ok, reason = gate_decision(_results(0.58, {"a": 0.6, "b": 0.56}, ci=[0.47, 0.69]), gate, None)
    assert not ok and "CI low 0.470" in reason
    ok, _ = gate_decision(_results(0.58, {"a": 0.6, "b": 0.56}, ci=[0.51, 0.65]), gate, None)
    assert ok
    # too few prompts, however good the figures
    ok, reason = gate_decision(_results(0.9, {"a": 0.9}, ci=[0.85, 0.95], n_prompts=8), gate, None)
    assert not ok and "8 evaluation prompts < min_prompts 32" in reason
    # the candidate is the baseline (same weights)
    ok, reason = gate_decision(_results(0.9, {"a": 0.9}, candidate_fp="b" * 64), gate, None)
    assert not ok and "unchanged policy" in reason
    # no interval at all (results from elsewhere): no promotion
    results = _results(0.9, {"a": 0.9})
    results["overall"]["win_rate_ci"] = None
    ok, reason = gate_decision(results, gate, None)
    assert not ok and "no confidence interval" in reason


def test_flatten_gives_stable_param_names():
    flat = flatten({"n": 3, "models": {"a@b": ["x"]}, "none": None}, "evaluate")
    assert flat == {"evaluate.n": "3", "evaluate.models.a_b": '["x"]', "evaluate.none": "None"}


# -- against the server --------------------------------------------------------------------------

@pytest.mark.integration
def test_parent_run_is_resumed_and_stages_nest(server, tmp_path, created_at):
    from fgpo_tasks.contract import frame, write_pairs
    from fgpo_tasks.synthetic import SyntheticConfig, generate

    pairs = tmp_path / "pairs"
    manifest = write_pairs(frame(generate(SyntheticConfig(n_pairs=12))), pairs, stage="ingest",
                           config=None, created_at=created_at)
    first = Tracker("run-resume", FAST, tracking_uri=server.uri)
    with first.stage("select") as run:
        run.log_config({"budget": 0.3, "strategy": "pd"})
        run.log_dataset(pairs, context="training")
        curve = run.metrics_callback("dpo")
        for step in range(3):
            curve(step, {"loss": 1.0 - 0.1 * step})
    again = Tracker("run-resume", FAST, tracking_uri=server.uri)
    assert again.parent_run_id == first.parent_run_id
    assert again.child_run("select") == run.run_id

    got = server.rest("runs/get", run_id=run.run_id)["run"]
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    assert tags["mlflow.parentRunId"] == first.parent_run_id and got["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in got["data"]["params"]}
    assert params == {"select.budget": "0.3", "select.strategy": "pd"}
    (dataset,) = got["inputs"]["dataset_inputs"]
    assert dataset["dataset"]["digest"] == manifest["fingerprint"][:36]
    history = server.rest("metrics/get-history", run_id=run.run_id, metric_key="dpo.loss")["metrics"]
    assert [(m["step"], round(m["value"], 6)) for m in history] == [(0, 1.0), (1, 0.9), (2, 0.8)]


@pytest.mark.integration
def test_evaluate_register_gate_and_idempotence(server, policies, tmp_path, created_at):
    # 1. 'good' against the reference model, no champion yet: promoted.
    ev1 = evaluate(policies["good"], policies["ref"], tmp_path / "ev1", created_at)
    tracker = Tracker("run-a", FAST, tracking_uri=server.uri)
    log_evaluation(tracker, ev1)
    first = register_candidate(policies["good"], ev1, tracking_uri=server.uri, model_name=MODEL,
                               run_key="run-a", gate=GATE, tags={"strategy": "pd", "budget": 0.3},
                               tracking=FAST)
    assert first["promoted"] and first["created"]
    assert alias_version(server, CHAMPION) == alias_version(server, CHALLENGER) == first["version"]
    (mv,) = versions(server)
    mv_tags = {t["key"]: t["value"] for t in mv["tags"]}
    assert mv_tags["fgpo.run_key"] == "run-a" and mv_tags["fgpo.strategy"] == "pd"
    assert mv_tags["fgpo.budget"] == "0.3" and mv_tags["fgpo.gate.passed"] == "true"
    assert {"fgpo.data_fingerprint", "fgpo.code_version"} <= set(mv_tags)
    metrics, _, tags = run_data(server, first["run_id"])
    assert metrics["eval.conciseness.win_rate"] == 1.0 and metrics["eval.overall.win_rate"] == 0.75
    assert "eval.conciseness.lc_win_rate" in metrics and tags["fgpo.gate.passed"] == "true"
    eval_run = tracker.child_run("evaluate")
    _, eval_params, _ = run_data(server, eval_run)
    assert eval_params["evaluate.n_prompts"] == "4"
    arts = server.rest("artifacts/list", run_id=eval_run, path="evaluation/plots")
    assert {f["path"] for f in arts["files"]} == {"evaluation/plots/correctness.png",
                                                  "evaluation/plots/conciseness.png"}
    import mlflow

    mlflow.set_tracking_uri(server.uri)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@{CHAMPION}")
    (answer,) = served.predict(["Tell me about cats."], params={"max_new_tokens": 4})
    assert isinstance(answer, str) and not answer.startswith("Tell me about cats.")  # the answer only

    # 2. 'bad' against the champion: loses conciseness, gets only challenger; the run says why.
    ev2 = evaluate(policies["bad"], policies["good"], tmp_path / "ev2", created_at)
    second = register_candidate(policies["bad"], ev2, tracking_uri=server.uri, model_name=MODEL,
                                run_key="run-b", gate=GATE, tags={"strategy": "random", "budget": 0.3},
                                tracking=FAST)
    assert not second["promoted"] and "conciseness" in second["reason"]
    assert alias_version(server, CHAMPION) == first["version"]
    assert alias_version(server, CHALLENGER) == second["version"] != first["version"]
    _, _, tags = run_data(server, second["run_id"])
    assert tags["fgpo.gate.passed"] == "false" and "conciseness" in tags["fgpo.gate.reason"]
    register_run = Tracker("run-b", FAST, tracking_uri=server.uri).child_run("register")
    arts = server.rest("artifacts/list", run_id=register_run)
    assert "gate.json" in {f["path"] for f in arts["files"]}
    metrics, params, _ = run_data(server, register_run)
    assert metrics["register.promoted"] == 0.0 and params["register.min_win_rate"] == "0.55"
    assert any(k.startswith("system/cpu") for k in metrics)  # system metrics of the stage

    # 3. registering run-b again creates nothing new and changes no alias.
    again = register_candidate(policies["bad"], ev2, tracking_uri=server.uri, model_name=MODEL,
                               run_key="run-b", gate=GATE, tracking=FAST)
    assert again["version"] == second["version"] and not again["created"] and not again["promoted"]
    assert len(versions(server)) == 2
    assert alias_version(server, CHAMPION) == first["version"]

    # 4. evaluated against the reference, not the champion: the gate refuses, whatever the figures.
    ev3 = evaluate(policies["good"], policies["ref"], tmp_path / "ev3", created_at)
    third = register_candidate(policies["good"], ev3, tracking_uri=server.uri, model_name=MODEL,
                               run_key="run-c", gate=GATE, tracking=FAST)
    assert not third["promoted"] and "evaluate against the champion" in third["reason"]


@pytest.mark.integration
def test_failures_leave_nothing_half_registered(server, policies, tmp_path, created_at, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ev = evaluate(policies["bad"], policies["good"], tmp_path / "ev", created_at)
    n_before = len(versions(server))

    # The server dies: a readable error naming the tracking URI.
    server.stop()
    try:
        with pytest.raises(FgpoError) as e:
            register_candidate(policies["bad"], ev, tracking_uri=server.uri, model_name=MODEL,
                               run_key="run-down", gate=GATE, tracking=FAST)
        assert server.uri in str(e.value) and "unreachable" in str(e.value)
    finally:
        server.start()

    # Back up, but setting an alias fails after the version was created: error, then a retry
    # finishes the same version (no second one) and sets the aliases.
    def broken(*args, **kwargs):
        raise MlflowException("simulated outage", error_code="TEMPORARILY_UNAVAILABLE")
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(FgpoError, match=server.uri):
        register_candidate(policies["bad"], ev, tracking_uri=server.uri, model_name=MODEL,
                           run_key="run-down", gate=GATE, tracking=FAST)
    monkeypatch.undo()
    half = [v for v in versions(server) if {"key": "fgpo.run_key", "value": "run-down"} in v.get("tags", [])]
    assert len(half) == 1 and "fgpo.gate.passed" not in {t["key"] for t in half[0]["tags"]}

    done = register_candidate(policies["bad"], ev, tracking_uri=server.uri, model_name=MODEL,
                              run_key="run-down", gate=GATE, tracking=FAST)
    assert done["version"] == half[0]["version"] and len(versions(server)) == n_before + 1
    assert alias_version(server, CHALLENGER) == done["version"]
    tags = {t["key"]: t["value"] for t in server.rest("model-versions/get", name=MODEL,
                                                      version=done["version"])["model_version"]["tags"]}
    assert tags["fgpo.gate.passed"] == "false"


@pytest.mark.integration
def test_register_cli_and_bad_uri(server, policies, tmp_path, created_at, capsys):
    from fgpo_tasks.cli import main

    ev = evaluate(policies["ref"], policies["ref"], tmp_path / "ev", created_at)
    cfg = tmp_path / "reg.yaml"
    cfg.write_text("register:\n  model_name: cli-model\n  min_win_rate: 0.5\n  min_prompts: 4\n")
    args = ["register", "--model", str(policies["ref"]), "--eval", str(ev), "--run-key", "cli-run",
            "--config", str(cfg), "--tracking-uri", server.uri, "--experiment", "fgpo-tests",
            "--strategy", "all", "--budget", "1.0"]
    assert main(args) == 0
    answer = server.rest("registered-models/alias", name="cli-model", alias=CHAMPION)
    # the reference against itself: every prompt a tie, so a version (challenger), never a champion
    assert answer.get("_status") == 400
    assert server.rest("registered-models/alias", name="cli-model", alias=CHALLENGER)["model_version"]["version"] == "1"
    # nothing listens there: exit code 2, one line naming the URI
    dead = ["register", "--model", str(policies["ref"]), "--eval", str(ev), "--run-key", "cli-run",
            "--tracking-uri", "http://127.0.0.1:9", "--retries", "0"]
    capsys.readouterr()
    assert main(dead) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "http://127.0.0.1:9" in err[0]


def _copy_with_noise(src, dst, scale, *, embeddings_only=False):
    """A copy of policy ``src`` with Gaussian noise of ``scale`` added to its weights (all, or the
    input embeddings only): other weights, the same greedy answers for a tiny ``scale``."""
    import shutil

    from transformers import AutoModelForCausalLM

    if not dst.exists():
        shutil.copytree(src, dst)
        model = AutoModelForCausalLM.from_pretrained(dst)
        torch.manual_seed(7)
        with torch.no_grad():
            params = [model.model.embed_tokens.weight] if embeddings_only else list(model.parameters())
            for p in params:
                p.add_(scale * torch.randn_like(p))
        model.save_pretrained(dst)
    return dst


@pytest.mark.integration
def test_an_unchanged_policy_never_becomes_champion(server, policies, tmp_path, created_at):
    """The reference itself, and the reference after a DPO-sized step of lr 1e-12 (other weights,
    the same answers): every prompt a tie, so a challenger, never a champion, with no champion to
    beat and the most lenient bar (min_win_rate 0)."""
    lenient = GateConfig(min_win_rate=0.0, max_aspect_regression=0.5, min_prompts=4)
    name = "fgpo-test-unchanged"
    nudged = _copy_with_noise(policies["ref"], tmp_path / "nudged", 1e-12)
    for i, candidate in enumerate((policies["ref"], nudged)):
        ev = evaluate(candidate, policies["ref"], tmp_path / f"ev{i}", created_at)
        got = register_candidate(candidate, ev, tracking_uri=server.uri, model_name=name, run_key=f"same-{i}",
                                 gate=lenient, tracking=FAST)
        assert not got["promoted"] and got["aliases"] == [CHALLENGER]
        assert ("unchanged policy" in got["reason"]) if i == 0 else ("CI low 0.500" in got["reason"])
    assert server.rest("registered-models/alias", name=name, alias=CHAMPION).get("_status") == 400


RACE = r"""
import json, sys, time
sys.path.insert(0, {tests!r})
import fgpo_tasks.registry as registry
from fgpo_tasks.registry import GateConfig, register_candidate
from fgpo_tasks.tracking import TrackingConfig

read = registry._champion
def slow_read(*a, **k):  # widen the window between reading the champion and moving the alias
    found = read(*a, **k)
    time.sleep(2.0)
    return found
registry._champion = slow_read
model, ev, key, uri, name, go = sys.argv[1:7]
while not __import__("os").path.exists(go):  # both start the registration at the same moment
    time.sleep(0.05)
got = register_candidate(model, ev, tracking_uri=uri, model_name=name, run_key=key,
                         gate=GateConfig(min_win_rate=0.55, min_prompts=4),
                         tracking=TrackingConfig(experiment_name="fgpo-tests", retries=0, http_timeout_s=10,
                                                 system_metrics=False))
print("RESULT " + json.dumps(got))
"""


@pytest.mark.integration
def test_two_concurrent_registrations_never_both_promote(server, policies, tmp_path, created_at):
    """Two processes register two gate-passing candidates (both evaluated with no champion yet)
    at the same moment, each pausing 2 s between reading the champion and moving the alias:
    exactly one becomes champion; the other stays challenger and says the champion changed. A
    rerun of the first registration then reports the registry as it is now."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    name = "fgpo-test-race"
    twin = _copy_with_noise(policies["good"], tmp_path / "good-twin", 0.1, embeddings_only=True)
    evs = [evaluate(m, policies["ref"], tmp_path / f"ev-{i}", created_at) for i, m in enumerate((policies["good"], twin))]
    go = tmp_path / "go"
    script = RACE.format(tests=str(Path(__file__).parent))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(m), str(ev), f"race-{i}", server.uri, name, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, (m, ev) in enumerate(zip((policies["good"], twin), evs))]
    time.sleep(3.0)  # both interpreters up and waiting
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    promoted = [r for r in results if r["promoted"]]
    assert len(promoted) == 1, results
    (winner,) = promoted
    (loser,) = [r for r in results if not r["promoted"]]
    assert "champion changed since the evaluation" in loser["reason"], loser["reason"]
    assert server.rest("registered-models/alias", name=name, alias=CHAMPION)["model_version"]["version"] == winner["version"]
    assert server.rest("registered-models/get", name=name + ".promotion-lock").get("_status") == 404  # released

    # The champion moves on (by hand here, as a user rolling back would); a rerun of the winner's
    # registration creates nothing, moves no alias, and reports the registry as it is now.
    from mlflow import MlflowClient

    MlflowClient(server.uri).set_registered_model_alias(name, CHAMPION, loser["version"])
    key = f"race-{results.index(winner)}"
    again = register_candidate(policies["good"] if key == "race-0" else twin, evs[results.index(winner)],
                               tracking_uri=server.uri, model_name=name, run_key=key, gate=GATE, tracking=FAST)
    assert not again["created"] and again["version"] == winner["version"]
    assert not again["promoted"] and again["gate_passed"] and CHAMPION not in again["aliases"]
    assert again["champion_version"] == loser["version"] and f"version {loser['version']}" in again["reason"]


@pytest.mark.integration
def test_an_mlflow_error_looking_up_the_champion_fails_the_step(tmp_path):
    """Nothing listens: the champion lookup raises a retryable error, no fallback to the reference."""
    from fgpo_tasks.registry import champion_model_dir, registered_for_key
    from fgpo_tasks.tracking import TrackingUnavailable

    dead = TrackingConfig(retries=0, http_timeout_s=5)
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        champion_model_dir("http://127.0.0.1:9", MODEL, dead)
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9"):
        registered_for_key("http://127.0.0.1:9", MODEL, "somekey", dead)
    # a store with no such model: simply no champion
    assert champion_model_dir(f"sqlite:///{tmp_path / 'empty.db'}", "nothing-here") is None


def _rest_post(server, endpoint: str, body: dict) -> dict:
    import json
    import urllib.request

    req = urllib.request.Request(f"{server.uri}/api/2.0/mlflow/{endpoint}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.integration
def test_parent_runs_are_named_and_carry_the_headline_knobs_as_params(server):
    """What MLflow's compare view shows: two pipeline runs with different strategies, each with a
    readable name and `strategy` (and the other knobs) as params, in a classic experiment."""
    from fgpo_tasks import pipeline

    for strategy, budget in (("pd", 0.3), ("random", 0.5)):
        cfg = pipeline.pipeline_config({"profile": "tiny", "strategy": strategy, "budget": budget,
                                        "tracking_uri": server.uri, "experiment_name": "fgpo-compare"})
        pipeline._tracker(cfg, f"compare-{strategy}")
        pipeline._tracker(cfg, f"compare-{strategy}")  # a later step: same run, params logged once
    exp = server.rest("experiments/get-by-name", experiment_name="fgpo-compare")["experiment"]
    assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
    runs = _rest_post(server, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    by_strategy = {}
    for run in runs:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        by_strategy[params["strategy"]] = (run["info"]["run_name"], params)
    assert set(by_strategy) == {"pd", "random"}
    name, params = by_strategy["random"]
    assert name.startswith("tiny random budget 0.5 20")
    assert params["budget"] == "0.5" and params["profile"] == "tiny" and params["policy"] == "tiny-llama"
    assert params["proxy_backbone"] == "tiny-bert" and params["beta"] == "0.1" and params["epochs"] == "1"


def test_evaluation_judges_the_data_aspects_and_no_others():
    from fgpo_tasks.errors import ConfigError
    from fgpo_tasks.judging import judged_models

    # the default rule scorers, narrowed to the toy aspects the data has
    assert judged_models(None, ["correctness", "conciseness"], where="p") == {
        "conciseness": ["rule:conciseness"], "correctness": ["rule:correctness"]}
    # HelpSteer aspects judged by the toy world's scorers: refused, naming both
    with pytest.raises(ConfigError) as e:
        judged_models(None, ["helpfulness", "correctness"], where="profile 'demo' [evaluate]")
    assert "profile 'demo' [evaluate]" in str(e.value) and "['helpfulness']" in str(e.value)
    with pytest.raises(ConfigError) as e:
        judged_models({"politeness": "rule:politeness", "correctness": ["x"]}, ["correctness", "verbosity"], where="p")
    assert "['politeness']" in str(e.value) and "['verbosity']" in str(e.value)
    assert judged_models({"a": "m1", "b": ["m2"]}, ["b", "a"], where="p") == {"a": ["m1"], "b": ["m2"]}


def test_a_profile_that_cannot_judge_the_data_fails_before_training():
    """The demo profile (toy-world rule scorers) on HelpSteer's aspects: refused right after
    validation; a profile with a holdout split trains judges on the data's aspects: accepted."""
    from fgpo_tasks.errors import ConfigError
    from fgpo_tasks.judging import check_judges
    from fgpo_tasks.pipeline import pipeline_config

    helpsteer = ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]
    with pytest.raises(ConfigError, match="profile 'demo'"):
        check_judges(pipeline_config({"profile": "demo"}), helpsteer)
    check_judges(pipeline_config({"profile": "helpsteer2"}), helpsteer)
    check_judges(pipeline_config({"profile": "demo"}), ["correctness", "politeness", "detail", "conciseness"])


def test_an_adapter_only_champion_is_the_baseline(tmp_path):
    """A LoRA champion (adapter_config.json and a base, no config.json) is found as the baseline;
    a champion whose folder holds no model is not (the evaluation then runs against the reference)."""
    import json

    from mlflow import MlflowClient

    from fgpo_tasks.registry import CHAMPION, champion_model_dir

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-llama"}))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("lora-policy")
    mv = client.create_model_version("lora-policy", source=str(adapter), tags={"fgpo.model_dir": str(adapter)})
    client.set_registered_model_alias("lora-policy", CHAMPION, mv.version)
    assert champion_model_dir(uri, "lora-policy") == str(adapter)

    client.set_model_version_tag("lora-policy", mv.version, "fgpo.model_dir", str(tmp_path / "gone"))
    assert champion_model_dir(uri, "lora-policy") is None
