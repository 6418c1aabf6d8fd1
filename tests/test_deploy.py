"""The deployment files — docker-compose.yml, Dockerfile, .env.example and Procfile —
checked against the real CLI, settings and Celery app (and compose's Redis password
against a real redis-server); then the Procfile run for real under honcho (a
redis-server the test starts, the ingress, an auto worker and Flower) through one pizza
conversation and a SIGTERM."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import flower as flower_package  # noqa: F401  # declared, as honcho: missing fails, never skips
import httpx
import orjson
import pytest
import redis
import yaml
from honcho.environ import parse_procfile
from pydantic import AliasChoices

from parley.asgi import create_ingress
from parley.testing import FakeGraphAPI, RedisServer, delivery, free_port, text_message
from parley.testing.redis_server import PortTaken, on_free_port, port_taken
from parley.workers.builder import ParleyApp, load_app
from parley.workers.leases import holders, live_nodes
from parley.workers.settings import Settings
from tests.helpers import parse_parley, serve_on_free_port, sign, wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
#: The override that puts the broker on RabbitMQ (``-f docker-compose.yml -f ...``)
COMPOSE_RABBITMQ = ROOT / "docker-compose.rabbitmq.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PROCFILE = ROOT / "Procfile"

#: Variables the deployment files use that are not Parley settings (documented here).
COMPOSE_ONLY = {
    "FLOWER_BASIC_AUTH": "Flower's login, user:password (Flower reads it from the environment)",
    "PARLEY_APP": "the workers' --app, MODULE:ATTR",
    "PARLEY_APP_DIR": "the folder of the user's app, mounted at the workers' /srv/app",
    "REDIS_PASSWORD": "compose's redis service's password (--requirepass, in the Parley URLs)",
    "RABBITMQ_PASSWORD": "the rabbitmq service's user's password (docker-compose.rabbitmq.yml)",
    "FLOWER_BROKER_API": "Flower's RabbitMQ management API URL (its Broker page)",
}
#: And the Procfile's: honcho sets PORT for each process type.
PROCFILE_ONLY = {"PORT": "set by honcho", "FLOWER_PORT": "parley flower's --port"}
#: What .env.example must offer at least.
REQUIRED_IN_ENV_EXAMPLE = {
    "WHATSAPP_TOKEN",
    "WHATSAPP_PHONE_ID",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "PARLEY_APP",
    "PARLEY_PARTITIONS",
    "PARLEY_LEASE_TTL",
    "PARLEY_METRICS_TOKEN",
    "PARLEY_ALLOWED_PHONE_IDS",
    "REDIS_PASSWORD",
    "FLOWER_BASIC_AUTH",
}
#: Each secret, and the compose services that may see it (by name or by ${...}).
SECRETS = {
    "WHATSAPP_TOKEN": {"worker"},
    "WHATSAPP_APP_SECRET": {"ingress"},
    "WHATSAPP_VERIFY_TOKEN": {"ingress"},
    "PARLEY_METRICS_TOKEN": {"ingress"},
    "FLOWER_BASIC_AUTH": {"flower"},
    "REDIS_PASSWORD": {"redis", "ingress", "worker", "flower"},
}
#: The override's one secret, and who may see it (the broker URL's password)
RABBITMQ_SECRETS = {"RABBITMQ_PASSWORD": {"rabbitmq", "ingress", "worker", "flower"}}
PARLEY_SERVICES = ("ingress", "worker", "flower")
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME
VARIABLE = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
#: An image reference with an exact version (name:1.2.3, a suffix such as -alpine and a
#: digest allowed): never a moving tag such as redis:7 or python:3.11-slim.
EXACT_IMAGE = re.compile(r"[a-z0-9./_-]+:\d+\.\d+\.\d+(-[A-Za-z0-9.]+)*(@sha256:[0-9a-f]{64})?")
DUMMIES = {"PORT": "8000", "FLOWER_PORT": "5555"}
#: Secrets for the runs below: each long enough and no placeholder, as the CLI requires
APP_SECRET = "tests-app-key-7f3a9c2e41d8b605"
VERIFY_TOKEN = "tests-verify-token-5d1e"
FLOWER_AUTH = ("admin", "tests-flower-pass-8c41e07b")
REDIS_PASSWORD = "testsRedisPass7c2e9a41d0b83f65"
RABBITMQ_PASSWORD = "testsRabbitPass3e81c0d9a27f46b5"
FIRST_REPLY = "🍕 What size pizza? (small/medium/large)"
PIZZA = ["hi", "large", "pepperoni,mushrooms", "yes"]
PARTITIONS = 16


# -- helpers ------------------------------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every environment variable ``parley.workers.settings.Settings`` reads."""
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(f"PARLEY_{field_name.upper()}")
    return names


