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
                                    "scripts/ci-services.sh", "scripts/airflow.sh"])
def test_shell_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0


# ------------------------------------------------------------------------------ secure defaults

INTERPOLATION = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD", "REDIS_PASSWORD",
           "AIRFLOW_ADMIN_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY",
           "AIRFLOW_FERNET_KEY"}


def interpolate(text: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """docker compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err} over
    ``env``: the text, and the variables whose required check fails (compose refuses to start)."""
    missing = []

    def value(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        v = env.get(name)
        empty = v is None or (op is not None and op.startswith(":") and v == "")
        if op in (":?", "?") and empty:
            missing.append(name)
            return ""
        if op in (":-", "-") and empty:
            return arg
        return v or ""

    return INTERPOLATION.sub(value, text.replace("$$", "\0")).replace("\0", "$"), missing


def filled_env() -> dict[str, str]:
    return {k: (f"s3cret-{k.lower()}" if k in SECRETS else v) for k, v in env_example().items()}


def test_env_example_placeholders_fail_the_compose_checks_until_replaced():
    _, missing = interpolate(COMPOSE.read_text(), env_example())
    assert set(missing) == SECRETS, "every secret must be required (${VAR:?...}) and empty in .env.example"
    assert all(env_example()[k] == "" for k in SECRETS)
    _, missing = interpolate(COMPOSE.read_text(), filled_env())
    assert missing == []


def test_fernet_key_is_required():
    assert "${AIRFLOW_FERNET_KEY:?" in COMPOSE.read_text()
    env = filled_env()
    env["AIRFLOW_FERNET_KEY"] = ""
    assert interpolate(COMPOSE.read_text(), env)[1] == ["AIRFLOW_FERNET_KEY"] * COMPOSE.read_text().count("${AIRFLOW_FERNET_KEY:?")


def test_ui_ports_are_published_on_localhost_unless_overridden():
    text, _ = interpolate(COMPOSE.read_text(), filled_env())
    services = yaml.safe_load(text)["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert published == {"mlflow": ["127.0.0.1:5000:5000"], "airflow-apiserver": ["127.0.0.1:8080:8080"]}
    text, _ = interpolate(COMPOSE.read_text(), {**filled_env(), "FGPO_BIND_ADDRESS": "10.0.0.5"})
    assert yaml.safe_load(text)["services"]["mlflow"]["ports"] == ["10.0.0.5:5000:5000"]
    without = {k: v for k, v in filled_env().items() if k != "FGPO_BIND_ADDRESS"}  # unset: localhost
    text, _ = interpolate(COMPOSE.read_text(), without)
    assert yaml.safe_load(text)["services"]["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]


def test_mlflow_runs_its_basic_auth_app_and_tasks_log_in(compose, tmp_path):
    services = compose["services"]
    assert services["mlflow"]["environment"]["MLFLOW_AUTH"] == "basic-auth"
    env = services["airflow-scheduler"]["environment"]
    assert env["MLFLOW_TRACKING_USERNAME"] == "admin" and "MLFLOW_ADMIN_PASSWORD" in env["MLFLOW_TRACKING_PASSWORD"]
    assert "mlflow[auth]==" in (REPO / "mlflow" / "Dockerfile").read_text()
    # The entrypoint, with a stand-in `mlflow` that prints its argv: the app and its config.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mlflow").write_text('#!/bin/sh\necho "ARGS $*"\necho "CONFIG $MLFLOW_AUTH_CONFIG_PATH"\n')
    (fake / "mlflow").chmod(0o755)
    run_env = {"PATH": f"{fake}:/usr/bin:/bin", "TMPDIR": str(tmp_path), "MLFLOW_AUTH": "basic-auth",
               "MLFLOW_AUTH_ADMIN_PASSWORD": "pw", "MLFLOW_DB_PASSWORD": "dbpw"}
    out = subprocess.run(["bash", str(REPO / "mlflow" / "entrypoint.sh")], env=run_env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ARGS server --app-name basic-auth --host 0.0.0.0" in out.stdout
    ini = (tmp_path / "mlflow-basic-auth.ini").read_text()
    assert "database_uri = postgresql://mlflow:dbpw@postgres:5432/mlflow" in ini and "admin_username = admin" in ini
    assert "pw" not in ini.replace("dbpw", "")  # the admin password stays in the environment
    no_password = {k: v for k, v in run_env.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    out = subprocess.run(["bash", str(REPO / "mlflow" / "entrypoint.sh")], env=no_password, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in out.stderr
