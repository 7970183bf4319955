"""docker-compose.yml, the Dockerfile and .dockerignore describe the deployment DESIGN.md
promises: every service present, started in a safe order, health-checked, and pointing at
files and modules that exist in this repository."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

APP_SERVICES = {"migrate", "api", "worker", "beat", "flower"}
INFRA_SERVICES = {"redis", "postgres", "prometheus", "grafana"}
ONE_SHOT_SERVICES = {"migrate"}
LONG_RUNNING_SERVICES = (APP_SERVICES | INFRA_SERVICES) - ONE_SHOT_SERVICES
# Services that read the database and so must wait for the schema.
MIGRATED_SERVICES = {"api", "worker", "beat"}

PRODUCTION_ENVIRONMENT = {
    "DATABASE_URL": "postgresql+psycopg://engine:engine@postgres:5432/engine",
    "REDIS_URL": "redis://redis:6379/0",
    "ENGINE_ENV": "production",
    "LOG_DIR": "/var/log/engine",
}


# --- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a mapping, whichever of the two compose forms it uses."""
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume or a host path), short syntax or long."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume.get("source", ""), volume["target"]
        found[target] = source
    return found


def is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def option_value(words: list[str], *names: str) -> str | None:
    """The value of `-x value`, `--long value` or `--long=value` in a command line."""
    for index, word in enumerate(words):
        for name in names:
            if word == name and index + 1 < len(words):
                return words[index + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def module_exists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# --- services and their order -------------------------------------------------------


def test_every_service_of_the_deployment_is_defined(services):
    assert APP_SERVICES | INFRA_SERVICES <= set(services)


def test_every_dependency_waits_on_a_stated_condition(services):
    allowed = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must use conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = (spec or {}).get("condition")
            assert condition in allowed, f"{name} -> {dependency}: no condition"
            # Waiting for "started" on a service that can say it is healthy is a race.
            if "healthcheck" in services[dependency]:
                assert condition != "service_started", (
                    f"{name} -> {dependency}: wait for service_healthy"
                )


def test_migrate_runs_once_before_the_services_that_use_the_database(services):
    migrate = services["migrate"]
    assert command_words(migrate) == ["engine", "db", "upgrade"]
    assert str(migrate.get("restart", "no")) == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in MIGRATED_SERVICES:
        condition = services[name]["depends_on"]["migrate"]["condition"]
        assert condition == "service_completed_successfully", name


def test_every_long_running_service_has_a_healthcheck(services):
    for name in LONG_RUNNING_SERVICES:
        healthcheck = services[name].get("healthcheck")
        assert healthcheck, f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), name
        test = healthcheck.get("test")
        assert test and test != ["NONE"], f"{name}: empty healthcheck"


def test_app_services_wait_for_a_healthy_broker(services):
    for name in APP_SERVICES - ONE_SHOT_SERVICES:
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name


# --- infrastructure -----------------------------------------------------------------


def test_redis_keeps_an_append_only_file_on_a_volume(compose, services):
    redis = services["redis"]
    assert redis["image"] == "redis:7"
    assert option_value(command_words(redis), "--appendonly") == "yes"
    assert mounts(redis)["/data"] in compose["volumes"]


def test_postgres_holds_the_engine_database_on_a_volume(compose, services):
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15"
    assert environment(postgres)["POSTGRES_DB"] == "engine"
    assert mounts(postgres)["/var/lib/postgresql/data"] in compose["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_every_named_volume_is_declared(compose, services):
    for name, service in services.items():
        for target, source in mounts(service).items():
            if source and not is_host_path(source):
                assert source in compose.get("volumes", {}), f"{name}:{target} uses {source}"


def test_prometheus_and_grafana_mount_folders_that_exist_in_the_repository(services):
    expected = {
        "prometheus": {"/etc/prometheus": "deploy/prometheus"},
        "grafana": {
            "/etc/grafana/provisioning": "deploy/grafana/provisioning",
            "/var/lib/grafana/dashboards": "deploy/grafana/dashboards",
        },
    }
    for name, wanted in expected.items():
        found = mounts(services[name])
        for target, folder in wanted.items():
            assert Path(found[target]) == Path(folder), f"{name}:{target}"
        for target, source in found.items():
            if is_host_path(source):
                assert (ROOT / source).exists(), f"{name}:{target} mounts missing {source}"


def test_monitoring_is_published_on_the_ports_operators_know(services):
    assert "9090:9090" in services["prometheus"]["ports"]
    assert "3001:3000" in services["grafana"]["ports"]


# --- app services -------------------------------------------------------------------


def test_app_services_share_the_production_environment(services):
    for name in APP_SERVICES:
        env = environment(services[name])
        for key, value in PRODUCTION_ENVIRONMENT.items():
            assert env.get(key) == value, f"{name}: {key}"


def test_secrets_must_be_given_and_have_no_default(services):
    for name in APP_SERVICES:
        for secret in ("JWT_SECRET", "WEBHOOK_SECRET"):
            value = environment(services[name])[secret]
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", value), f"{name}: {secret}"
    auth = environment(services["flower"])["FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]+\}", auth)
    # Grafana is published on the host too: admin/admin by default let anyone in as admin.
    password = environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password)