def variables(text: str) -> set[str]:
    """The names of every ``${VAR}`` (or ``$VAR``) in the text; ``$$`` escapes one."""
    return {m["name"] or m["bare"] for m in VARIABLE.finditer(text.replace("$$", ""))}


def substitute(text: str, env: Mapping[str, str] | None = None) -> str:
    """As compose or sh would: a value from ``env`` (none: nothing set), else a default
    where given, else a dummy."""

    def one(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        if env is not None and env.get(name):
            return env[name]
        if match["op"] in (":-", "-"):
            return match["arg"]
        return DUMMIES.get(name, f"dummy-{name.lower()}")

    return VARIABLE.sub(one, text)


def argv_of(command: str | list[str], env: Mapping[str, str] | None = None) -> list[str]:
    if isinstance(command, list):
        return [substitute(part, env) for part in command]
    return shlex.split(substitute(command, env))


@functools.cache
def flower_options() -> frozenset[str]:
    """The options ``celery -A parley.workers flower`` takes: Flower's tornado options,
    listed by ``celery -A parley.workers flower -- --help`` (plain ``--help`` shows
    click's only, and Flower silently drops options it does not know, so a typo would go
    unnoticed)."""
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "parley.workers", "flower", "--", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    listed = re.findall(r"^\s+(--[a-z][a-z0-9_-]*)", done.stdout + done.stderr, re.MULTILINE)
    assert "--port" in listed and "--basic-auth" in listed, done.stdout + done.stderr
    return frozenset(listed)


def check_parley_flower(argv: list[str]) -> click.Context:
    """A ``parley flower ...`` line, parsed by the click CLI: what it passes on to Flower
    (``--port``, ``--address`` and any extra ``--name=value``) are Flower's options, and
    the login is not among them (FLOWER_BASIC_AUTH, from the environment, keeps it off
    command lines)."""
    ctx = parse_parley(argv)
    assert ctx.info_name == "flower", argv
    extras = list(ctx.params["flower_options"])
    for arg in extras:
        assert arg.startswith("--") and "=" in arg, f"write flower options as --name=value: {arg}"
    passed = {"--port", "--address"} | {arg.partition("=")[0] for arg in extras}
    unknown = passed - flower_options()
    assert not unknown, f"not Flower options: {unknown}"
    assert "--basic-auth" not in passed, "the login belongs in FLOWER_BASIC_AUTH"
    return ctx


def env_file_names(text: str) -> dict[str, str]:
    """NAME=value lines of a dotenv file (comments and blank lines skipped)."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), line
            found[name] = value
    return found


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def required_variables() -> set[str]:
    """What compose refuses to start without: each ${VAR:?error} (or ${VAR?error})."""
    text = COMPOSE.read_text()
    return {m["name"] for m in VARIABLE.finditer(text) if m["op"] in (":?", "?")}


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def published(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each published port; an empty
    address is every interface."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, Mapping):
            found.append(
                (str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"]))
            )
            continue
        *host, container = str(port).rsplit(":", 1)
        address, _, host_port = host[0].rpartition(":") if host else ("", "", "")
        found.append((address.strip("[]"), host_port, container.split("/")[0]))
    return found


def loopback(address: str) -> bool:
    return address == "localhost" or address == "::1" or address.startswith("127.")


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"redis", "ingress", "worker", "flower"} <= set(services)

    redis_service = services["redis"]
    assert EXACT_IMAGE.fullmatch(redis_service["image"]), redis_service["image"]
    assert redis_service["image"].startswith("redis:7.")
    assert "--appendonly yes" in " ".join(argv_of(redis_service["command"]))
    volume_names = set(compose().get("volumes") or {})
    mounts = [str(v).split(":") for v in redis_service["volumes"]]
    assert any(len(m) >= 2 and m[0] in volume_names and m[1] == "/data" for m in mounts), mounts
    for name, service in services.items():  # every image an exact version
        assert "image" not in service or EXACT_IMAGE.fullmatch(service["image"]), name

    for name in PARLEY_SERVICES:
        service = services[name]
        assert service["build"] == "." or service["build"].get("context") == "."
        url = service_env(service)["PARLEY_REDIS_URL"]
        assert url == "redis://:${REDIS_PASSWORD}@redis:6379", name
        depends = service["depends_on"]
        assert depends["redis"]["condition"] == "service_healthy", name
    assert ENV_EXAMPLE.exists()

    ingress = parse_parley(argv_of(services["ingress"]["command"]))
    assert ingress.info_name == "ingress"
    assert ingress.params["host"] == "0.0.0.0" and ingress.params["port"] == 8000
    assert ("", "8000", "8000") in published(services["ingress"])

    worker = parse_parley(argv_of(services["worker"]["command"]))
    assert worker.info_name == "worker" and worker.params["partitions"] == "auto"
    assert isinstance(load_app(worker.params["app_path"]), ParleyApp)  # the default app
    assert services["worker"]["deploy"]["replicas"] == 2
    assert not published(services["worker"])  # replicas: no host port to fight over
    # the ingress and the workers agree on the partition count
    assert (
        service_env(services["ingress"])["PARLEY_PARTITIONS"]
        == service_env(services["worker"])["PARLEY_PARTITIONS"]
    )


def test_compose_publishes_only_the_ingress_beyond_loopback() -> None:
    """The ingress faces Meta; Flower is on the host's loopback; Redis is not published."""
    services = compose()["services"]
    assert not published(services["redis"])
    for name, service in services.items():
        for address, host_port, container in published(service):
            if name != "ingress":
                assert loopback(address), f"{name} publishes {container} on every interface"
            assert host_port, f"{name}: a random host port for {container}"


def test_compose_flower() -> None:
    flower = compose()["services"]["flower"]
    ctx = check_parley_flower(argv_of(flower["command"]))
    # all of the container's interfaces (else the published port reaches nothing)...
    assert ctx.params["address"] == "0.0.0.0"
    # ...published on the host's loopback only
    assert published(flower) == [("127.0.0.1", "5555", str(ctx.params["port"]))]
    env = service_env(flower)
    assert re.fullmatch(r"\$\{FLOWER_BASIC_AUTH:\?[^}]*\}", env["FLOWER_BASIC_AUTH"])
    # the broker comes from Parley's settings, as the ingress's and the workers' do;
    # CELERY_BROKER_URL would override it in Celery and send Flower elsewhere
    expected = Settings(redis_url=substitute(env["PARLEY_REDIS_URL"])).broker
    assert expected == "redis://:dummy-redis_password@redis:6379/3"
    assert env.get("CELERY_BROKER_URL", expected) == expected


def test_compose_hands_each_secret_only_to_the_services_that_need_it() -> None:
    services = compose()["services"]
    for name, service in services.items():
        assert "env_file" not in service, f"{name}: env_file hands every secret to it"
    for secret, allowed in SECRETS.items():
        seeing = {
            name
            for name, service in services.items()
            if secret in variables(yaml.safe_dump(service)) or secret in service_env(service)
        }
        assert seeing == allowed, f"{secret} reaches {seeing}, not just {allowed}"
    for name in PARLEY_SERVICES:  # the Redis password only inside the Redis URL
        for key, value in service_env(services[name]).items():
            if "REDIS_PASSWORD" in variables(value):
                assert key == "PARLEY_REDIS_URL", (name, key)
    # what a service must have is required (${VAR:?...}): compose refuses to start
    # without it, rather than start a service that cannot work
    required = required_variables()
    assert required >= set(SECRETS) - {"PARLEY_METRICS_TOKEN"}, required


def test_compose_environments_make_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Parley service's environment, as compose fills it from a completed .env
    (optional values left empty), validates as Settings; the ingress's secrets pass its
    checks."""
    filled = {
        **{name: "" for name in env_file_names(ENV_EXAMPLE.read_text())},
        "WHATSAPP_TOKEN": "tests-graph-token-0b4e5f",
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "REDIS_PASSWORD": REDIS_PASSWORD,
    }
    services = compose()["services"]
    for name in PARLEY_SERVICES:
        with monkeypatch.context() as patch:
            for variable in list(os.environ):
                if variable.startswith(("PARLEY_", "WHATSAPP_")):
                    patch.delenv(variable)
            for key, value in service_env(services[name]).items():
                patch.setenv(key, substitute(value, filled))
            settings = Settings()
            assert settings.redis_url == f"redis://:{REDIS_PASSWORD}@redis:6379", name
            if name == "ingress":
                create_ingress(settings)  # no RuntimeError: the secrets are accepted
            if name == "worker":
                assert settings.whatsapp_token.get_secret_value() == filled["WHATSAPP_TOKEN"]


@pytest.mark.timeout(60)
def test_compose_redis_requires_the_password_and_the_healthcheck_gives_it(
    tmp_path: Path,
) -> None:
    """The redis service's command and healthcheck run against a real redis-server (on
    a loopback port here; in the container, redis:6379), with what compose substitutes."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    services = compose()["services"]
    redis_service = services["redis"]
    env = {"REDIS_PASSWORD": REDIS_PASSWORD}
    argv = argv_of(redis_service["command"], env)
    assert argv[0] == "redis-server" and REDIS_PASSWORD in argv
    log_path = tmp_path / "redis-server.log"

    def answers(port: int) -> bool:
        with redis.Redis(
            port=port, password=REDIS_PASSWORD, socket_connect_timeout=1, socket_timeout=1
        ) as client:
            return _pings(client)

    server, port = serve_on_free_port(
        lambda port: [
            *(binary, *argv[1:]),
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)),
        ],
        answers,
        log_path,
        timeout=20,
    )
    try:
        urls = {
            name: substitute(service_env(services[name])["PARLEY_REDIS_URL"], env).replace(
                "@redis:6379", f"@127.0.0.1:{port}"
            )
            for name in PARLEY_SERVICES
        }
        with pytest.raises(redis.AuthenticationError):  # no password, no Redis
            redis.Redis(port=port).ping()
        for name, url in urls.items():  # each Parley URL, and the DBs derived from it
            settings = Settings(redis_url=url)
            for derived in (settings.broker, settings.pipeline, settings.redis_url):
                assert redis.Redis.from_url(derived).ping(), (name, derived)

        test = redis_service["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL", test
        script = substitute(test[1]).replace("redis-cli", f"redis-cli -p {port}", 1)
        health_env = {
            "PATH": os.environ.get("PATH", ""),
            **{k: substitute(v, env) for k, v in service_env(redis_service).items()},
        }
        assert subprocess.run(["sh", "-c", script], env=health_env, timeout=10).returncode == 0
        # and without the password the healthcheck fails (no PONG), rather than pass
        bare = {"PATH": health_env["PATH"]}
        no_auth = subprocess.run(["sh", "-c", script], env=bare, timeout=10, capture_output=True)
        assert no_auth.returncode != 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:  # not up yet (or, on a port taken meanwhile, not Redis)
        return False


def test_every_variable_is_a_setting_or_documented() -> None:
    known = settings_env_names() | set(COMPOSE_ONLY)
    assert {"PARLEY_REDIS_URL", "PARLEY_PARTITIONS", "WHATSAPP_APP_SECRET"} <= known
    assert {"PARLEY_METRICS_TOKEN", "PARLEY_ALLOWED_PHONE_IDS"} <= known
    assert "PARLEY_INSECURE_SKIP_SIGNATURE" not in known  # a CLI flag only, never the env
    used = variables(COMPOSE.read_text())
    assert used, "compose substitutes nothing?"
    assert used <= known, used - known
    services = compose()["services"]
    for name in PARLEY_SERVICES:
        assert set(service_env(services[name])) <= known, name
    # the redis service's own: redis-cli's password variable (its healthcheck)
    assert set(service_env(services["redis"])) == {"REDISCLI_AUTH"}

    example = env_file_names(ENV_EXAMPLE.read_text())
    assert set(example) <= known, set(example) - known
    assert set(example) >= REQUIRED_IN_ENV_EXAMPLE, REQUIRED_IN_ENV_EXAMPLE - set(example)
    # what compose substitutes without a default must be in the example
    no_default = {
        m["name"] or m["bare"]
        for m in VARIABLE.finditer(COMPOSE.read_text())
        if m["op"] not in (":-", "-")
    }
    assert no_default <= set(example), no_default - set(example)
    for path in (COMPOSE, ENV_EXAMPLE, PROCFILE, DOCKERFILE):
        assert "INSECURE" not in path.read_text().upper(), path.name


def test_env_example_values_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    text = ENV_EXAMPLE.read_text()
    lines = text.splitlines()
    example = env_file_names(text)
    for name in example:  # each with a comment right above it
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{name}="))
        assert index > 0 and lines[index - 1].startswith("#"), f"{name} has no comment"
    for name in list(os.environ):
        if name.startswith(("PARLEY_", "WHATSAPP_")):
            monkeypatch.delenv(name)
    setting_names = settings_env_names()
    for name, value in example.items():
        if name in setting_names:
            monkeypatch.setenv(name, value)
    settings = Settings()  # the example's values validate
    assert settings.partitions == int(example["PARLEY_PARTITIONS"])
    assert settings.lease_ttl == float(example["PARLEY_LEASE_TTL"])
    assert settings.allowed_phone_ids == frozenset()  # empty: any
    assert not settings.metrics_token  # empty: /metrics for loopback clients only
    assert isinstance(load_app(example["PARLEY_APP"]), ParleyApp)
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_env_example_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No value in .env.example works as a credential: every secret is empty, so a copy
    not filled in starts nothing — compose refuses an empty ${VAR:?}, the ingress an
    absent app secret, ``parley flower`` an absent login."""
    example = env_file_names(ENV_EXAMPLE.read_text())
    for secret in SECRETS:
        assert example[secret] == "", f"{secret} must be empty in .env.example"
    required = required_variables()
    assert required and all(example.get(name) == "" for name in required), required

    for name in list(os.environ):
        if name.startswith(("PARLEY_", "WHATSAPP_")):
            monkeypatch.delenv(name)
    for name, value in example.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match="WHATSAPP_APP_SECRET"):
        create_ingress(Settings())

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "CELERY_"))}
    env["FLOWER_BASIC_AUTH"] = example["FLOWER_BASIC_AUTH"]
    done = subprocess.run(  # a process: were it not refused, it would exec Flower
        [sys.executable, "-c", "from parley.cli import main; main()", "flower"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "FLOWER_BASIC_AUTH" in errors[0], done.stderr


# -- docker-compose.rabbitmq.yml ------------------------------------------------------------


def merged(base: Any, override: Any) -> Any:
    """``docker compose -f base -f override``: mappings merge key by key (a service's
    environment and depends_on too), anything else the override replaces."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        return {
            key: merged(base[key], override[key])
            if key in base and key in override
            else base.get(key, override.get(key))
            for key in {**base, **override}
        }
    return override


