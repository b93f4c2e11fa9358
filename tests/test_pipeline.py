"""The whole pipeline for real on the tiny profile: in-process steps, and the fgpo_retrain DAG
through `airflow dags test` with SQLite-backed Airflow and MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgpo_tasks import pipeline

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CREATED_AT = "2026-01-01T00:00:00+00:00"


def _params(tmp_path: Path) -> dict:
    return {"profile": "tiny", "storage_root": str(tmp_path / "storage"),
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def _versions(uri: str, name: str) -> list:
    from mlflow import MlflowClient
    return MlflowClient(uri).search_model_versions(f"name = '{name}'")


def _stage_files(storage: Path) -> dict[str, int]:
    return {str(p.relative_to(storage)): p.stat().st_mtime_ns for p in storage.glob("stages/*/*/stage.json")}


def _stage_key(storage: Path, run_key: str, step: str) -> str | None:
    rec = storage / "runs" / run_key / f"{step}.json"
    return json.loads(rec.read_text())["stages"][step.split(":")[0]] if rec.is_file() else None


def test_a_failed_step_retried_redoes_no_finished_stage_and_registers_once(tmp_path, monkeypatch):
    params = _params(tmp_path)
    storage = tmp_path / "storage"
    from fgpo_tasks import selection

    real_select = selection.run_select

    def broken(*a, **k):
        raise RuntimeError("worker lost")

    monkeypatch.setattr(selection, "run_select", broken)
    with pytest.raises(RuntimeError, match="worker lost"):
        pipeline.run_pipeline(params, "run-1", CREATED_AT)
    finished = _stage_files(storage)
    assert {"ingest", "validate", "score"} <= {Path(k).parts[1] for k in finished}
    assert not any(Path(k).parts[1] == "select" for k in finished)
    assert _stage_key(storage, "run-1", "score") and _stage_key(storage, "run-1", "select") is None

    monkeypatch.setattr(selection, "run_select", real_select)
    result = pipeline.run_pipeline(params, "run-1", CREATED_AT)
    after = _stage_files(storage)
    assert {k: after[k] for k in finished} == finished, "a finished stage was redone"
    reg = result["register"]
    assert reg["version"] == "1" and "challenger" in reg["aliases"]
    assert result["select"]["selected"] == round(0.3 * result["validate"]["rows_accepted"])
    # the selection confidence verdict is in the run: step result, score stage reports, MLflow
    from mlflow import MlflowClient

    from fgpo_tasks.confidence import VERDICTS
    verdict = result["select"]["selection_confidence"]
    assert verdict in VERDICTS and result["score"]["selection_confidence"] == verdict
    scores = Path(result["score"]["scores"])
    assert json.loads((scores / "selection_confidence.json").read_text())["verdict"] == verdict
    assert (scores / "reports" / "conflicts.html").is_file()
    client = MlflowClient(params["tracking_uri"])
    select_run = client.get_run(result["select"]["mlflow_run_id"])
    assert select_run.data.tags["selection_confidence"] == verdict
    assert "select.confidence.verdict_level" in select_run.data.metrics
    logged = {a.path for a in client.list_artifacts(result["score"]["mlflow_run_id"], "reports")}
    assert {"reports/conflicts.csv", "reports/conflicts.html"} <= logged
    parent = client.get_run(select_run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["selection_confidence"] == verdict
    assert parent.data.metrics["confidence.verdict_level"] == {"ok": 2, "weak": 1, "none": 0}[verdict]
    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "demo_summary.py"), "--profile", "tiny",
                              "--storage-root", str(storage), "--tracking-uri", params["tracking_uri"]],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert summary.returncode == 0, summary.stderr
    assert f"selection conf.  : {verdict}" in summary.stdout

    again = pipeline.run_pipeline(params, "run-1", CREATED_AT)
    assert again["register"]["version"] == "1"
    assert len(_versions(params["tracking_uri"], "fgpo-policy-tiny")) == 1


def _airflow_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
    home = tmp_path / "airflow"
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "AIRFLOW_VAR_FGPO_STORAGE_ROOT": str(tmp_path / "storage"),
        "FGPO_WORK_DIR": os.environ["FGPO_WORK_DIR"], "PATH": f"{BIN}:{os.environ['PATH']}",
    })
    return env


def _airflow(args: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_retrain_dag_end_to_end_registers_the_model_with_metrics(tmp_path):
    from mlflow import MlflowClient

    env = _airflow_env(tmp_path)
    _airflow(["db", "migrate"], env)
    conf = json.dumps({"profile": "tiny"})
    _airflow(["dags", "test", "fgpo_retrain", "2026-01-01T00:00:00+00:00", "-c", conf], env)

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    versions = _versions(env["MLFLOW_TRACKING_URI"], "fgpo-policy-tiny")
    assert len(versions) == 1
    assert client.get_model_version_by_alias("fgpo-policy-tiny", "challenger").version == versions[0].version
    run_key = versions[0].tags["fgpo.run_key"]
    parents = client.search_runs([client.get_experiment_by_name("fgpo").experiment_id],
                                 f"tags.`fgpo.run_key` = '{run_key}' and tags.`fgpo.kind` = 'pipeline'")
    assert len(parents) == 1
    metrics = parents[0].data.metrics
    assert "eval.overall.win_rate" in metrics and 0.0 <= metrics["eval.overall.win_rate"] <= 1.0
    stages = client.search_runs([parents[0].info.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    names = {r.data.tags.get("fgpo.child_key") for r in stages}
    assert {"ingest", "validate", "score", "select", "train_dpo", "evaluate", "register"} <= names
    assert {f"reward_model/{a}" for a in ("correctness", "politeness", "detail", "conciseness")} <= names
    assert parents[0].data.tags["selection_confidence"] in ("ok", "weak", "none")
    dpo_run = next(r for r in stages if r.data.tags.get("fgpo.child_key") == "train_dpo")
    assert len(client.get_metric_history(dpo_run.info.run_id, "dpo.loss")) > 1

    # The DAG again on the same data and settings (a new run id, the same data key): nothing new.
    _airflow(["dags", "test", "fgpo_retrain", "2026-01-01T00:00:00+00:00", "-c", conf], env)
    assert len(_versions(env["MLFLOW_TRACKING_URI"], "fgpo-policy-tiny")) == 1


def test_holdout_split_trains_evaluation_models_on_prompts_the_pool_never_saw(tmp_path):
    """A profile with ``holdout`` (as helpsteer2's): the pool, the evaluation reward models' pairs
    and the evaluation prompts are disjoint by prompt, the judges are trained on the held-out
    pairs (not the proxies), and every evaluation prompt comes from the held-out prompt part."""
    from fgpo_tasks import contract

    params = {**_params(tmp_path), "holdout": {"fraction": 0.4, "prompt_fraction": 0.5, "seed": 0},
              "stages": {"select": {"max_pairs": 12}}}
    result = pipeline.run_pipeline(params, "hold-1", CREATED_AT)
    valid = result["validate"]
    parts = {name: contract.read_pairs(valid[name]) for name in ("data", "eval_rm", "eval_prompts")}
    prompts = {name: set(df["prompt"]) for name, df in parts.items()}
    assert not prompts["data"] & prompts["eval_rm"] and not prompts["data"] & prompts["eval_prompts"]
    assert not prompts["eval_rm"] & prompts["eval_prompts"]
    assert sum(len(df) for df in parts.values()) == valid["rows_accepted"]
    assert valid["n_pool"] == len(parts["data"]) and min(valid["n_eval_rm"], valid["n_eval_prompts"]) > 0

    assert result["select"]["selected"] == 12  # the cap: a sample of the 30% PD kept
    selected = contract.read_pairs(result["select"]["data"])
    manifest = contract.read_manifest(result["select"]["data"])
    assert manifest["selection"]["n_before_cap"] == round(0.3 * len(parts["data"]))
    assert set(selected["pair_id"]) <= set(parts["data"]["pair_id"])

    out = Path(result["evaluate"]["results"])
    res = json.loads((out / "results.json").read_text())
    judges = {spec for specs in res["config"]["eval_models"].values() for spec in specs}
    proxies = {f"fgpo:{m['model']}" for m in result["reward_models"]}
    assert judges and not judges & proxies
    for spec in judges:
        info = json.loads((Path(spec[len("fgpo:"):]) / "reward_model.json").read_text())
        assert info["data_fingerprint"] == contract.content_fingerprint(parts["eval_rm"])
    with open(out / "generations.jsonl", encoding="utf-8") as fh:
        asked = {json.loads(line)["prompt"] for line in fh}
    assert asked and asked <= prompts["eval_prompts"]
    assert result["register"]["version"] == "1"


@pytest.mark.parametrize("profile", sorted(p.stem for p in pipeline.PROFILES_DIR.glob("*.yaml")))
def test_every_profile_builds_every_stage_config(profile):
    """A typo in a profile fails here, not 10 minutes into a DAG run."""
    from fgpo_tasks.config import from_dict
    from fgpo_tasks.dpo.config import DPOConfig
    from fgpo_tasks.evaluate import EvalConfig
    from fgpo_tasks.ingest import IngestConfig
    from fgpo_tasks.reward_models import RewardModelConfig
    from fgpo_tasks.scoring import ScoreConfig
    from fgpo_tasks.selection import SelectConfig
    from fgpo_tasks.validate import ValidateConfig

    cfg = pipeline.pipeline_config({"profile": profile})
    classes = {"ingest": IngestConfig, "validate": ValidateConfig, "reward_models": RewardModelConfig,
               "score": ScoreConfig, "select": SelectConfig, "dpo": DPOConfig, "evaluate": EvalConfig}
    for stage, cls in classes.items():
        pipeline._stage_config(cfg, stage, cls)
    from_dict(RewardModelConfig, {**cfg.stages.get("reward_models", {}), **cfg.stages.get("eval_reward_models", {})})
    for source in cfg.source:
        resolved = Path(pipeline._resolve_source(source))
        assert source == "toy-world" or resolved.exists(), f"{profile}: source {source} not found"


@pytest.mark.slow
def test_helpsteer2_profile_runs_end_to_end_on_the_real_files(tmp_path, shared_data):
    """The helpsteer2 profile as shipped (MiniLM proxies, SmolLM2 LoRA, holdout judges), with the
    DPO sample and the evaluation shrunk: 16 min on 2 CPU cores shared with another job, cold caches."""
    params = {**_params(tmp_path), "profile": "helpsteer2", "stages": {
        "select": {"seed": 0, "max_pairs": 8},
        "evaluate": {"n_prompts": 4, "max_new_tokens": 8, "batch_size": 4, "bootstrap_samples": 50,
                     "plots": False}}}
    result = pipeline.run_pipeline(params, "hs2", CREATED_AT)
    assert result["validate"]["aspects"] == ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]
    assert result["select"]["selected"] == 8
    res = json.loads((Path(result["evaluate"]["results"]) / "results.json").read_text())
    assert set(res["aspects"]) == set(result["validate"]["aspects"]) and res["prompts"]["n_prompts"] == 4
    assert result["register"]["version"] == "1" and "challenger" in result["register"]["aliases"]
