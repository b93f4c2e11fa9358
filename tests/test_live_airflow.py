"""A live Airflow, as a user runs it: `scripts/airflow.sh start` (what `make airflow` runs:
`airflow standalone` with LocalExecutor and SQLite, parallelism 2, plus an MLflow server) in a
temporary work folder, driven only through its REST API and the landing folder.

Two HelpSteer batches (rows of ../shared/data/helpsteer-ratings, the public data's shape) land one
after the other; each time `fgpo_ingest` is triggered and the asset-triggered `fgpo_retrain` must
succeed on its own, with the profile the Variable `fgpo_retrain_profile` names (`live`: the
`tiny` models on a holdout split of the landed data, written to a temporary FGPO_PROFILES_DIR).
Then: two model versions carry the gate's verdict; mapped tasks are labelled by aspect; the
MLflow link answers in the API server; successful tasks log no ERROR line; an idle ingest says
why it skipped. Every process is stopped by process group, also when the test fails.

Slow (several minutes on 2 CPU cores): not in `pytest -m "not slow"`; `make test` runs it after the default suite.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mlflow_server import free_port

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FGPO_SHARED_DATA", REPO.parent / "shared" / "data"))
HELPSTEER = SHARED / "helpsteer-ratings" / "helpsteer_v1_sample.jsonl"
MODEL = "fgpo-policy-live"
ASPECTS = ["coherence", "complexity", "correctness", "helpfulness", "verbosity"]
RETRAIN_TIMEOUT_S = 1200

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIVE_PROFILE = """\
# The tiny profile's models on landed HelpSteer rating batches, judged on a holdout split.
strategy: pd
budget: 0.3
model_name: fgpo-policy-live
min_prompts: 8
holdout: {fraction: 0.3, prompt_fraction: 0.3, seed: 0}
validate: {min_pairs_per_aspect: 10, data_docs: false}
reward_models: {backbone: tiny-bert, mode: frozen, max_length: 128, max_prompt_length: 48,
                compare_undebiased: false}
eval_reward_models: {seed: 1}
dpo: {model: tiny-llama, lr: 1.0e-3, batch_size: 8, epochs: 1, max_length: 160, max_prompt_length: 48,
      logging_steps: 1, checkpoint_every: 4}
