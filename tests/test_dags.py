"""The Airflow wiring: DAGs parse cleanly and cheaply, the graph is the pipeline, the plugin's
link / callbacks / settings do their job. Stage code is stubbed here (tests/airflow_harness.py);
the end-to-end run on real stages is elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HARNESS = REPO / "tests" / "airflow_harness.py"
GPU_TASKS = {"train_reward_model", "score_shard", "train_dpo", "evaluate"}
STEP_TASKS = {"ingest", "validate", "train_reward_model", "score_shard", "score_pd", "select", "train_dpo",
              "evaluate", "register"}
EDGES = {  # task -> its upstream tasks
    "ingest": [], "validate": ["ingest"], "aspects": ["validate"],
    "train_reward_model": ["aspects", "validate"], "score_plan": ["train_reward_model", "validate"],
    "score_shard": ["score_plan", "train_reward_model", "validate"],
    "score_pd": ["score_shard", "train_reward_model", "validate"],
    "select": ["score_pd", "validate"], "train_dpo": ["score_pd", "select"],
    "evaluate": ["train_dpo", "train_reward_model", "validate"],
    "register": ["evaluate", "train_dpo"],
}

sys.path.insert(0, str(REPO / "plugins"))  # as Airflow does for its plugins folder


def airflow_env(home: Path, db_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
    })
    return env


def harness(command: str, env: dict[str, str], timeout: int = 150) -> dict:
    proc = subprocess.run([sys.executable, str(HARNESS), command], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("HARNESS-REPORT:")]
    assert proc.returncode == 0 and lines, f"harness {command} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(lines[-1].split(":", 1)[1])
    report["log"] = proc.stdout + proc.stderr
    return report


@pytest.fixture(scope="module")
def parsed(tmp_path_factory) -> dict:
    # A PostgreSQL URL on a closed port: any database connection during parsing would show up.
    home = tmp_path_factory.mktemp("airflow-parse")
    return harness("parse", airflow_env(home, "postgresql+psycopg2://nobody@127.0.0.1:9/nodb"))


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-run")
    (home / "landing").mkdir()
    env = airflow_env(home, f"sqlite:///{home / 'airflow.db'}")
    env.update({
        "AIRFLOW_CONN_FGPO_MLFLOW": "http://127.0.0.1:9",  # closed port: the callback's lookup fails fast
        "AIRFLOW_VAR_FGPO_MLFLOW_UI_URL": "http://mlflow.example:5000",
        "AIRFLOW_VAR_FGPO_STORAGE_ROOT": str(home / "storage"),
        "AIRFLOW_VAR_FGPO_LANDING_DIR": str(home / "landing"),
        "AIRFLOW_VAR_FGPO_LANDING_FORMAT": "trl",
    })
    report = harness("run", env, timeout=300)  # two retrain runs (one with 6 mapped score shards) and 3 ingests
    report["home"] = str(home)
    return report


# ------------------------------------------------------------------------------ parsing

def test_every_dag_imports_without_error(parsed):
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == {"fgpo_retrain", "fgpo_ingest", "fgpo_experiment"}
    assert all(d["doc"] for d in parsed["dags"].values())


def test_parsing_opens_no_connection_and_imports_nothing_heavy(parsed):
    assert parsed["connections"] == []
    assert parsed["heavy_modules"] == []


def test_fgpo_tasks_never_imports_airflow():
    code = ("import importlib, pkgutil, sys, fgpo_tasks\n"
            "names = [m.name for m in pkgutil.walk_packages(fgpo_tasks.__path__, 'fgpo_tasks.')]\n"
            "[importlib.import_module(n) for n in names]\n"
            "print(len(names), sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, airflow_modules = proc.stdout.strip().split(" ", 1)
    assert int(count) >= 10 and airflow_modules == "[]"


def test_retrain_graph_is_the_pipeline(parsed):
    dag = parsed["dags"]["fgpo_retrain"]
    assert {t: info["upstream"] for t, info in dag["tasks"].items()} == EDGES
    assert dag["schedule"] == ["fgpo_annotation_batches"]
    assert dag["max_active_runs"] == 1
    assert dag["tasks"]["register"]["outlets"] == ["fgpo_registered_model"]


def test_reward_models_are_mapped_over_the_aspects(parsed):
    tasks = parsed["dags"]["fgpo_retrain"]["tasks"]
    mapped = [t for t, info in tasks.items() if info["mapped"]]
    assert mapped == ["train_reward_model", "score_shard"]
    assert tasks["train_reward_model"]["expand"] == {"aspect": "aspects"}
    assert tasks["train_reward_model"]["partial"] == ["validated"]
    # scoring: one task per (shard, proxy) the plan returns, then the reduce on a CPU worker
    assert tasks["score_shard"]["expand_kwargs"] == "score_plan"
    assert tasks["score_shard"]["partial"] == ["reward_models", "validated"]


def test_scoring_maps_one_task_per_shard_and_proxy(ran):
    run = ran["ok"]
    shards = {k: v for k, v in run["task_states"].items() if k.startswith("score_shard")}
    # 12 pairs in shards of 8 (8, 4) x 3 proxies
    assert shards == {f"score_shard[{i}]": ["success", 1] for i in range(2 * 3)}
    units = sorted((c["inputs"]["model"], c["inputs"]["shard"]) for c in run["calls"] if c["step"] == "score_shard")
    assert units == sorted((f"/store/rm/a{a}", s) for a in (1, 2, 3) for s in range(2))
    assert all(c["inputs"]["data"] == "/store/validate" for c in run["calls"] if c["step"] == "score_shard")
    assert run["map_labels"]["score_shard[0]"] == "a1 shard 0"
    steps = [c["step"] for c in run["calls"]]
    assert steps.index("score") > max(i for i, s in enumerate(steps) if s == "score_shard")  # the reduce


def test_gpu_pool_retries_callbacks_and_links(parsed):
    tasks = parsed["dags"]["fgpo_retrain"]["tasks"]
    for task_id, info in tasks.items():
        in_gpu = task_id in GPU_TASKS
        assert (info["pool"], info["queue"]) == (("fgpo_gpu", "gpu") if in_gpu else ("default_pool", "default")), task_id
        assert info["retries"] >= 1 and info["retry_exponential_backoff"] > 1, task_id
        assert info["retry_policy"] == "ExceptionRetryPolicy", task_id
        assert info["on_failure_callback"] == ["on_stage_failure"], task_id
        assert info["on_retry_callback"] == ["on_stage_retry"], task_id
        assert info["links"] == (["MLflow run"] if task_id in STEP_TASKS else []), task_id
        assert info["operator"] == ("FgpoStepOperator" if task_id in STEP_TASKS else "_PythonDecoratedOperator")
    plugin = parsed["plugins"]["fgpo_airflow"]
    assert plugin["source"].endswith("fgpo_airflow_plugin.py")
    assert any("MlflowRunLink" in link for link in plugin["operator_extra_links"])
    assert parsed["plugin_import_errors"] == {} and parsed["stray_plugin_modules"] == []


def test_params_are_typed_documented_and_accepted_by_the_pipeline(parsed):
    from fgpo_tasks import pipeline
    from fgpo_tasks.ingest.config import FORMATS

    params = parsed["dags"]["fgpo_retrain"]["params"]
    for name, p in params.items():
        assert p["description"] and len(p["description"]) > 20, name
        assert p["schema"].get("type") and p["schema"].get("title"), name
    fields = {f.name for f in pipeline.PipelineConfig.__dataclass_fields__.values()}
    assert set(params) <= fields
    assert params["strategy"]["schema"]["enum"] == [None, *pipeline.STRATEGIES]
    from fgpo_tasks.confidence import ON_WEAK
    assert params["on_weak_proxies"]["schema"]["enum"] == [None, *ON_WEAK] and pipeline.ON_WEAK == ON_WEAK
    assert params["format"]["schema"]["items"]["enum"] == list(FORMATS)
    assert sorted(params["profile"]["schema"]["enum"]) == sorted(
        p.stem for p in (REPO / "configs" / "pipeline").glob("*.yaml"))
    assert params["budget"]["schema"]["exclusiveMinimum"] == 0 and params["budget"]["schema"]["maximum"] == 1
    # The form's defaults make a valid config, and a form value overrides the profile.
    defaults = {k: p["default"] for k, p in params.items()}
    assert pipeline.pipeline_config(defaults).profile == "demo"
    cfg = pipeline.pipeline_config({**defaults, "strategy": "random", "budget": 0.25, "source": ["a.jsonl"]})
    assert (cfg.strategy, cfg.budget, cfg.source) == ("random", 0.25, ["a.jsonl"])


def test_experiment_graph_fans_out_pools_then_arms(parsed):
    dag = parsed["dags"]["fgpo_experiment"]
    tasks = dag["tasks"]
    assert {t: info["upstream"] for t, info in tasks.items()} == {
        "plan": [], "pool_list": ["plan"], "arm_list": ["plan"], "prepare": ["plan"],
        "prepare_pool": ["pool_list", "prepare"], "prepare_eval": ["prepare_pool"],
        "run_arm": ["arm_list", "prepare_eval"], "report": ["run_arm"]}
    assert {t for t, info in tasks.items() if info["mapped"]} == {"prepare_pool", "run_arm"}
    assert tasks["prepare_pool"]["expand"] == {"unit": "pool_list"}
    assert tasks["run_arm"]["expand"] == {"unit": "arm_list"} and tasks["run_arm"]["partial"] == ["evaluation"]
    for t in ("prepare", "prepare_pool", "prepare_eval", "run_arm"):  # the heavy units
        assert (tasks[t]["pool"], tasks[t]["queue"], tasks[t]["links"]) == ("fgpo_gpu", "gpu", ["MLflow run"]), t
        assert tasks[t]["retry_policy"] == "ExceptionRetryPolicy" and tasks[t]["on_failure_callback"], t
    assert dag["schedule"] == "None" and dag["max_active_runs"] == 1
    assert dag["params"]["config"]["default"] == "configs/experiments/synthetic.yaml"
    assert (REPO / dag["params"]["config"]["default"]).is_file()


# ------------------------------------------------------------------------------ running (stub stages)

def test_retrain_run_passes_uris_keys_and_settings_along(ran):
    run = ran["ok"]
    assert run["state"] == "success"
    calls = run["calls"]
    steps = [c["step"] for c in calls]
    assert steps == ["ingest", "validate", "reward_model", "reward_model", "reward_model", "score_plan"] + [
        "score_shard"] * 6 + ["score", "select", "train_dpo", "evaluate", "register"]
    # One reward-model task instance per aspect validate returned.
    assert sorted(c["inputs"]["aspect"] for c in calls if c["step"] == "reward_model") == ["a1", "a2", "a3"]
    assert {k: v for k, v in run["task_states"].items() if k.startswith("train_reward_model")} == {
        f"train_reward_model[{i}]": ["success", 1] for i in range(3)}
    # the UI labels each mapped task instance by its aspect, not 0, 1, 2
    assert {k: v for k, v in run["map_labels"].items() if k.startswith("train_reward_model")} == {
        f"train_reward_model[{i}]": f"a{i + 1}" for i in range(3)}
    by_step = {c["step"]: c for c in calls}
    assert by_step["validate"]["inputs"] == {"data": "/store/ingest"}
    assert [m["model"] for m in by_step["score"]["inputs"]["reward_models"]] == [f"/store/rm/a{i}" for i in (1, 2, 3)]
    assert by_step["select"]["inputs"] == {"data": "/store/validate", "scores": "/store/scores"}
    assert by_step["train_dpo"]["inputs"] == {"data": "/store/select", "scores": "/store/scores"}
    assert by_step["register"]["inputs"]["model"] == "/store/dpo"
    assert by_step["register"]["inputs"]["evaluation"]["win_rate"] == 0.6
    for c in calls:  # run key = DAG run id; timestamp = the run's logical date, the same for every step
        if c["step"] != "score_plan":  # the plan reads the pool's size only
            assert (c["run_key"], c["created_at"]) == (run["run_id"], run["logical_date"])
        assert c["params"]["budget"] == 0.5 and c["params"]["strategy"] == "random"  # trigger conf
        assert c["params"]["tracking_uri"] == "http://127.0.0.1:9"  # connection fgpo_mlflow
        assert c["params"]["storage_root"] == str(Path(ran["home"]) / "storage")  # Variable


def test_each_step_links_to_its_mlflow_run(ran):
    links = ran["ok"]["links"]
    assert links["train_reward_model[1]"] == "http://mlflow.example:5000/#/runs/reward_model-a2"
    assert links["register"] == "http://mlflow.example:5000/#/runs/register-run"
    assert len([url for url in links.values() if url]) == 10  # every step task that logs an MLflow run
    # a score shard logs no run of its own (the reduce, score_pd, logs the stage): an empty link
    assert {k: v for k, v in links.items() if k.startswith("score_shard")} == {f"score_shard[{i}]": "" for i in range(6)}


def test_register_emits_the_registered_model_event(ran):
    assert ran["ok"]["events"] == [{"model_name": "fgpo-policy", "version": "3", "aliases": ["champion"],
                                    "promoted": True, "champion_version": "3", "gate_passed": True,
                                    "reason": "gate passed"}]


def test_user_error_fails_at_once_and_the_callback_names_the_stage(ran):
    run = ran["user_error"]
    assert run["state"] == "failed"
    assert run["task_states"]["validate"] == ["failed", 1]  # no retry of a ConfigError
    assert run["task_states"]["register"][0] == "upstream_failed"
    assert run["events"] == []
    assert f"fgpo stage validate failed (dag run {run['run_id']}, try 1, no retries left)" in ran["log"]
    assert "could not look up the MLflow runs" in ran["log"]  # server down: reported, not raised


def test_ingest_emits_an_event_only_for_new_batches(ran):
    first, idle, third = ran["ingest"]
    landing = Path(ran["home"]) / "landing"
    b1, b2, b3 = (str(landing / f"batch-00{i}.jsonl") for i in (1, 2, 3))
    assert first["task_state"] == "success"
    assert first["events"] == [{"landing_dir": str(landing), "format": "trl", "batches": [b1, b2], "new": [b1, b2]}]
    assert idle["task_state"] == "skipped" and idle["events"] == []
    assert third["events"][0]["batches"] == [b1, b2, b3] and third["events"][0]["new"] == [b3]


# ------------------------------------------------------------------------------ plugin units

def _event(extra: dict, minute: int):
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from fgpo_airflow.assets import ANNOTATION_BATCHES

    return AssetEventDagRunReferenceResult(
        asset={"name": ANNOTATION_BATCHES.name, "uri": ANNOTATION_BATCHES.uri, "extra": {}}, extra=extra,
        source_task_id="detect_batches", source_dag_id="fgpo_ingest", source_run_id=f"r{minute}",
        source_map_index=-1, source_aliases=[], timestamp=datetime(2026, 1, 1, 0, minute, tzinfo=timezone.utc))


def test_asset_triggered_run_trains_on_every_landed_batch(monkeypatch):
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor
    from fgpo_airflow import settings

    monkeypatch.setattr(settings, "tracking_uri", lambda: "http://mlflow:5000")
    monkeypatch.setattr(settings, "storage_root", lambda: None)
    variables = {"fgpo_retrain_profile": "tiny"}
    monkeypatch.setattr(settings, "_variable", variables.get)
    events = TriggeringAssetEventsAccessor.build([
        _event({"format": "trl", "batches": ["/l/b1.jsonl", "/l/b2.jsonl"], "new": ["/l/b2.jsonl"]}, 7),
        _event({"format": "trl", "batches": ["/l/b1.jsonl"], "new": ["/l/b1.jsonl"]}, 3),
    ])
    when = datetime(2026, 1, 1, 0, 8, tzinfo=timezone.utc)
    context = {"params": {"profile": "demo", "source": None, "budget": 0.4}, "run_id": "asset_triggered__x",
               "dag_run": type("DR", (), {"logical_date": None, "run_after": when})(),
               "triggering_asset_events": events}
    run = settings.step_run(context)
    assert run.params["source"] == ["/l/b1.jsonl", "/l/b2.jsonl"]  # the newest event: the union
    assert run.params["format"] == ["trl"] and run.params["budget"] == 0.4
    assert run.params["tracking_uri"] == "http://mlflow:5000" and "storage_root" not in run.params
    assert (run.run_key, run.created_at) == ("asset_triggered__x", when.isoformat())
    assert run.params["profile"] == "tiny"  # scheduled runs: the profile in Variable fgpo_retrain_profile
    manual = settings.step_run({**context, "triggering_asset_events": {}})
    assert manual.params["source"] is None and manual.params["profile"] == "demo"  # the form's
    variables.clear()
    assert settings.step_run(context).params["profile"] == "demo"  # no Variable: demo
    pinned = type("DR", (), {"logical_date": None, "run_after": when, "conf": {"profile": "helpsteer2"}})()
    context["params"]["profile"] = "helpsteer2"
    assert settings.step_run({**context, "dag_run": pinned}).params["profile"] == "helpsteer2"  # conf wins


def test_a_mistyped_trigger_key_is_named_with_the_known_ones():
    from fgpo_airflow.params import retrain_params
    from fgpo_airflow.settings import check_trigger_keys
    from fgpo_tasks.errors import ConfigError

    known = list(retrain_params())
    check_trigger_keys({"budget": 0.5, "tracking_uri": "http://x"}, known)  # fine
    with pytest.raises(ConfigError) as e:
        check_trigger_keys({"bugdet": 0.5}, known)
    message = str(e.value)
    assert "'bugdet' (did you mean 'budget'?)" in message and "known keys:" in message
    assert "'strategy'" in message and "profile YAML" not in message


def test_the_link_reads_plain_json_only():
    from fgpo_airflow.links import _url_from

    assert _url_from('"http://m:5000/#/runs/abc"') == "http://m:5000/#/runs/abc"
    assert _url_from('{"mlflow_run_url": "http://m:5000/#/runs/abc", "data": "/x"}') == "http://m:5000/#/runs/abc"
    assert _url_from({"mlflow_run_url": "http://m/#/runs/1"}) == "http://m/#/runs/1"
    assert _url_from('{"__classname__": "x"}') == "" and _url_from("javascript:alert(1)") == ""


def test_connection_tracking_uri():
    from airflow.sdk import Connection
    from fgpo_airflow.settings import connection_tracking_uri

    assert connection_tracking_uri(Connection.from_uri("http://mlflow:5000", conn_id="m")) == "http://mlflow:5000"
    assert connection_tracking_uri(Connection(conn_id="m", conn_type="https", host="ml.example.org",
                                              schema="tracking")) == "https://ml.example.org/tracking"
    assert connection_tracking_uri(Connection(conn_id="m", conn_type="generic",
                                              extra=json.dumps({"tracking_uri": "databricks"}))) == "databricks"


def test_retry_policy_fails_user_errors_and_retries_the_rest():
    from airflow.sdk.definitions.retry_policy import RetryAction
    from fgpo_airflow.retry import DEFAULT_RETRY_POLICY
    from fgpo_tasks.errors import ConfigError, InputError

    for error in (ConfigError("budget must be in (0, 1]"), InputError("bad row", file="a.jsonl", line=3)):
        assert DEFAULT_RETRY_POLICY.evaluate(error, 1, 3).action == RetryAction.FAIL
    assert DEFAULT_RETRY_POLICY.evaluate(ConnectionError("worker lost"), 1, 3).action == RetryAction.DEFAULT
    from fgpo_tasks.tracking import TrackingUnavailable  # an FgpoError, but MLflow may be back later

    assert DEFAULT_RETRY_POLICY.evaluate(TrackingUnavailable("MLflow down"), 1, 3).action == RetryAction.RETRY


# ------------------------------------------------------------------------------ fgpo_experiment (stub units)

@pytest.fixture(scope="module")
def ran_experiment(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow-experiment")
    env = airflow_env(home, f"sqlite:///{home / 'airflow.db'}")
    env.update({"AIRFLOW_CONN_FGPO_MLFLOW": "http://127.0.0.1:9",
                "AIRFLOW_VAR_FGPO_STORAGE_ROOT": str(home / "storage")})
    report = harness("run-experiment", env)
    report["home"] = str(home)
    return report


def test_experiment_runs_each_pool_once_then_every_arm(ran_experiment):
    run, calls = ran_experiment, ran_experiment["calls"]
    by_fn = {}
    for c in calls:
        by_fn.setdefault(c["fn"], []).append(c)
    assert sorted(tuple(c["inputs"]) for c in by_fn["prepare_pool"]) == [("c10", 0), ("c10", 1), ("c30", 0), ("c30", 1)]
    assert len(by_fn["run_arm"]) == 8 and len(by_fn["prepare"]) == len(by_fn["prepare_eval"]) == 1
    order = [c["fn"] for c in calls if c["fn"] != "load_experiment"]
    assert order.index("prepare_eval") > max(i for i, f in enumerate(order) if f == "prepare_pool")
    assert order.index("prepare_eval") < min(i for i, f in enumerate(order) if f == "run_arm")
    for c in calls[1:]:
        if c["fn"] != "load_experiment":
            assert (c["key"], c["created_at"]) == (run["run_id"], run["logical_date"])
    load = [c for c in calls if c["fn"] == "load_experiment"][0]
    assert load["path"] == str(REPO / "configs/experiments/synthetic.yaml")  # resolved inside the root
    assert load["overrides"]["seeds"] == [0, 1] and load["overrides"]["tracking_uri"] == "http://127.0.0.1:9"
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run["run_id"])
    assert load["overrides"]["out_dir"] == str(Path(run["home"]) / "storage" / "experiments" / safe)


def test_a_failed_arm_fails_alone_and_the_report_is_still_written(ran_experiment):
    states = ran_experiment["task_states"]
    arms = {k: v for k, v in states.items() if k.startswith("run_arm")}
    assert sorted(arms.values()) == ["failed"] + ["success"] * 7
    assert [c for c in ran_experiment["calls"] if c["fn"] == "report"]  # the table of the other 7
    assert states["report"] == "failed" and ran_experiment["state"] == "failed"  # and the run says so


def test_the_experiment_dag_reads_configs_only_from_the_configs_root(tmp_path, monkeypatch):
    from fgpo_airflow.settings import experiment_config_path
    from fgpo_tasks.errors import ConfigError

    root = REPO / "configs" / "experiments"
    assert experiment_config_path("configs/experiments/synthetic.yaml") == str(root / "synthetic.yaml")
    assert experiment_config_path("helpsteer2.yaml") == str(root / "helpsteer2.yaml")
    for bad in ("/etc/passwd", "configs/experiments/../pipeline/demo.yaml", "../../pyproject.toml",
                str(REPO / "configs" / "pipeline" / "tiny.yaml")):
        with pytest.raises(ConfigError, match="is not a YAML file in"):
            experiment_config_path(bad)
    with pytest.raises(ConfigError, match="no experiment config 'nope.yaml' in .*'synthetic.yaml'"):
        experiment_config_path("nope.yaml")
    (tmp_path / "mine.yaml").write_text("x: 1\n")
    monkeypatch.setenv("FGPO_EXPERIMENTS_DIR", str(tmp_path))
    assert experiment_config_path("mine.yaml") == str(tmp_path.resolve() / "mine.yaml")
    with pytest.raises(ConfigError):
        experiment_config_path("configs/experiments/synthetic.yaml")  # the repo's folder is not the root now