def test_api_runs_gunicorn_on_8000(services):
    api = services["api"]
    words = command_words(api)
    assert words[0] == "gunicorn"
    assert option_value(words, "-c", "--config") == "web/gunicorn_conf.py"
    assert words[-1] == "web:create_app()"
    assert api["ports"] == ["8000:8000"]
    assert "localhost:8000/health" in " ".join(api["healthcheck"]["test"])


def test_the_apis_metrics_port_is_reachable_on_the_compose_network_only(services):
    api = services["api"]
    metrics_port = environment(api)["API_METRICS_PORT"]
    assert metrics_port in api["expose"]
    published = [str(mapping).split(":")[-1].split("/")[0] for mapping in api["ports"]]
    assert metrics_port not in published, "anyone who reaches the host would read /metrics"


def test_worker_consumes_every_queue_and_serves_health_on_8080(services):
    worker = services["worker"]
    words = command_words(worker)
    assert words[:4] == ["celery", "-A", "workers.celery_app", "worker"]
    assert set(option_value(words, "-Q", "--queues").split(",")) == {
        "manager",
        "steps",
        "default",
    }
    assert environment(worker)["WORKER_HEALTH_PORT"] == "8080"
    assert "localhost:8080/health" in " ".join(worker["healthcheck"]["test"])
    # Workers scale out: a published host port would collide between replicas.
    assert "ports" not in worker


def test_workers_read_named_secrets_where_compose_mounts_them(services):
    assert environment(services["worker"])["SECRETS_DIR"] == "/run/secrets"
    # The API never reads a secret, so it is not told where they are.
    assert "SECRETS_DIR" not in environment(services["api"])


def healthcheck_url(service: dict[str, Any]) -> SplitResult:
    """The URL a service's healthcheck fetches from inside its container."""
    match = re.search(r"http://localhost:\d+/[^\s'\"]*", " ".join(service["healthcheck"]["test"]))
    assert match, service["healthcheck"]["test"]
    return urlsplit(match.group(0))


