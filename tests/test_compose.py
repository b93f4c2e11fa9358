"""docker-compose.yaml without a Docker engine: everything it points at exists and agrees with the
code (images or build contexts, Dockerfile sources, mounted paths, ${VARS}, pool and queue)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
# ${VAR}, ${VAR:-default}, ${VAR:?message}, $VAR; "$$" is a literal dollar for the container.
VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)[^}]*\}|([A-Za-z_][A-Za-z0-9_]*))")
SERVICES = {"postgres", "redis", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-gpu"}

sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def referenced_vars(text: str) -> set[str]:
    text = text.replace("$$", "")
    return {a or b for a, b in VAR.findall(text)}


def test_every_service_is_there(compose):
    assert set(compose["services"]) == SERVICES


def test_every_image_is_pinned_or_built_from_an_existing_dockerfile(compose):
    for name, svc in compose["services"].items():
        build = svc.get("build")
        if build is None:
            image = svc.get("image", "")
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), (name, image)
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (REPO / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert context.is_dir(), (name, context)
        assert dockerfile.is_file(), (name, dockerfile)
        for source in dockerfile_sources(dockerfile):
            assert (context / source).exists() or list(context.glob(source)), f"{name}: {dockerfile.name} copies {source!r}, absent from {context}"


def dockerfile_sources(dockerfile: Path) -> list[str]:
    """Sources of COPY / ADD lines (not --from=... stages)."""
    sources = []
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if words and words[0].upper() in ("COPY", "ADD"):
            args = [w for w in words[1:] if not w.startswith("--")]
            if not any(w.startswith("--from=") for w in words):
                sources += args[:-1]
    return sources


def test_every_mounted_host_path_exists_and_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert "$" not in source, f"{name}: host path {source!r} depends on a variable"
                assert (REPO / source).exists(), f"{name}: mounted host path {source!r} does not exist"
            else:
                assert source in declared, f"{name}: named volume {source!r} is not declared"


def test_every_referenced_variable_is_in_env_example_and_none_is_stale():
    documented = env_example()
    used = referenced_vars(COMPOSE.read_text())
    assert used - set(documented) == set(), "add these to .env.example"
    assert set(documented) - used == set(), "documented in .env.example but unused in docker-compose.yaml"


def test_env_example_holds_no_real_secret():
    for key, value in env_example().items():
        if re.search(r"PASSWORD|SECRET|KEY", key):
            assert value == "" or value.startswith("change-me"), f"{key} looks like a real secret"
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0, ".env must be git-ignored"


def test_gpu_worker_pool_and_queue_agree_with_the_dags(compose):
    from fgpo_airflow.settings import GPU_POOL, GPU_QUEUE

    services = compose["services"]
    gpu = services["airflow-worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] >= 1
    assert f"--queues {GPU_QUEUE}" in gpu["command"]
    assert "deploy" not in services["airflow-worker"] and f"--queues {GPU_QUEUE}" not in services["airflow-worker"]["command"]
    init = " ".join(services["airflow-init"]["command"])
    assert "airflow db migrate" in init and f"airflow pools set {GPU_POOL}" in init


def test_airflow_services_share_the_image_and_reach_postgres_mlflow_and_redis(compose):
    services = compose["services"]
    airflow = [s for s in SERVICES if s.startswith("airflow-")]
    for name in airflow:
        svc = services[name]
        assert svc["build"]["dockerfile"] == "docker/airflow/Dockerfile", name
        env = svc["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres:5432/airflow")
        assert env["AIRFLOW_CONN_FGPO_MLFLOW"] == "http://mlflow:5000"
        if name != "airflow-init":
            assert svc["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
    commands = {services[s]["command"].split()[0] for s in airflow if s != "airflow-init"}
    assert commands == {"api-server", "scheduler", "dag-processor", "triggerer", "celery"}
    # The one PostgreSQL creates both databases the services name.
    init_sql = (REPO / "docker/postgres/init-databases.sh").read_text()
    assert "CREATE DATABASE airflow" in init_sql and "CREATE DATABASE mlflow" in init_sql
    assert services["mlflow"]["environment"]["MLFLOW_DB_HOST"] == "postgres"


def test_mlflow_folder_holds_deployment_files_only():
    files = sorted(p.name for p in (REPO / "mlflow").iterdir())
    assert files == ["Dockerfile", "entrypoint.sh"]


@pytest.mark.parametrize("script", ["mlflow/entrypoint.sh", "docker/postgres/init-databases.sh", "scripts/pg.sh",
                                    "scripts/ci-services.sh"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0