evaluate: {n_prompts: 8, max_new_tokens: 16, batch_size: 8, bootstrap_samples: 100, plots: false}
"""


class Live:
    """The started deployment: REST calls to Airflow and MLflow, the folders it writes."""

    def __init__(self, root: Path):
        self.root = root
        self.work = root / "work"
        self.home = self.work / "airflow"
        self.landing = self.work / "landing"
        self.airflow_port, self.mlflow_port = free_port(), free_port()
        self.api = f"http://127.0.0.1:{self.airflow_port}"
        self.mlflow = f"http://127.0.0.1:{self.mlflow_port}"
        self.token = None
        profiles = root / "profiles"
        profiles.mkdir()
        for f in (REPO / "configs" / "pipeline").glob("*.yaml"):
            shutil.copy(f, profiles / f.name)
        (profiles / "live.yaml").write_text(LIVE_PROFILE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}
        env.update({"FGPO_WORK_DIR": str(self.work), "AIRFLOW_PORT": str(self.airflow_port),
                    "MLFLOW_PORT": str(self.mlflow_port), "FGPO_PARALLELISM": "2",
                    "FGPO_PROFILES_DIR": str(profiles), "FGPO_RETRAIN_PROFILE": "live",
                    "AIRFLOW_VAR_FGPO_LANDING_FORMAT": "rated-responses", "OMP_NUM_THREADS": "1"})
        self.env = env

    # -- processes -------------------------------------------------------------------------------

    def start(self):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "airflow.sh"), "start"], env=self.env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"airflow.sh start failed:\n{proc.stdout}\n{proc.stderr}"
        self.banner = proc.stdout
        password = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        self.token = self.post("/auth/token", {"username": "admin", "password": password})["access_token"]

    def groups(self) -> list[int]:
        f = self.home / "fgpo-processes"
        return [int(line.split()[1]) for line in f.read_text().splitlines()] if f.is_file() else []

    def stop(self) -> list[int]:
        """Stop as a user does (airflow.sh stop); then make sure: KILL any group still alive."""
        groups = self.groups()
        subprocess.run(["bash", str(REPO / "scripts" / "airflow.sh"), "stop"], env=self.env,
                       capture_output=True, text=True, timeout=60)
        survivors = []
        for pgid in groups:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                continue
            survivors.append(pgid)
            os.killpg(pgid, signal.SIGKILL)
        return survivors  # airflow.sh stop waits until every group is gone: none should be left

    # -- REST --------------------------------------------------------------------------------------

    def _call(self, url: str, body: dict | None = None, method: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.token and url.startswith(self.api):
            headers["Authorization"] = f"Bearer {self.token}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=90) as r:  # > the 60 s SQLite lock wait
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return {"_status": e.code, "_body": e.read().decode(errors="replace")[:2000]}

    def get(self, path: str, **query) -> dict:
        q = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._call(f"{self.api}{path}{q}")

    def post(self, path: str, body: dict) -> dict:
        return self._call(f"{self.api}{path}", body, "POST")

    def mlflow_get(self, endpoint: str, **query) -> dict:
        return self._call(f"{self.mlflow}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}")

    def runs(self, dag_id: str) -> list[dict]:
        got = self.get(f"/api/v2/dags/{dag_id}/dagRuns", order_by="run_after", limit=100)
        return got.get("dag_runs", [])

    def tasks(self, dag_id: str, run_id: str) -> list[dict]:
        rid = urllib.parse.quote(run_id, safe="")
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{rid}/taskInstances", limit=100).get("task_instances", [])

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1):
        rid = urllib.parse.quote(run_id, safe="")
        got = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{rid}/taskInstances/{task_id}/xcomEntries/return_value",
                       map_index=map_index, deserialize="true")
        value = got.get("value")
        return json.loads(value) if isinstance(value, str) else value

    def links(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict:
        rid = urllib.parse.quote(run_id, safe="")
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{rid}/taskInstances/{task_id}/links", map_index=map_index)

    # -- waiting -----------------------------------------------------------------------------------

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """Until the DAG processor has parsed ``dag_id`` (a user sees it in the DAG list first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.get(f"/api/v2/dags/{dag_id}")
            if got.get("dag_id") == dag_id:
                return got
            time.sleep(1)
        raise AssertionError(f"{dag_id} not parsed after {timeout}s: {got}\n{self.api_server_log()}")

    def trigger(self, dag_id: str) -> str:
        self.wait_dag(dag_id)
        got = self.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None})
        assert "dag_run_id" in got, f"{got}\n{self.api_server_log()}"
        return got["dag_run_id"]

    def api_server_log(self, n: int = 60) -> str:
        """The last ERROR/Traceback lines of the standalone log: what a 500 hides."""
        log = self.home / "standalone.log"
        lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
        hits = [i for i, line in enumerate(lines) if "ERROR" in line or "Traceback" in line]
        return "\n".join(lines[hits[-1] - 5:][:n]) if hits else "(no ERROR in standalone.log)"

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = next((r for r in self.runs(dag_id) if r["dag_run_id"] == run_id), None)
            if run and run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise AssertionError(f"{dag_id} run {run_id} not finished after {timeout}s")

    def wait_retrains(self, n: int) -> list[dict]:
        """Until ``n`` fgpo_retrain runs succeeded; a failed one fails at once with its task logs."""
        deadline = time.monotonic() + RETRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            runs = self.runs("fgpo_retrain")
            failed = [r for r in runs if r["state"] == "failed"]
            assert not failed, f"fgpo_retrain run failed:\n{self.failure_logs(failed[0]['dag_run_id'])}"
            done = [r for r in runs if r["state"] == "success"]
            if len(done) >= n:
                return done
            time.sleep(3)
        raise AssertionError(f"{n} fgpo_retrain run(s) not done after {RETRAIN_TIMEOUT_S}s: {self.runs('fgpo_retrain')}")

    # -- logs --------------------------------------------------------------------------------------

    def log_lines(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        lines = []
        for f in sorted(folder.glob("attempt=*.log")):
            lines += [json.loads(line) for line in f.read_text().splitlines() if line.startswith("{")]
        return lines

    def failure_logs(self, run_id: str) -> str:
        out = []
        for ti in self.tasks("fgpo_retrain", run_id):
            if ti["state"] == "failed":
                lines = self.log_lines("fgpo_retrain", run_id, ti["task_id"], ti["map_index"])
                out.append(f"--- {ti['task_id']}[{ti['map_index']}]\n" + "\n".join(
                    f"{d.get('level')}: {str(d.get('event'))[:400]} {str(d.get('error_detail', ''))[:2000]}"
                    for d in lines[-30:]))
        return "\n".join(out) or (self.home / "standalone.log").read_text()[-5000:]


def _cache_counts(node) -> list[dict]:
    """Every {scored, from_cache} record in a score manifest, wherever it nests."""
    if isinstance(node, dict):
        if isinstance(node.get("scored"), (int, float)) and isinstance(node.get("from_cache"), (int, float)):
            return [node]
        return [c for v in node.values() for c in _cache_counts(v)]
    if isinstance(node, list):
        return [c for v in node for c in _cache_counts(v)]
    return []


def _land(live: Live, name: str, rows: list[dict]) -> None:
    """A batch appears atomically: written as a dot-file, then renamed."""
    tmp = live.landing / f".{name}"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.rename(live.landing / name)


@pytest.fixture(scope="module")
def live():
    if not HELPSTEER.is_file():
        pytest.skip(f"real data file {HELPSTEER} is absent (set FGPO_SHARED_DATA)")
    root = Path(tempfile.mkdtemp(prefix="fgpo-live-", dir="/tmp"))
    deployment = Live(root)
    try:
        deployment.start()
        yield deployment
    finally:
        survivors = deployment.stop()
        if not os.environ.get("FGPO_KEEP_LIVE"):
            shutil.rmtree(root, ignore_errors=True)
    assert not survivors, f"process groups {survivors} outlived airflow.sh stop"


def test_two_landed_batches_retrain_twice_with_the_gate_verdict_on_each(live):
    rows = [json.loads(line) for line in HELPSTEER.read_text().splitlines()]
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    first = set(prompts[:125])  # batch 2 is ~10% of the prompts: the second retrain re-scores little
    assert "http://127.0.0.1:" in live.banner and "login: admin / " in live.banner

    _land(live, "batch-001.jsonl", [r for r in rows if r["prompt"] in first])
    ingest_1 = live.trigger("fgpo_ingest")
    assert live.wait_run("fgpo_ingest", ingest_1)["state"] == "success"
    (retrain_1,) = live.wait_retrains(1)

    _land(live, "batch-002.jsonl", [r for r in rows if r["prompt"] not in first])
    ingest_2 = live.trigger("fgpo_ingest")
    assert live.wait_run("fgpo_ingest", ingest_2)["state"] == "success"
    done = live.wait_retrains(2)
    (retrain_2,) = [r for r in done if r["dag_run_id"] != retrain_1["dag_run_id"]]
    assert all(r["run_type"] == "asset_triggered" for r in (retrain_1, retrain_2))

    # Nothing new: the idle ingest run says why in its log.
    idle = live.trigger("fgpo_ingest")
    assert live.wait_run("fgpo_ingest", idle)["state"] == "success"
    events = [d.get("event", "") for d in live.log_lines("fgpo_ingest", idle, "detect_batches")]
    assert any(str(e).startswith("skipped: no new batch in ") for e in events), events

    # The second run trained on both batches (the union), the first on batch 1 only.
    ingested = [live.xcom("fgpo_retrain", r["dag_run_id"], "ingest") for r in (retrain_1, retrain_2)]
    assert ingested[1]["rows_in"] == len(rows) and ingested[0]["rows_in"] == sum(r["prompt"] in first for r in rows)

    # Two model versions, each with the gate's verdict, as the register task reported it.
    versions = live.mlflow_get("model-versions/search", filter=f"name='{MODEL}'")["model_versions"]
    assert len(versions) == 2
    registered = {}
    for r in (retrain_1, retrain_2):
        reg = live.xcom("fgpo_retrain", r["dag_run_id"], "register")
        registered[r["dag_run_id"]] = reg
        tags = {t["key"]: t["value"] for t in next(v for v in versions if v["version"] == reg["version"])["tags"]}
        assert tags["fgpo.gate.passed"] == str(reg["promoted"]).lower() and tags["fgpo.gate.reason"] == reg["reason"]
        assert reg["reason"].startswith(("gate passed", "gate failed")), reg["reason"]
        assert tags["fgpo.run_key"] == r["dag_run_id"] and tags["fgpo.profile"] == "live"
    reg_1, reg_2 = registered[retrain_1["dag_run_id"]], registered[retrain_2["dag_run_id"]]
    if reg_1["promoted"]:  # then the second run was judged against that champion
        assert "against champion version 1" in reg_2["reason"], reg_2["reason"]

    # The parent run in MLflow: readable name, the profile the Variable named, params to compare.
    parent = live.mlflow_get("runs/get", run_id=reg_2["run_id"])["run"]
    params = {p["key"]: p["value"] for p in parent["data"]["params"]}
    assert params["profile"] == "live" and params["strategy"] == "pd" and params["policy"] == "tiny-llama"
    assert params["registered_version"] == f"{MODEL}/{reg_2['version']}" and params["pairs_in"]
    assert parent["info"]["run_name"].startswith("live pd budget 0.3 ")

    # Mapped reward-model tasks are labelled by aspect; the MLflow link answers in the API server.
    tis = live.tasks("fgpo_retrain", retrain_2["dag_run_id"])
    labels = sorted(t["rendered_map_index"] for t in tis if t["task_id"] == "train_reward_model")
    assert labels == ASPECTS
    for task_id, map_index in (("register", -1), ("train_reward_model", 0)):
        got = live.links("fgpo_retrain", retrain_2["dag_run_id"], task_id, map_index)
        assert got.get("_status") is None, got
        url = got["extra_links"]["MLflow run"]
        assert url.startswith(f"{live.mlflow}/#/runs/"), got
    with urllib.request.urlopen(url.split("#")[0], timeout=10) as r:
        assert r.status == 200

    # A successful task logs no ERROR line (stderr would be labelled ERROR).
    errors = []
    for r in (retrain_1, retrain_2):
        for ti in live.tasks("fgpo_retrain", r["dag_run_id"]):
            assert ti["state"] == "success", ti
            errors += [f"{ti['task_id']}[{ti['map_index']}]: {str(d.get('event'))[:300]}"
                       for d in live.log_lines("fgpo_retrain", r["dag_run_id"], ti["task_id"], ti["map_index"])
                       if d.get("level") == "error"]
    assert not errors, "\n".join(errors[:20])

    # The second run scored only the new batch's pairs: >= 85% of its margins came from the score
    # cache of the first (the run's score record points at the stage output it used).
    safe = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in retrain_2["dag_run_id"])
    record = json.loads((live.work / "storage" / "runs" / safe / "score.json").read_text())["result"]
    scored, from_cache = sum(record["scored"].values()), sum(record["from_cache"].values())
    assert scored + from_cache > 0, record
    assert from_cache >= 0.85 * (scored + from_cache), (record["scored"], record["from_cache"])