def test_healthchecks_and_scrape_targets_reach_the_ports_and_paths_the_processes_serve(
    services, monkeypatch, tmp_path
):
    from flask import Flask
    from flower.urls import handlers as flower_handlers

    from web.health import bp as health_bp
    from web.metrics_listener import PATH as METRICS_PATH

    # The API's ports: gunicorn's own settings under the service's environment (which
    # leaves API_PORT unset).
    for name in ("API_PORT", "API_BIND", "API_METRICS_PORT", "API_METRICS_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert "API_PORT" not in environment(services["api"])
    monkeypatch.setenv("API_METRICS_PORT", environment(services["api"])["API_METRICS_PORT"])
    monkeypatch.setenv("API_METRICS_HOST", environment(services["api"])["API_METRICS_HOST"])
    monkeypatch.setenv("ENGINE_VAR_DIR", str(tmp_path))
    gunicorn = runpy.run_path(str(ROOT / "web" / "gunicorn_conf.py"))
    api_port = int(gunicorn["bind"].split(":")[-1])
    metrics_port = gunicorn["engine_settings"].api_metrics_port
    # Prometheus, in another container, must reach the listener.
    assert gunicorn["engine_settings"].api_metrics_host == "0.0.0.0"
    worker_port = int(environment(services["worker"])["WORKER_HEALTH_PORT"])
    flower_port = int(option_value(command_words(services["flower"]), "--port") or 0)

    app = Flask(__name__)
    app.register_blueprint(health_bp)
    api_paths = {rule.rule for rule in app.url_map.iter_rules()}
    api = healthcheck_url(services["api"])
    assert (api.port, api.path) == (api_port, "/health") and api.path in api_paths
    # workers/health.py serves /health and /metrics on WORKER_HEALTH_PORT.
    assert healthcheck_url(services["worker"])[1:3] == (f"localhost:{worker_port}", "/health")
    flower = healthcheck_url(services["flower"])
    assert flower.port == flower_port
    # Flower's routes: tornado URLSpecs and (pattern, handler) tuples.
    patterns = [getattr(h, "regex", None) or re.compile(h[0]) for h in flower_handlers]
    assert flower.path in {pattern.pattern.rstrip("$") for pattern in patterns}, flower.path

    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    api_targets = [t for c in jobs["api"]["static_configs"] for t in c["targets"]]
    assert api_targets == [f"api:{metrics_port}"] and metrics_port != api_port
    discovery = jobs["workers"]["dns_sd_configs"]
    assert [(c["names"], c["port"]) for c in discovery] == [(["worker"], worker_port)]
    # web/metrics_listener.py and workers/health.py serve /metrics.
    for job in ("api", "workers"):
        assert jobs[job].get("metrics_path", "/metrics") == METRICS_PATH


def test_beat_keeps_its_schedule_on_a_volume(compose, services):
    beat = services["beat"]
    words = command_words(beat)
    assert words[:4] == ["celery", "-A", "workers.celery_app", "beat"]
    schedule = option_value(words, "-s", "--schedule")
    assert schedule == "/var/lib/engine/celerybeat-schedule"
    assert mounts(beat)[str(Path(schedule).parent)] in compose["volumes"]


def test_flower_requires_basic_auth_and_keeps_its_history(compose, services):
    flower = services["flower"]
    words = command_words(flower)
    assert words[:4] == ["celery", "-A", "workers.celery_app", "flower"]
    assert option_value(words, "--port") == "5555"
    assert option_value(words, "--persistent") == "True"
    database = option_value(words, "--db")
    assert mounts(flower)[str(Path(database).parent)] in compose["volumes"]
    assert "FLOWER_BASIC_AUTH" in environment(flower)
    assert "5555:5555" in flower["ports"]


def test_built_services_run_modules_and_files_that_exist(services):
    """Fails until web/, workers/celery_app.py and the `engine` script exist: expected."""
    missing = []
    for name, service in services.items():
        if "build" not in service:
            continue
        words = command_words(service)
        app = option_value(words, "-A", "--app")
        if app and not module_exists(app.split(":")[0]):
            missing.append(f"{name}: module {app}")
        if words[0] == "gunicorn":
            config = option_value(words, "-c", "--config")
            if not (ROOT / config).is_file():
                missing.append(f"{name}: file {config}")
            if not module_exists(words[-1].split(":")[0]):
                missing.append(f"{name}: module {words[-1]}")
        if words[0] == "engine":
            script = _project_scripts().get("engine")
            if script is None:
                missing.append(f"{name}: pyproject.toml declares no `engine` script")
            elif not module_exists(script.split(":")[0]):
                missing.append(f"{name}: module {script}")
    assert not missing, "commands name what the repository lacks: " + "; ".join(missing)


def _project_scripts() -> dict[str, str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project.get("scripts", {})


# --- the image ----------------------------------------------------------------------


def test_the_image_installs_the_pinned_requirements_and_runs_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.strip() for line in dockerfile.splitlines() if line.strip() and line[0] != "#"
    ]
    assert re.fullmatch(r"FROM python:3\.11-slim(-[a-z]+)?", instructions[0])
    assert any(re.search(r"pip install .*-r requirements\.txt", line) for line in instructions)
    assert any(re.search(r"pip install .*(-e )?\.$", line) for line in instructions)
    assert (ROOT / "requirements.txt").is_file()
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".env", "var"} <= ignored


# Debian's PostgreSQL client in each release (the only major its own repository has).
DEBIAN_POSTGRES_MAJOR = {"bullseye": 13, "bookworm": 15, "trixie": 17}


def dockerfile_instructions() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()[:1] not in "#"]


def test_the_image_has_the_postgresql_client_of_the_servers_major_version(services):
    """`docker compose exec api engine db backup|restore` runs pg_dump/pg_restore in the image:
    the client must be there, of the server's major version, from the base image's Debian."""
    major = int(services["postgres"]["image"].split(":")[1].split(".")[0])
    instructions = dockerfile_instructions()
    release = instructions[0].rsplit("-", 1)[-1]
    assert release in DEBIAN_POSTGRES_MAJOR, f"pin the base image's Debian release: {release}"
    assert DEBIAN_POSTGRES_MAJOR[release] == major, (
        f"Debian {release} ships PostgreSQL {DEBIAN_POSTGRES_MAJOR[release]}, the server is {major}"
    )
    installs = [
        line for line in instructions if line.startswith("RUN ") and "apt-get install" in line
    ]
    assert any(f"postgresql-client-{major}" in line.split() for line in installs), installs
    # Installed as root, before the image drops to its user.
    user_at = next(i for i, line in enumerate(instructions) if line.startswith("USER "))
    assert all(instructions.index(line) < user_at for line in installs)


def test_backups_written_in_the_api_container_land_on_a_named_volume(compose, services):
    api = services["api"]
    backups = f"{environment(api)['ENGINE_VAR_DIR']}/backups"
    assert mounts(api).get(backups) in compose["volumes"], mounts(api)
    assert mounts(api).get("/var/log/engine") == "engine-logs"
    # Created in the image and owned by its user, so the new volume is writable.
    run_lines = " ".join(line for line in dockerfile_instructions() if line.startswith("RUN "))
    assert re.search(rf"mkdir -p [^&]*{re.escape(backups)}", run_lines)
    assert re.search(rf"chown engine:engine [^&]*{re.escape(backups)}", run_lines)
