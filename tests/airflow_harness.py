"""Runs Airflow in a clean subprocess for tests/test_dags.py and prints one JSON report.

    python tests/airflow_harness.py parse   # parse dags/: errors, modules, connections, structure
    python tests/airflow_harness.py run     # dag.test() both DAGs with a stub fgpo_tasks.pipeline
    python tests/airflow_harness.py run-experiment   # dag.test() fgpo_experiment, stub fgpo_tasks.experiment

The caller sets AIRFLOW_HOME, AIRFLOW__CORE__DAGS_FOLDER / PLUGINS_FOLDER and the database URL;
``run`` migrates the (empty) database first. A subprocess because Airflow reads its configuration once,
at import, and because "parsing imports no torch" needs a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import types
from pathlib import Path

HEAVY = ("torch", "transformers", "mlflow", "fgpo_tasks.pipeline", "pandas", "datasets", "trl")
REPORT_MARK = "HARNESS-REPORT:"


def _record_connections(attempts: list) -> None:
    """Record every TCP connect and every SQLAlchemy pool connection from now on."""
    real_connect = socket.socket.connect

    def connect(self, address):
        attempts.append(f"socket {address}")
        return real_connect(self, address)

    socket.socket.connect = connect
    from sqlalchemy import event
    from sqlalchemy.pool import Pool

    event.listen(Pool, "connect", lambda *a: attempts.append("sqlalchemy pool connect"))


def _callback_names(cb) -> list[str]:
    if cb is None:
        return []
    return [getattr(c, "__name__", repr(c)) for c in (cb if isinstance(cb, (list, tuple)) else [cb])]


def _task_info(t) -> dict:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    info = {
        "operator": (t.operator_class if isinstance(t, MappedOperator) else type(t)).__name__,
        "upstream": sorted(t.upstream_task_ids), "downstream": sorted(t.downstream_task_ids),
        "pool": t.pool, "queue": t.queue, "retries": t.retries,
        "retry_exponential_backoff": t.retry_exponential_backoff,
        "retry_policy": type(t.retry_policy).__name__ if t.retry_policy else None,
        "links": sorted(link.name for link in t.operator_extra_links),
        "on_failure_callback": _callback_names(t.on_failure_callback),
        "on_retry_callback": _callback_names(t.on_retry_callback),
        "outlets": sorted(a.name for a in t.outlets), "mapped": isinstance(t, MappedOperator),
    }
    if isinstance(t, MappedOperator):
        expand = t._get_specified_expand_input().value
        if isinstance(expand, dict):  # .expand(name=upstream)
            info["expand"] = {k: getattr(getattr(v, "operator", None), "task_id", None) for k, v in expand.items()}
        else:  # .expand_kwargs(upstream): one task per dict the upstream returns
            info["expand_kwargs"] = getattr(getattr(expand, "operator", None), "task_id", None)
        info["partial"] = sorted(t.partial_kwargs.get("op_kwargs", {}))
    return info


def _schedule(dag) -> list[str] | str:
    """Asset names a DAG is scheduled on, else its timetable's summary."""
    condition = getattr(dag.timetable, "asset_condition", None)
    if condition is None:
        return str(dag.schedule)
    return sorted(a.name for a in getattr(condition, "objects", [condition]))


