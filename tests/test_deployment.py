"""docker-compose.yaml's topology, run natively: PostgreSQL (Airflow metadata + MLflow backend
store), `mlflow server` on it, Airflow migrated onto it, one DAG run through it with the
fgpo_airflow plugin resolving the MLflow connection.

Needs Debian's PostgreSQL (scripts/ci-services.sh installs it); skips without it.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(REPO / "plugins"))

pytestmark = pytest.mark.integration

# The DAG run through the deployment: (dag_id, dags folder or None for CHECK_DAG in a temp folder,
# trigger conf). The pipeline itself, every stage for real, on the smallest profile.
RUN = ("fgpo_retrain", REPO / "dags", {"profile": "tiny"})

CHECK_DAG = textwrap.dedent('''
    """Deployment check: a task that logs to MLflow through the fgpo_airflow plugin's settings."""
    from airflow.sdk import dag
    from fgpo_airflow.decorators import fgpo_step
    from fgpo_airflow.settings import step_run


    @dag(dag_id="fgpo_deploy_check", schedule=None, start_date=None, catchup=False)
    def fgpo_deploy_check():
        @fgpo_step(pool="fgpo_gpu", retries=1)
        def log_to_mlflow() -> dict:
            from mlflow import MlflowClient
            from fgpo_airflow.settings import tracking_uri

            run = step_run()
            client = MlflowClient(tracking_uri())
            exp = client.get_experiment_by_name("fgpo") or client.get_experiment(client.create_experiment("fgpo"))
            mlrun = client.create_run(exp.experiment_id, run_name="deploy-check",
                                      tags={"fgpo.run_key": run.run_key})
            client.log_metric(mlrun.info.run_id, "check.value", 1.0)
            client.set_terminated(mlrun.info.run_id)
            return {"mlflow_run_id": mlrun.info.run_id, "created_at": run.created_at}

        log_to_mlflow()


    fgpo_deploy_check()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip("Debian PostgreSQL absent (/usr/lib/postgresql/*/bin/initdb): run scripts/ci-services.sh")
    out = subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "start"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    info = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    try:
        yield {"port": int(info["port"]), "airflow_url": info["airflow_url"], "mlflow_url": info["mlflow_url"],
               "base": info["base"]}
    finally:
        log = Path(info["base"], "postgres.log")
        print("---- postgres.log (tail)\n" + (log.read_text()[-4000:] if log.is_file() else "(none)"))
        subprocess.run(["bash", str(REPO / "scripts" / "pg.sh"), "stop", info["base"], "--clean"], timeout=120)


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    """The compose service's entrypoint (mlflow/entrypoint.sh) on the PostgreSQL database `mlflow`;
    stopped (its process group) before PostgreSQL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TMPDIR": str(root),
           "MLFLOW_BACKEND_STORE_URI": postgres["mlflow_url"], "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
           "MLFLOW_SERVER_HOST": "127.0.0.1", "MLFLOW_SERVER_PORT": str(port), "MLFLOW_SERVER_WORKERS": "1"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "entrypoint.sh")], stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        yield {"url": url, "proc": proc, "log": root / "server.log"}
    finally:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        print("---- mlflow server.log (tail)\n" + (root / "server.log").read_text()[-4000:])


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # the group is gone already
        pass


def _wait_healthy(server: dict, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server["proc"].poll() is None, "mlflow server exited:\n" + server["log"].read_text()[-4000:]
        try:
            with urllib.request.urlopen(server["url"] + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError("mlflow server not healthy in time:\n" + server["log"].read_text()[-4000:])


def _mlflow(server: dict, path: str, body: dict, host: str | None = None) -> dict:
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
    req = urllib.request.Request(server["url"] + "/api/2.0/mlflow/" + path, data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _airflow(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"airflow {' '.join(args)}:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def _query(postgres: dict, sql: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=postgres["port"], user="airflow", dbname="airflow") as conn:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


def test_dag_runs_on_postgres_and_logs_to_the_mlflow_server(postgres, mlflow_server, tmp_path):
    dag_id, dags, conf = RUN
    if dags is None:
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "fgpo_deploy_check.py").write_text(CHECK_DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
    env.update({
        "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags), "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres["airflow_url"],
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW_CONN_FGPO_MLFLOW": mlflow_server["url"],
        "AIRFLOW_VAR_FGPO_STORAGE_ROOT": str(tmp_path / "storage"),
        "TMPDIR": str(tmp_path),
    })
    # What the compose init job does: migrate, then create the GPU pool.
    _airflow(["db", "migrate"], env)
    _airflow(["pools", "set", "fgpo_gpu", "1", "GPU slots of the Celery worker on queue gpu"], env)
    _wait_healthy(mlflow_server)

    _airflow(["dags", "test", dag_id, "-c", json.dumps(conf)], env)

    runs = _query(postgres, "SELECT run_id, state FROM dag_run WHERE dag_id = %s", dag_id)
    assert len(runs) == 1 and runs[0][1] == "success", runs
    run_id = runs[0][0]
    # MLflow (on the same PostgreSQL) holds the run's tracking, found by the run key tag.
    found = _mlflow(mlflow_server, "runs/search", {"experiment_ids": _experiment_ids(mlflow_server),
                                                   "filter": f"tags.`fgpo.run_key` = '{run_id}'"})
    assert found.get("runs"), f"no MLflow run tagged fgpo.run_key={run_id}"
    assert any(r["data"].get("metrics") for r in found["runs"]), found["runs"]
    # The extra link points at an MLflow run of this server.
    links = _query(postgres, "SELECT task_id, value FROM xcom WHERE run_id = %s AND key = %s", run_id,
                   "_link_MlflowRunLink")
    # score_shard tasks log no MLflow run of their own (the score_pd reduce logs the stage).
    stage_links = [(t, v) for t, v in links if t != "score_shard"]
    assert stage_links and all(str(v).startswith(mlflow_server["url"] + "/#/runs/") for _, v in stage_links), links


def test_mlflow_accepts_the_compose_host_name(mlflow_server):
    """Airflow's containers call http://mlflow:5000: MLflow answers 403 to Host names it does not allow."""
    _wait_healthy(mlflow_server)
    assert "experiments" in _mlflow(mlflow_server, "experiments/search", {"max_results": 1}, host="mlflow:5000")
    with pytest.raises(urllib.error.HTTPError) as denied:
        _mlflow(mlflow_server, "experiments/search", {"max_results": 1}, host="evil.example.com")
    assert denied.value.code == 403


def _experiment_ids(server: dict) -> list[str]:
    return [e["experiment_id"] for e in _mlflow(server, "experiments/search", {"max_results": 100})["experiments"]]


def test_failure_callback_finds_the_unfinished_stage_run(mlflow_server):
    from fgpo_airflow.callbacks import RUN_KEY_TAG, unfinished_runs

    _wait_healthy(mlflow_server)
    exp = _experiment_ids(mlflow_server)[0]
    ids = {}
    for name, status in (("ingest", "FINISHED"), ("train_dpo", "FAILED")):
        run = _mlflow(mlflow_server, "runs/create", {"experiment_id": exp, "run_name": name,
                                                      "tags": [{"key": RUN_KEY_TAG, "value": "cb-check"}]})["run"]
        _mlflow(mlflow_server, "runs/update", {"run_id": run["info"]["run_id"], "status": status})
        ids[name] = run["info"]["run_id"]
    assert unfinished_runs(mlflow_server["url"], "cb-check") == [(ids["train_dpo"], "train_dpo", "FAILED")]
    assert unfinished_runs(mlflow_server["url"], "no-such-key") == []
