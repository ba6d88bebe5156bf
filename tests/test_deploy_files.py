"""The production files agree with the app and with each other.

No Docker engine runs where the suite runs, so docker-compose.yml, the Dockerfile, the
.dockerignore and deploy/nginx.conf are read and checked here: every command is one the app
understands (run for real with ``--help`` or the server's ``--check``), every variable
is a setting, every port matches, and the image follows the usual Dockerfile lint rules.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from oidc_server.config import Settings
from oidc_server.serve import MAX_DEFAULT_WORKERS, default_workers

from .conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Where the image puts the repository (Dockerfile: WORKDIR /app).
IMAGE_ROOT = "/app"
SETTINGS_VARIABLES = {f.name.upper() for f in fields(Settings)}
#: Variables the app service may set that are not app settings: oidc_server/serve.py reads these.
SERVER_VARIABLES = {
    "WEB_CONCURRENCY",
    "WEB_THREADS",
    "WEB_TIMEOUT",
    "PROMETHEUS_MULTIPROC_DIR",
}
#: Stand-ins for the secrets compose requires from the operator's environment.
OPERATOR_ENV = {"SECRET_KEY": "s" * 48, "POSTGRES_PASSWORD": "p" * 24}


# Reading the files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


_VARIABLE = re.compile(r"\$\{(\w+)(?:(:\?|:-)([^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` against ``env``."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return _VARIABLE.sub(replace, value)


def service_env(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    env = OPERATOR_ENV if env is None else env
    return {k: interpolate(str(v), env) for k, v in service.get("environment", {}).items()}


def _joined(lines: list[str]) -> list[str]:
    """Instruction lines with backslash continuations joined and comments dropped."""
    out: list[str] = []
    pending = ""
    for raw in lines:
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((pending + line).strip())
        pending = ""
    return out


@pytest.fixture(scope="module")
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages, each a list of (INSTRUCTION, arguments)."""
    stages: list[list[tuple[str, str]]] = []
    for line in _joined((ROOT / "Dockerfile").read_text().splitlines()):
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def nginx_conf() -> str:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _nginx_upstreams(text: str) -> dict[str, list[str]]:
    blocks = re.findall(r"upstream\s+(\S+)\s*\{([^}]*)\}", text)
    return {name: re.findall(r"^\s*server\s+(\S+)", body, re.M) for name, body in blocks}


