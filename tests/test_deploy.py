"""The deployment files — docker-compose.yml, Dockerfile, .env.example and Procfile —
checked against the real CLI, settings and Celery app; then the Procfile run for real
under honcho (a redis-server the test starts, the ingress, an auto worker and Flower)
through one pizza conversation and a SIGTERM."""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
import pytest
import redis
import yaml
from celery import Celery
from pydantic import AliasChoices

from parley.cli import main
from parley.testing import FakeGraphAPI, RedisServer, delivery, free_port, text_message
from parley.workers.builder import ParleyApp, load_app
from parley.workers.leases import holders, live_nodes
from parley.workers.settings import Settings
from tests.helpers import sign, wait_for

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
PROCFILE = ROOT / "Procfile"

#: Variables the deployment files use that are not Parley settings (documented here).
COMPOSE_ONLY = {
    "FLOWER_BASIC_AUTH": "Flower's login, user:password (its --basic-auth)",
    "PARLEY_APP": "the workers' --app, MODULE:ATTR",
}
#: And the Procfile's: honcho sets PORT for each process type.
PROCFILE_ONLY = {"PORT": "set by honcho", "FLOWER_PORT": "Flower's --port"}
#: What .env.example must offer at least.
REQUIRED_IN_ENV_EXAMPLE = {
    "WHATSAPP_TOKEN",
    "WHATSAPP_PHONE_ID",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "PARLEY_APP",
    "PARLEY_PARTITIONS",
    "PARLEY_LEASE_TTL",
    "FLOWER_BASIC_AUTH",
}
#: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME
VARIABLE = re.compile(
    r"\$(?:\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
DUMMIES = {"FLOWER_BASIC_AUTH": "user:password", "PORT": "8000", "FLOWER_PORT": "5555"}
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


def substitute(text: str) -> str:
    """As compose or sh would with nothing set: a default where given, else a dummy."""

    def one(match: re.Match[str]) -> str:
        name = match["name"] or match["bare"]
        if match["op"] in (":-", "-"):
            return match["arg"]
        return DUMMIES.get(name, f"dummy-{name.lower()}")

    return VARIABLE.sub(one, text)


def argv_of(command: str | list[str]) -> list[str]:
    if isinstance(command, list):
        return [substitute(part) for part in command]
    return shlex.split(substitute(command))


def parse_parley(argv: list[str]) -> click.Context:
    """Parse a ``parley ...`` command line with the real click CLI: an unknown option,
    a missing required one or a bad value raises (and fails the test)."""
    assert argv[0] == "parley", argv
    args = argv[1:]
    ctx = main.make_context("parley", list(args))
    command: click.Command = main
    while isinstance(command, click.Group):
        assert not [p for p in command.params if p.name != "help"], "groups take no options"
        name, *args = args
        sub = command.get_command(ctx, name)
        assert sub is not None, f"parley has no command {name!r}"
        command = sub
        ctx = command.make_context(name, list(args), parent=ctx)
    return ctx


@functools.cache
def flower_options() -> frozenset[str]:
    """The options ``celery -A workers flower`` takes: Flower's tornado options, listed by
    ``celery -A workers flower -- --help`` (plain ``--help`` shows click's only, and Flower
    silently drops options it does not know, so a typo would go unnoticed)."""
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


def check_flower(argv: list[str]) -> dict[str, str]:
    """A ``celery -A parley.workers flower --opt=value ...`` line: Celery finds the app
    there (as ``-A`` does) and every option is one of Flower's. Returns the options."""
    assert argv[:4] == ["celery", "-A", "parley.workers", "flower"], argv
    from celery.app.utils import find_app

    assert isinstance(find_app("parley.workers"), Celery)
    options = {}
    for arg in argv[4:]:
        assert arg.startswith("--") and "=" in arg, f"write flower options as --name=value: {arg}"
        name, _, value = arg.partition("=")
        options[name] = value
    pytest.importorskip("flower")
    unknown = set(options) - flower_options()
    assert not unknown, f"not Flower options: {unknown}"
    return options


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


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def ports(service: Mapping[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


# -- docker-compose.yml ---------------------------------------------------------------------


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"redis", "ingress", "worker", "flower"} <= set(services)

    redis_service = services["redis"]
    assert str(redis_service["image"]).startswith("redis:7")
    assert "--appendonly yes" in " ".join(argv_of(redis_service["command"]))
    volume_names = set(compose().get("volumes") or {})
    mounts = [str(v).split(":") for v in redis_service["volumes"]]
    assert any(len(m) >= 2 and m[0] in volume_names and m[1] == "/data" for m in mounts), mounts
    health = redis_service["healthcheck"]["test"]
    assert "redis-cli" in str(health) and "ping" in str(health)

    for name in ("ingress", "worker", "flower"):
        service = services[name]
        assert service["build"] == "." or service["build"].get("context") == "."
        env_file = service["env_file"]
        assert env_file == ".env" or env_file == [".env"], name
        assert service_env(service)["PARLEY_REDIS_URL"] == "redis://redis:6379", name
        depends = service["depends_on"]
        assert "redis" in depends, name
        if name != "flower":
            assert depends["redis"]["condition"] == "service_healthy", name
    assert ENV_EXAMPLE.exists()

    ingress = parse_parley(argv_of(services["ingress"]["command"]))
    assert ingress.info_name == "ingress"
    assert ingress.params["host"] == "0.0.0.0" and ingress.params["port"] == 8000
    assert "8000:8000" in ports(services["ingress"])

    worker = parse_parley(argv_of(services["worker"]["command"]))
    assert worker.info_name == "worker" and worker.params["partitions"] == "auto"
    assert isinstance(load_app(worker.params["app_path"]), ParleyApp)  # the default app
    assert services["worker"]["deploy"]["replicas"] == 2
    assert not ports(services["worker"])  # replicas: no host port to fight over


def test_compose_flower_uses_basic_auth_from_the_environment() -> None:
    flower = compose()["services"]["flower"]
    command = flower["command"]
    raw = command if isinstance(command, str) else " ".join(command)
    assert re.search(r"--basic-auth=\$\{FLOWER_BASIC_AUTH(:\?[^}]*)?\}", raw), raw
    options = check_flower(argv_of(command))
    assert options["--port"] == "5555" and "5555:5555" in ports(flower)
    assert options["--basic-auth"] == DUMMIES["FLOWER_BASIC_AUTH"]
    # the broker comes from Parley's settings, as the ingress's and the workers' do;
    # CELERY_BROKER_URL would override it in Celery and send Flower elsewhere
    env = service_env(flower)
    expected = Settings(redis_url=env["PARLEY_REDIS_URL"]).broker
    assert expected == "redis://redis:6379/3"
    assert env.get("CELERY_BROKER_URL", expected) == expected


def test_every_variable_is_a_setting_or_documented() -> None:
    known = settings_env_names() | set(COMPOSE_ONLY)
    assert {"PARLEY_REDIS_URL", "PARLEY_PARTITIONS", "WHATSAPP_APP_SECRET"} <= known
    used = variables(COMPOSE.read_text())
    assert used, "compose substitutes nothing?"
    assert used <= known, used - known
    for name, service in compose()["services"].items():
        assert set(service_env(service)) <= known, name

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
    settings = Settings()  # the placeholders validate
    assert settings.partitions == int(example["PARLEY_PARTITIONS"])
    assert settings.lease_ttl == float(example["PARLEY_LEASE_TTL"])
    assert isinstance(load_app(example["PARLEY_APP"]), ParleyApp)
    assert re.fullmatch(r"[^:\s]+:\S+", example["FLOWER_BASIC_AUTH"])
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


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
    assert [rest for kw, rest in instructions if kw == "FROM"] == ["python:3.11-slim"]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), runs
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
        # what `pip install .` needs: pyproject, its readme and every package
        import tomllib

        project = tomllib.loads((ROOT / "pyproject.toml").read_text())
        needed = {"pyproject.toml", project["project"]["readme"]}
        needed |= set(project["tool"]["setuptools"]["package-dir"].values())  # the folders
        assert needed <= copied, needed - copied
        assert ".env" not in copied

    cmd = [rest for kw, rest in instructions if kw == "CMD"][-1]
    ctx = parse_parley(json.loads(cmd))  # exec form
    assert ctx.info_name == "ingress" and ctx.params["port"] == 8000
    assert ctx.params["host"] == "0.0.0.0"  # reachable from outside the container


# -- Procfile -------------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    honcho_environ = pytest.importorskip("honcho.environ")
    return dict(honcho_environ.parse_procfile(PROCFILE.read_text()).processes)


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
    options = check_flower(argv_of(processes["flower"]))
    assert options["--basic-auth"] == DUMMIES["FLOWER_BASIC_AUTH"]
    assert re.search(r"--basic-auth=\$\{FLOWER_BASIC_AUTH(:\?[^}]*)?\}", processes["flower"])


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
    pytest.importorskip("honcho")
    pytest.importorskip("flower")
    server = RedisServer().start()
    port, flower_port = free_port(), free_port()
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
    try:
        with FakeGraphAPI(token="t") as graph, log_path.open("wb") as log:
            env = {
                **inherited,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{inherited.get('PATH', '')}",
                "PARLEY_REDIS_URL": server.url,
                "PARLEY_PARTITIONS": str(PARTITIONS),
                "PARLEY_LEASE_TTL": "2",
                "PARLEY_APP": "parley.examples.pizza:app",
                "WHATSAPP_TOKEN": "t",
                "WHATSAPP_API_BASE": graph.url,
                "WHATSAPP_APP_SECRET": "secret",
                "WHATSAPP_VERIFY_TOKEN": "v",
                "FLOWER_BASIC_AUTH": "admin:s3cret",
                "FLOWER_PORT": str(flower_port),
                "PORT": str(port),
            }
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
            process = honcho

            def running(predicate: Callable[[], Any]) -> Callable[[], Any]:
                def check() -> Any:
                    if process.poll() is not None:
                        output = log_path.read_text(errors="replace")[-4000:]
                        raise AssertionError(f"honcho exited ({process.returncode}):\n{output}")
                    return predicate()

                return check

            base = f"http://127.0.0.1:{port}"
            health = running(lambda: (r := get(f"{base}/healthz")) and r.status_code == 200)
            wait_for(health, timeout=60, what="the ingress's /healthz")
            pipeline = redis.Redis.from_url(server.db_url(3))
            wait_for(
                running(lambda: None not in holders(pipeline, PARTITIONS)),
                timeout=60,
                what="the worker to own every partition",
            )
            assert len(live_nodes(pipeline)) == 1

            flower = f"http://127.0.0.1:{flower_port}/"
            wait_for(running(lambda: get(flower)), timeout=60, what="flower to listen")
            assert get(flower).status_code == 401  # type: ignore[union-attr]
            assert get(flower, auth=("admin", "wrong")).status_code == 401  # type: ignore[union-attr]
            assert get(flower, auth=("admin", "s3cret")).status_code == 200  # type: ignore[union-attr]

            user = "51955555555"
            for count, text in enumerate(PIZZA, start=1):
                body = orjson.dumps(delivery([text_message(user, text)]))
                response = httpx.post(
                    f"{base}/webhook", content=body, headers=sign(body, "secret"), timeout=10
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
        if honcho is not None and honcho.poll() is None:
            children = descendants(honcho.pid)
            honcho.terminate()
            try:
                honcho.wait(timeout=15)
            except subprocess.TimeoutExpired:
                honcho.kill()
                honcho.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.close()