def compose_rabbitmq() -> dict[str, Any]:
    """The override on its own."""
    return yaml.safe_load(COMPOSE_RABBITMQ.read_text())


def compose_on_rabbitmq() -> dict[str, Any]:
    """What compose runs with both files."""
    return merged(compose(), compose_rabbitmq())


AMQP_URL = "amqp://parley:${RABBITMQ_PASSWORD}@rabbitmq:5672/"


def test_compose_rabbitmq_override_services() -> None:
    override = compose_rabbitmq()
    assert set(override["services"]) == {"rabbitmq", *PARLEY_SERVICES}
    services = compose_on_rabbitmq()["services"]
    rabbitmq = services["rabbitmq"]
    assert EXACT_IMAGE.fullmatch(rabbitmq["image"]), rabbitmq["image"]
    assert re.fullmatch(r"rabbitmq:\d+\.\d+\.\d+-management-alpine", rabbitmq["image"])
    assert rabbitmq["hostname"] == "rabbitmq"  # its data is kept under rabbit@<hostname>
    volume_names = set(compose_on_rabbitmq().get("volumes") or {})
    assert "redis-data" in volume_names  # the base file's, still there
    mounts = [str(v).split(":") for v in rabbitmq["volumes"]]
    assert any(m[0] in volume_names and m[1] == "/var/lib/rabbitmq" for m in mounts), mounts
    assert "rabbitmq-diagnostics" in rabbitmq["healthcheck"]["test"]
    env = service_env(rabbitmq)
    assert set(env) == {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"}
    assert re.fullmatch(r"\$\{RABBITMQ_PASSWORD:\?[^}]+\}", env["RABBITMQ_DEFAULT_PASS"])
    for name in PARLEY_SERVICES:
        service = services[name]
        assert service["build"] == "." and service["command"], name  # the base's, kept
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy", name
        service_vars = service_env(service)
        # the pipeline stays on Redis; the broker URL's user is RabbitMQ's one user
        assert service_vars["PARLEY_REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379"
        assert service_vars["PARLEY_BROKER_URL"] == AMQP_URL, name
        assert AMQP_URL.startswith(f"amqp://{env['RABBITMQ_DEFAULT_USER']}:"), name
    # whoever declares a queue first sets its type: the ingress and the workers agree
    ingress, worker = service_env(services["ingress"]), service_env(services["worker"])
    assert ingress["PARLEY_AMQP_QUEUE_TYPE"] == worker["PARLEY_AMQP_QUEUE_TYPE"]
    # the management UI on the host's loopback only; AMQP not published at all
    assert published(rabbitmq) == [("127.0.0.1", "15672", "15672")]
    for name, service in services.items():
        for address, _, container in published(service):
            assert name == "ingress" or loopback(address), (name, container)


def test_compose_rabbitmq_hands_its_password_only_to_the_services_that_need_it() -> None:
    services = compose_on_rabbitmq()["services"]
    for name, service in services.items():
        assert "env_file" not in service, name
    for secret, allowed in {**SECRETS, **RABBITMQ_SECRETS}.items():
        seeing = {
            name
            for name, service in services.items()
            if secret in variables(yaml.safe_dump(service)) or secret in service_env(service)
        }
        assert seeing == allowed, f"{secret} reaches {seeing}, not just {allowed}"
    inside = {"PARLEY_BROKER_URL", "FLOWER_BROKER_API"}  # only inside these URLs
    for name in PARLEY_SERVICES:
        for key, value in service_env(services[name]).items():
            if "RABBITMQ_PASSWORD" in variables(value):
                assert key in inside, (name, key)
    text = COMPOSE_RABBITMQ.read_text()
    required = {m["name"] for m in VARIABLE.finditer(text) if m["op"] in (":?", "?")}
    assert required == {"RABBITMQ_PASSWORD"}, required
    example = env_file_names(ENV_EXAMPLE.read_text())
    assert example.get("RABBITMQ_PASSWORD") == "", "RABBITMQ_PASSWORD: empty in .env.example"
    no_default = {
        m["name"] or m["bare"] for m in VARIABLE.finditer(text) if m["op"] not in (":-", "-")
    }
    assert no_default <= set(example), no_default - set(example)
    known = settings_env_names() | set(COMPOSE_ONLY)
    assert variables(text) <= known, variables(text) - known
    for name in PARLEY_SERVICES:
        assert set(service_env(services[name])) <= known, name


def test_compose_rabbitmq_environments_make_valid_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With both files, each Parley service's environment validates as Settings whose
    broker is RabbitMQ and whose pipeline is still Redis; the ingress builds (its
    confirming publisher connects on first use); Flower's command and its management
    API option are Flower's."""
    filled = {
        **{name: "" for name in env_file_names(ENV_EXAMPLE.read_text())},
        "WHATSAPP_TOKEN": "tests-graph-token-0b4e5f",
        "WHATSAPP_APP_SECRET": APP_SECRET,
        "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "REDIS_PASSWORD": REDIS_PASSWORD,
        "RABBITMQ_PASSWORD": RABBITMQ_PASSWORD,
    }
    services = compose_on_rabbitmq()["services"]
    for name in PARLEY_SERVICES:
        with monkeypatch.context() as patch:
            for variable in list(os.environ):
                if variable.startswith(("PARLEY_", "WHATSAPP_", "FLOWER_", "CELERY_")):
                    patch.delenv(variable)
            for key, value in service_env(services[name]).items():
                patch.setenv(key, substitute(value, filled))
            settings = Settings()
            assert settings.broker == f"amqp://parley:{RABBITMQ_PASSWORD}@rabbitmq:5672/", name
            assert settings.pipeline == f"redis://:{REDIS_PASSWORD}@redis:6379/3", name
            if name == "ingress":
                create_ingress(settings)
            if name == "flower":
                check_parley_flower(argv_of(services[name]["command"], filled))
                api = substitute(service_env(services[name])["FLOWER_BROKER_API"], filled)
                assert api == f"http://parley:{RABBITMQ_PASSWORD}@rabbitmq:15672/api/"
                assert "--broker-api" in flower_options()  # what FLOWER_BROKER_API sets


# -- Dockerfile -----------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    bases = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(bases) == 1 and EXACT_IMAGE.fullmatch(bases[0]), bases  # an exact version
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", bases[0]), bases
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    # the tested, audited versions (constraints.txt), not whatever is newest that day
    assert re.search(r"pip install -c constraints\.txt \.(\s|$)", runs), runs
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")

    copied = set()
    for kw, rest in instructions:
        if kw == "COPY":
            *sources, _ = shlex.split(rest)
            copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    if "." in copied:  # everything: then .env (secrets) must be kept out
        assert ".env" in (ROOT / ".dockerignore").read_text().split()
    else:
        # what `pip install .` needs: pyproject, its readme, every package, constraints
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())
        needed = {"pyproject.toml", project["project"]["readme"], "constraints.txt"}
        needed |= set(project["tool"]["setuptools"]["package-dir"].values())  # the folders
        assert needed <= copied, needed - copied
        assert ".env" not in copied

    cmd = [rest for kw, rest in instructions if kw == "CMD"][-1]
    ctx = parse_parley(json.loads(cmd))  # exec form
    assert ctx.info_name == "ingress" and ctx.params["port"] == 8000
    assert ctx.params["host"] == "0.0.0.0"  # reachable from outside the container


def workdir(instructions: list[tuple[str, str]]) -> str:
    """Where the image's commands run: its last WORKDIR."""
    return [rest for kw, rest in instructions if kw == "WORKDIR"][-1]


def test_a_users_app_is_mounted_or_copied_where_the_image_runs_commands() -> None:
    """compose mounts the user's folder (PARLEY_APP_DIR) at the image's working folder,
    and app/Dockerfile (FROM parley) copies it there: where `--app myapp:app` looks."""
    home = workdir(dockerfile_instructions())
    worker = compose()["services"]["worker"]
    assert worker.get("working_dir", home) == home
    mounts = [substitute(str(v)).split(":") for v in worker["volumes"]]
    assert ["./app", home, "ro"] in mounts, mounts
    assert (ROOT / "app" / "myapp.py").exists()
    app_file = (ROOT / "app" / "Dockerfile").read_text()
    lines = [line.split(None, 1) for line in app_file.splitlines() if line and line[0] != "#"]
    assert lines[0] == ["FROM", "parley"], lines
    copies = [shlex.split(rest) for kw, rest in lines if kw == "COPY"]
    assert copies and copies[-1][-2:] == [".", f"{home}/"], copies


@pytest.mark.timeout(120)
def test_compose_worker_runs_the_users_app_from_its_mounted_folder(tmp_path: Path) -> None:
    """The worker service's command, with PARLEY_APP=myapp:app as .env would set it, run
    from a copy of the mounted folder (as in the container) against a real Redis."""
    mounted = tmp_path / "srv-app"
    shutil.copytree(ROOT / "app", mounted)
    worker = compose()["services"]["worker"]
    env = {"PARLEY_APP": "myapp:app", "WHATSAPP_TOKEN": "t", "REDIS_PASSWORD": REDIS_PASSWORD}
    server = RedisServer().start()
    log_path = tmp_path / "worker.log"
    try:
        process_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "WHATSAPP_"))},
            **{k: substitute(v, env) for k, v in service_env(worker).items()},
            "PARLEY_REDIS_URL": server.url,  # the container's is redis:6379, with a password
        }
        argv = argv_of(worker["command"], env)
        assert parse_parley(argv).params["app_path"] == "myapp:app"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "parley"), *argv[1:]],
                cwd=mounted,
                env=process_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(
                lambda: (
                    process.poll() is None
                    and f"holding {PARTITIONS} of {PARTITIONS} partitions" in log_path.read_text()
                ),
                timeout=60,
                what=f"the worker to take the partitions:\n{log_path.read_text()[-3000:]}",
            )
            assert "app myapp:app" in log_path.read_text()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log_path.read_text()[-3000:]
    finally:
        server.stop()