def _dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a folder's pattern covers its contents."""
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        globbed = pattern.replace("**/", "")
        if any(
            fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c.split("/")[-1], globbed)
            for c in candidates
        ):
            ignored = not negate
    return ignored


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _clean_env(tmp_path: Path, *layers: dict[str, str]) -> dict[str, str]:
    """This machine's environment without the app's variables, then ``layers`` in order.

    Folders the image has (keys, instance, metrics) are moved under ``tmp_path``.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTINGS_VARIABLES and k not in SERVER_VARIABLES and not k.startswith("TEST_")
    }
    for layer in layers:
        env.update(layer)
    env.update(
        OIDC_KEYS_DIR=str(tmp_path / "keys"),
        INSTANCE_DIR=str(tmp_path / "instance"),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    return env


def _image_path_to_repo(path: str) -> Path:
    assert path.startswith(IMAGE_ROOT + "/"), path
    return ROOT / path.removeprefix(IMAGE_ROOT + "/")


# docker-compose.yml -----------------------------------------------------------------------


def test_the_stack_has_the_expected_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "redis", "migrate", "app", "nginx"}


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            continue
        repository, _, tag = image.partition(":")
        assert repository and tag and tag != "latest", f"{name}: pin the image tag ({image!r})"


def test_postgres_keeps_its_data_in_a_named_volume_and_has_a_healthcheck(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    volume, _, target = postgres["volumes"][0].partition(":")
    assert volume in compose["volumes"] and target == "/var/lib/postgresql/data"
    assert "pg_isready" in postgres["healthcheck"]["test"]


def test_redis_runs_with_aof_a_volume_and_a_healthcheck(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    # Sessions and revocations must never be evicted to make room.
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert volume in compose["volumes"] and target == "/data"
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_migrate_runs_the_apps_upgrade_once_postgres_is_healthy(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["oidc-server", "db", "upgrade"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert migrate["restart"] == "no"
    # The same image and database as the app.
    assert migrate["image"] == services["app"]["image"]
    assert service_env(migrate)["DATABASE_URL"] == service_env(services["app"])["DATABASE_URL"]


def test_the_migrate_command_is_one_the_cli_understands(services: dict[str, Any]) -> None:
    program, *args = services["migrate"]["command"]
    result = _run(str(BIN / program), *args, "--help")
    assert result.returncode == 0, result.stderr
    assert "Apply migrations" in result.stdout


def test_app_starts_after_migrations_succeed_and_its_stores_are_healthy(
    services: dict[str, Any],
) -> None:
    assert services["app"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }


def test_app_can_be_scaled(services: dict[str, Any]) -> None:
    app = services["app"]
    # A published host port or a fixed container name allows only one replica.
    assert "ports" not in app and "container_name" not in app
    assert service_env(app)["PORT"] in [str(p) for p in app["expose"]]


def test_every_app_variable_is_a_setting_or_a_server_one(services: dict[str, Any]) -> None:
    for name in ("app", "migrate"):
        unknown = set(services[name]["environment"]) - SETTINGS_VARIABLES - SERVER_VARIABLES
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_the_apps_environment_passes_the_production_check(services: dict[str, Any]) -> None:
    env = service_env(services["app"])
    settings = Settings.from_env(env)
    assert settings.is_production
    assert urlsplit(settings.database_url).hostname == "postgres"
    assert urlsplit(settings.redis_url).hostname == "redis"
    postgres = services["postgres"]["environment"]
    database = urlsplit(settings.database_url)
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path.lstrip("/") == postgres["POSTGRES_DB"]
    assert database.password == interpolate(postgres["POSTGRES_PASSWORD"], OPERATOR_ENV)


@pytest.mark.parametrize("missing", sorted(OPERATOR_ENV))
def test_secrets_have_no_default_and_are_required(services: dict[str, Any], missing: str) -> None:
    env = {k: v for k, v in OPERATOR_ENV.items() if k != missing}
    with pytest.raises(KeyError, match=missing):
        service_env(services["app"], env)
    text = (ROOT / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{" + missing + r"([^}]*)\}", text)
    assert uses and all(u.startswith(":?") for u in uses)


def test_all_replicas_share_the_keys_volume_at_oidc_keys_dir(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    app = services["app"]
    keys_dir = service_env(app)["OIDC_KEYS_DIR"]
    volume, _, target = next(v for v in app["volumes"] if v.split(":")[1] == keys_dir).partition(
        ":"
    )
    assert volume in compose["volumes"]  # a named volume: one folder for every replica
    assert target == keys_dir


def _server_settings(env: dict[str, str], command: list[str] | None = None) -> dict[str, Any]:
    """Run the server's command with ``--check``: it builds the app and the server from ``env``
    and prints the settings it would serve with."""
    program, *args = command or ["python", "-m", "oidc_server.serve"]
    assert program == "python"
    checked = _run(sys.executable, *args, "--check", env=env)
    assert checked.returncode == 0, checked.stderr[-3000:]
    return json.loads(checked.stdout.strip().splitlines()[-1])


def test_the_app_command_loads_the_app_under_the_production_server(
    services: dict[str, Any], tmp_path: Path
) -> None:
    """The command imports the app and calls its factory with compose's env."""
    command = services["app"]["command"]
    assert command == ["python", "-m", "oidc_server.serve"]
    env = _clean_env(tmp_path, service_env(services["app"]))
    settings = _server_settings(env, command)
    assert settings["workers"] == int(service_env(services["app"])["WEB_CONCURRENCY"])
    assert list((tmp_path / "keys").glob("*.pem")), "create_app() did not run"