def parse() -> dict:
    attempts: list[str] = []
    _record_connections(attempts)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    report = {
        "import_errors": dict(bag.import_errors),
        "heavy_modules": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m in HEAVY),
        "connections": list(attempts),
        "dags": {},
    }
    for dag_id, dag in bag.dags.items():
        report["dags"][dag_id] = {
            "schedule": _schedule(dag),
            "doc": bool(dag.doc_md), "max_active_runs": dag.max_active_runs,
            "params": {k: {"default": p.value, "description": p.description, "schema": p.schema}
                       for k, p in dag.params.items()},
            "tasks": {t.task_id: _task_info(t) for t in dag.tasks},
        }
    from airflow import plugins_manager

    report["plugins"] = {p["name"]: p for p in plugins_manager.get_plugin_info()}
    # plugins/.airflowignore keeps the plugin loader from executing the package's files as
    # top-level modules (``links``, ``settings``...) beside their proper import.
    package = {p.stem for p in (Path(os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"]) / "fgpo_airflow").glob("*.py")}
    report["stray_plugin_modules"] = sorted(package & set(sys.modules))
    report["plugin_import_errors"] = dict(plugins_manager.get_import_errors())
    return report


# ----------------------------------------------------------------------------- run (dag.test)

def _stub_pipeline(calls: list, fail: set[str]) -> types.ModuleType:
    """A stand-in fgpo_tasks.pipeline that records its calls (the DAG wiring is under test)."""
    from fgpo_tasks.errors import ConfigError

    def step(name, make):
        def fn(params, run_key, created_at, **inputs):
            calls.append({"step": name, "params": params, "run_key": run_key, "created_at": created_at,
                          "inputs": inputs})
            if name in fail:
                raise ConfigError(f"stub: {name} rejects its config")
            return {**make(inputs), "mlflow_run_id": f"{name}-{inputs.get('aspect', 'run')}"}
        return fn

    mod = types.ModuleType("fgpo_tasks.pipeline")
    # what the glue task `aspects` reads to check the evaluation's judges (a holdout: none to check)
    mod.pipeline_config = lambda params: types.SimpleNamespace(holdout={}, stages={}, profile="stub")
    mod.step_ingest = step("ingest", lambda i: {"data": "/store/ingest", "rows": 12})
    mod.step_validate = step("validate", lambda i: {"data": "/store/validate", "aspects": ["a1", "a2", "a3"]})
    mod.step_reward_model = step("reward_model", lambda i: {"aspect": i["aspect"], "model": f"/store/rm/{i['aspect']}",
                                                             "accuracy": 0.75})
    def step_score_plan(params, data, reward_models):
        from fgpo_tasks.scoring import shard_plan  # the real planner: 12 pairs in shards of 8 (8 + 4)

        calls.append({"step": "score_plan", "params": params, "inputs": {"data": data,
                                                                        "reward_models": reward_models}})
        return shard_plan(12, [m["model"] for m in reward_models], 8)

    mod.step_score_plan = step_score_plan
    def step_score_shard(params, run_key, created_at, **inputs):  # logs no MLflow run: no link
        calls.append({"step": "score_shard", "params": params, "run_key": run_key, "created_at": created_at,
                      "inputs": inputs})
        return {"aspect": inputs["model"].rsplit("/", 1)[-1], "shard": inputs["shard"], "scored": 4, "from_cache": 0}

    mod.step_score_shard = step_score_shard
    mod.step_score = step("score", lambda i: {"scores": "/store/scores"})
    mod.step_select = step("select", lambda i: {"data": "/store/select", "selected": 4})
    mod.step_train_dpo = step("train_dpo", lambda i: {"model": "/store/dpo"})
    mod.step_evaluate = step("evaluate", lambda i: {"results": "/store/eval", "win_rate": 0.6})
    mod.step_register = step("register", lambda i: {"model_name": "fgpo-policy", "version": "3",
                                                     "aliases": ["champion"], "promoted": True, "reason": "gate passed",
                                                     "champion_version": "3", "gate_passed": True})
    return mod


def _run_retrain(bag, fail: set[str]) -> dict:
    from airflow.models.asset import AssetEvent
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    calls: list = []
    sys.modules["fgpo_tasks.pipeline"] = _stub_pipeline(calls, fail)
    dag = bag.dags["fgpo_retrain"]
    dr = dag.test(run_conf={"budget": 0.5, "strategy": "random"})
    with create_session() as session:
        states = {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: [ti.state, ti.try_number]
                  for ti in dr.get_task_instances(session=session)}
        links = {f"{x.task_id}[{x.map_index}]" if x.map_index >= 0 else x.task_id: x.value
                 for x in session.query(XComModel).filter(XComModel.run_id == dr.run_id,
                                                          XComModel.key == "_link_MlflowRunLink")}
        events = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == dr.run_id)]
        labels = {f"{ti.task_id}[{ti.map_index}]": ti.rendered_map_index
                  for ti in dr.get_task_instances(session=session) if ti.map_index >= 0}
    return {"state": dr.state, "run_id": dr.run_id, "logical_date": dr.logical_date.isoformat(),
            "calls": calls, "task_states": states, "links": links, "events": events, "map_labels": labels}


def _run_ingest(bag, landing: str) -> list[dict]:
    """Three fgpo_ingest runs: two batches land, nothing new, a third batch lands."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    def write(name):
        with open(os.path.join(landing, name), "w") as f:
            f.write('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')

    dag = bag.dags["fgpo_ingest"]
    out = []
    for names in (["batch-001.jsonl", "batch-002.jsonl", ".partial.jsonl"], [], ["batch-003.jsonl"]):
        for name in names:
            write(name)
        dr = dag.test()
        with create_session() as session:
            ti = dr.get_task_instances(session=session)[0]
            events = [e.extra for e in session.query(AssetEvent).filter(AssetEvent.source_run_id == dr.run_id)]
        out.append({"state": dr.state, "task_state": ti.state, "events": events})
    return out


def run() -> dict:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db

    db.upgradedb()  # a fresh database: what `airflow db migrate` does, without another interpreter

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    report = {"ok": _run_retrain(bag, fail=set()), "user_error": _run_retrain(bag, fail={"validate"})}
    report["ingest"] = _run_ingest(bag, os.environ["AIRFLOW_VAR_FGPO_LANDING_DIR"])
    return report


def _stub_experiment(calls: list, fail_arm: tuple) -> types.ModuleType:
    """A stand-in fgpo_tasks.experiment: 2 pools x 2 seeds x 2 arms; one arm raises a user error."""
    from fgpo_tasks.errors import ConfigError

    mod = types.ModuleType("fgpo_tasks.experiment")

    def load_experiment(path, **overrides):
        calls.append({"fn": "load_experiment", "path": str(path), "overrides": overrides})
        return types.SimpleNamespace(path=str(path), **overrides)

    def unit(name):
        def fn(cfg, key, *args):
            *inputs, created_at = args
            calls.append({"fn": name, "key": key, "inputs": inputs, "created_at": created_at})
            if name == "run_arm" and tuple(inputs) == fail_arm:
                raise ConfigError(f"stub: arm {inputs} rejects its config")
            if name == "report":
                done = [c for c in calls if c["fn"] == "run_arm" and tuple(c["inputs"]) != fail_arm]
                return {"arms_run": len(done), "arms_planned": len(mod.arm_units(cfg))}
            return {"unit": inputs, "mlflow_run_id": f"{name}-{'-'.join(map(str, inputs)) or 'run'}"}
        return fn

    mod.load_experiment = load_experiment
    mod.pool_units = lambda cfg: [{"pool": p, "seed": s} for p in ("c10", "c30") for s in (0, 1)]
    mod.arm_units = lambda cfg: [{**u, "arm": a} for u in mod.pool_units(cfg) for a in ("all", "pd")]
    for name in ("prepare", "prepare_pool", "prepare_eval", "run_arm", "report"):
        setattr(mod, name, unit(name))
    return mod


def run_experiment() -> dict:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils import db
    from airflow.utils.session import create_session

    db.upgradedb()
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    assert not bag.import_errors, bag.import_errors
    calls: list = []
    sys.modules["fgpo_tasks.experiment"] = _stub_experiment(calls, fail_arm=("c30", 1, "pd"))
    dr = bag.dags["fgpo_experiment"].test(run_conf={"seeds": [0, 1]})
    with create_session() as session:
        states = {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: ti.state
                  for ti in dr.get_task_instances(session=session)}
    return {"state": dr.state, "run_id": dr.run_id, "logical_date": dr.logical_date.isoformat(),
            "calls": calls, "task_states": states}


if __name__ == "__main__":
    result = {"parse": parse, "run": run, "run-experiment": run_experiment}[sys.argv[1]]()
    print(REPORT_MARK + json.dumps(result, default=str))