# -- Procfile -------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    return dict(parse_procfile(PROCFILE.read_text()).processes)


def test_procfile_commands() -> None:
    processes = procfile()
    assert list(processes) == ["web", "worker", "flower"]
    known = settings_env_names() | set(COMPOSE_ONLY) | set(PROCFILE_ONLY)
    used = variables(PROCFILE.read_text())
    assert used <= known, used - known

    web = parse_parley(argv_of(processes["web"]))
    assert web.info_name == "ingress" and web.params["host"] == "127.0.0.1"
    assert "${PORT" in processes["web"]  # honcho's (or the platform's) port
    worker = parse_parley(argv_of(processes["worker"]))
    assert worker.info_name == "worker" and worker.params["partitions"] == "auto"
    assert isinstance(load_app(worker.params["app_path"]), ParleyApp)
    flower = check_parley_flower(argv_of(processes["flower"]))
    assert flower.params["port"] == int(DUMMIES["FLOWER_PORT"])
    assert "${FLOWER_PORT" in processes["flower"]
    assert loopback(flower.params["address"])  # the default: this machine only


def descendants(pid: int) -> list[int]:
    """Every process below pid (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; its new parent may just not reap it


def get(url: str, **kwargs: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2, **kwargs)
    except httpx.TransportError:
        return None


@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_procfile_under_honcho_serves_a_pizza_conversation(tmp_path: Path) -> None:
    server = RedisServer().start()
    # a developer's own .env must not leak in: honcho reads -e (default .env) and lets it
    # override the environment, and takes PORT from it before -p; so an empty file and -p
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PARLEY_", "WHATSAPP_", "FLOWER_", "CELERY_"))
    }
    log_path = tmp_path / "honcho.log"
    honcho: subprocess.Popen[bytes] | None = None
    children: list[int] = []

    def running(predicate: Callable[[], Any]) -> Callable[[], Any]:
        """predicate, while honcho runs (it stops everything when one process exits)."""

        def check() -> Any:
            assert honcho is not None
            if honcho.poll() is not None:
                output = log_path.read_text(errors="replace")
                error = PortTaken if port_taken(output) else AssertionError
                raise error(f"honcho exited ({honcho.returncode}):\n{output[-4000:]}")
            return predicate()

        return check

    try:
        with FakeGraphAPI(token="t") as graph:

            def start(port: int, flower_port: int) -> tuple[str, str]:
                """honcho running the Procfile, the ingress and Flower answering on these
                ports; PortTaken (honcho stopped) if something took one meanwhile."""
                nonlocal honcho
                server.client().flushall()  # what the worker of an earlier try left
                env = {
                    **inherited,
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}",
                    "PARLEY_REDIS_URL": server.url,
                    "PARLEY_PARTITIONS": str(PARTITIONS),
                    "PARLEY_LEASE_TTL": "3",
                    "PARLEY_APP": "parley.examples.pizza:app",
                    "WHATSAPP_TOKEN": "t",
                    "WHATSAPP_API_BASE": graph.url,
                    "WHATSAPP_APP_SECRET": APP_SECRET,
                    "WHATSAPP_VERIFY_TOKEN": VERIFY_TOKEN,
                    "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
                    "FLOWER_PORT": str(flower_port),
                    "PORT": str(port),
                }
                with log_path.open("wb") as log:
                    honcho = subprocess.Popen(
                        [
                            *(sys.executable, "-m", "honcho", "start", "--no-colour"),
                            *("-f", str(PROCFILE), "-d", str(ROOT), "-e", str(empty_env)),
                            *("-p", str(port), "web", "worker", "flower"),
                        ],
                        cwd=ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                base, flower = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{flower_port}/"
                try:
                    health = running(lambda: (r := get(f"{base}/healthz")) and r.status_code == 200)
                    wait_for(health, timeout=60, what="the ingress's /healthz")
                    wait_for(running(lambda: get(flower)), timeout=60, what="flower to listen")
                except PortTaken:
                    stop(honcho)
                    raise
                return base, flower

            base, flower = on_free_port(lambda port: start(port, free_port()))
            assert honcho is not None
            process = honcho
            pipeline = redis.Redis.from_url(server.db_url(3))
            wait_for(
                running(lambda: None not in holders(pipeline, PARTITIONS)),
                timeout=60,
                what="the worker to own every partition",
            )
            assert len(live_nodes(pipeline)) == 1

            assert get(flower).status_code == 401  # type: ignore[union-attr]
            assert get(flower, auth=("admin", "wrong")).status_code == 401  # type: ignore[union-attr]
            assert get(flower, auth=FLOWER_AUTH).status_code == 200  # type: ignore[union-attr]

            user = "51955555555"
            for count, text in enumerate(PIZZA, start=1):
                body = orjson.dumps(delivery([text_message(user, text)]))
                response = httpx.post(
                    f"{base}/webhook", content=body, headers=sign(body, APP_SECRET), timeout=10
                )
                assert response.status_code == 200, response.text
                assert response.json() == {"accepted": 1, "duplicates": 0}
                wait_for(
                    running(lambda n=count: len(graph.texts_to(user)) >= n),
                    timeout=30,
                    what=f"reply {count} to {text!r}",
                )
            replies = graph.texts_to(user)
            assert len(replies) == 4 and replies[0] == FIRST_REPLY, replies
            assert re.fullmatch(r"✅ Order #\d+ confirmed: \$17\.99", replies[-1]), replies
            unsigned = httpx.post(f"{base}/webhook", content=body, timeout=10)
            assert unsigned.status_code in (401, 403)

            children = descendants(process.pid)
            assert len(children) >= 3, children  # honcho's runners and their commands
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 143  # honcho's code for SIGTERM
            wait_for(
                lambda: not [pid for pid in children if alive(pid)],
                timeout=10,
                what=f"honcho's children to exit: {[p for p in children if alive(p)]}",
            )
            output = log_path.read_text(errors="replace")
            # every process stopped on SIGTERM, within honcho's grace (no SIGKILL needed)
            assert "sending SIGTERM" in output and "SIGKILL" not in output, output[-4000:]
            # and the worker left cleanly: its leases released, its node gone
            assert holders(pipeline, PARTITIONS) == [None] * PARTITIONS
            assert live_nodes(pipeline) == {}
            pipeline.close()
    finally:
        if honcho is not None:
            stop(honcho, children)
        server.close()


def stop(honcho: subprocess.Popen[bytes], children: list[int] | None = None) -> None:
    """honcho and every process below it (or in children) ended, by SIGTERM or else KILL."""
    children = [*(children or []), *(descendants(honcho.pid) if honcho.poll() is None else [])]
    if honcho.poll() is None:
        honcho.terminate()
        try:
            honcho.wait(timeout=15)
        except subprocess.TimeoutExpired:
            honcho.kill()
            honcho.wait()
    for pid in children:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