def test_every_port_matches(services: dict[str, Any], tmp_path: Path) -> None:
    """nginx's upstream, the server's bind, the exposed port and the health check agree."""
    app_env = service_env(services["app"])
    env = _clean_env(tmp_path, app_env)
    bind = _server_settings(env)["bind"]
    port = app_env["PORT"]
    assert bind == f"0.0.0.0:{port}"

    upstreams = _nginx_upstreams(nginx_conf())
    (upstream,) = upstreams
    (server,) = upstreams[upstream]
    assert server == f"app:{port}"
    assert re.search(rf"proxy_pass\s+http://{upstream};", nginx_conf())

    healthcheck = services["app"]["healthcheck"]["test"]
    assert healthcheck[:2] == ["CMD", "python"]
    assert _image_path_to_repo(healthcheck[2]) == ROOT / "deploy" / "healthcheck.py"
    assert healthcheck[3] == "/health/ready"  # and the script reads PORT, as the server does

    (listen,) = re.findall(r"^\s*listen\s+(\d+);", nginx_conf(), re.M)
    (published,) = services["nginx"]["ports"]
    assert published.rsplit(":", 1)[1] == listen


def test_the_server_takes_workers_threads_and_bind_from_the_environment(tmp_path: Path) -> None:
    env = _clean_env(
        tmp_path,
        {
            "HOST": "::1",
            "PORT": "9123",
            "WEB_CONCURRENCY": "7",
            "WEB_THREADS": "3",
            "WEB_TIMEOUT": "4",
        },
    )
    settings = _server_settings(env)
    assert settings["bind"] == "[::1]:9123"
    assert (settings["workers"], settings["threads"], settings["timeout"]) == (7, 3, 4)
    assert settings["head_timeout"] == 4  # never longer than the whole request's


def test_default_workers_are_one_per_core_with_a_cap() -> None:
    assert [default_workers(n) for n in (1, 2, 4, 5, 64)] == [1, 2, 4, 5, MAX_DEFAULT_WORKERS]
    assert MAX_DEFAULT_WORKERS == 12


def test_nginx_sends_every_request_to_the_app_service_and_hides_metrics(
    services: dict[str, Any],
) -> None:
    nginx = services["nginx"]
    assert nginx["depends_on"] == {"app": {"condition": "service_healthy"}}
    source, target, *_ = nginx["volumes"][0].split(":")
    assert (ROOT / source).resolve() == ROOT / "deploy" / "nginx.conf"
    assert target == "/etc/nginx/nginx.conf"
    text = nginx_conf()
    # Replicas come and go with --scale: nginx must look their addresses up again.
    assert re.search(r"server\s+app:\d+\s+resolve;", text)
    assert re.search(r"resolver\s+127\.0\.0\.11\b", text)
    assert re.search(r"location\s*=\s*/metrics\s*\{\s*return\s+404;", text)
    assert "X-Request-ID" in text and "X-Forwarded-For" in text


# The health check script --------------------------------------------------------------------


def _healthcheck(port: int, *args: str) -> int:
    env = {**os.environ, "PORT": str(port)}
    return _run(sys.executable, str(ROOT / "deploy" / "healthcheck.py"), *args, env=env).returncode


def test_the_healthcheck_passes_on_a_ready_app(live_server: LiveServer) -> None:
    port = urlsplit(live_server.url).port
    assert port is not None
    assert _healthcheck(port) == 0
    assert _healthcheck(port, "/health/live") == 0


def test_the_healthcheck_fails_when_the_app_does_not_answer_200(live_server: LiveServer) -> None:
    port = urlsplit(live_server.url).port
    assert port is not None
    assert _healthcheck(port, "/no/such/probe") == 1
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # bound but not listening: connection refused
        assert _healthcheck(closed) == 1


# Dockerfile and .dockerignore ---------------------------------------------------------------


def test_the_image_is_multi_stage_on_python_slim(
    dockerfile_stages: list[list[tuple[str, str]]],
) -> None:
    assert len(dockerfile_stages) >= 2
    for stage in dockerfile_stages:
        base = stage[0][1].split()[0]
        assert base == "python:3.11-slim", base


def test_the_final_stage_runs_as_an_unprivileged_user(
    dockerfile_stages: list[list[tuple[str, str]]],
) -> None:
    final = dockerfile_stages[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_the_final_stage_has_no_build_tools(
    dockerfile_stages: list[list[tuple[str, str]]],
) -> None:
    final_text = " ".join(args for _, args in dockerfile_stages[-1]).lower()
    for tool in ("gcc", "g++", "build-essential", "make ", "apt-get install", "-dev "):
        assert tool not in final_text, tool
    copied_from = [args for instruction, args in dockerfile_stages[-1] if instruction == "COPY"]
    assert all(args.startswith("--from=") for args in copied_from), "only built results"


def test_the_image_checks_its_health_and_runs_what_compose_runs(
    dockerfile_stages: list[list[tuple[str, str]]], services: dict[str, Any]
) -> None:
    final = dict(dockerfile_stages[-1])
    healthcheck = final["HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == services["app"]["healthcheck"]["test"][1:]
    assert json.loads(final["CMD"]) == services["app"]["command"]
    env_line = shlex.split(final["ENV"])
    env = dict(item.split("=", 1) for item in env_line)
    assert env["PORT"] == service_env(services["app"])["PORT"] == final["EXPOSE"]
    assert env["OIDC_KEYS_DIR"] == service_env(services["app"])["OIDC_KEYS_DIR"]
    assert set(env) - {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"} <= (
        SETTINGS_VARIABLES | SERVER_VARIABLES
    )


def test_every_copied_path_exists_and_is_in_the_build_context(
    dockerfile_stages: list[list[tuple[str, str]]],
) -> None:
    for stage in dockerfile_stages:
        for instruction, args in stage:
            if instruction != "COPY" or args.startswith("--from="):
                continue
            *sources, _target = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _dockerignored(source.rstrip("/")), f"{source} is in .dockerignore"


@pytest.mark.parametrize(
    "path", [".git", ".venv", ".env", "keys/0001-abc.pem", "instance/secret_key", "tests"]
)
def test_secrets_and_local_state_stay_out_of_the_build_context(path: str) -> None:
    assert _dockerignored(path)


def test_the_dockerfile_follows_the_usual_lint_rules(
    dockerfile_stages: list[list[tuple[str, str]]],
) -> None:
    """What hadolint would flag, checked by hand (hadolint itself is not installed here)."""
    for stage in dockerfile_stages:
        stage_env = " ".join(args for instruction, args in stage if instruction == "ENV")
        for instruction, args in stage:
            assert instruction != "ADD", "COPY local files (DL3020)"
            assert "sudo " not in args, "no sudo (DL3004)"
            if instruction == "WORKDIR":
                assert args.startswith("/"), "absolute WORKDIR (DL3000)"
            if instruction in {"CMD", "ENTRYPOINT"}:
                json.loads(args)  # exec form, so signals reach the server (DL3025)
            if instruction == "RUN" and "apt-get install" in args:
                assert "--no-install-recommends" in args, "DL3015"
            if instruction == "RUN" and "pip install" in args:
                assert "--no-cache-dir" in args or "PIP_NO_CACHE_DIR=1" in stage_env, "DL3042"
            if instruction == "FROM":
                assert ":latest" not in args and ":" in args.split()[0], "pin the base (DL3007)"


def test_make_run_prod_migrates_then_serves_under_the_production_server() -> None:
    dry_run = _run("make", "-n", "run-prod")
    assert dry_run.returncode == 0, dry_run.stderr
    lines = dry_run.stdout.splitlines()
    upgrade = next(i for i, line in enumerate(lines) if "oidc-server db upgrade" in line)
    serve = next(i for i, line in enumerate(lines) if "python -m oidc_server.serve" in line)
    assert upgrade < serve
    assert "APP_ENV=${APP_ENV:-production}" in lines[serve]
