"""The ``parley`` command as an operator meets it: run from their own folder, one
``Error:`` line for a mistake, never a traceback."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from parley import __version__
from parley.cli import main
from parley.ingress.accept import Acceptor
from parley.replay import Entry, as_replay, select
from parley.status import still_live
from parley.testing import envelope, free_port
from parley.wire.envelope import Envelope
from parley.wire.keys import DEAD_LETTERS, REPLAY_LOG
from parley.workers.leases import Leases
from parley.workers.pipeline import RedisPipelineStore
from parley.workers.settings import Settings

MYAPP = """\
from parley import WappaBuilder, WappaEventHandler


class Echo(WappaEventHandler):
    async def handle_message(self, webhook):
        count = await self.user_cache.increment_field("profile", "message_count")
        await self.messenger.send_text(
            f"#{count}: {webhook.get_message_text()}", webhook.user.user_id
        )


app = WappaBuilder().with_redis_cache().with_event_handler(Echo()).build()
"""


def parley(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=cwd,
        env={**inherited, "PARLEY_REDIS_URL": f"redis://127.0.0.1:{free_port()}", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,  # no terminal: nothing can be confirmed by answering
    )


def one_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's own folder holding their app, away from this checkout."""
    (tmp_path / "myapp.py").write_text(MYAPP)
    return tmp_path


def test_the_app_is_found_from_the_current_folder(folder: Path) -> None:
    # the module imports (an attribute error, not ModuleNotFoundError) from its folder
    one_error(parley("worker", "--app", "myapp:nope", cwd=folder), 2, "myapp", "'nope'")


def test_parley_app_names_the_app(folder: Path) -> None:
    one_error(parley("worker", cwd=folder, PARLEY_APP="myapp:nope"), 2, "'nope'")


@pytest.mark.parametrize(
    ("app", "words"),
    [
        ("nosuchmod:app", ("cannot import nosuchmod",)),
        ("parley.examples.pizza:nope", ("no attribute 'nope'",)),
        ("parley.examples.pizza", ("MODULE:ATTR",)),
        ("parley.examples.pizza:SIZES", ("not a ParleyApp",)),
    ],
)
def test_a_bad_app_is_one_line(folder: Path, app: str, words: tuple[str, ...]) -> None:
    one_error(parley("worker", "--app", app, cwd=folder), 2, *words)


def test_version_and_short_help(folder: Path) -> None:
    version = parley("--version", cwd=folder)
    assert version.returncode == 0 and version.stdout.strip() == f"parley, version {__version__}"
    short = parley("worker", "-h", cwd=folder)
    assert short.returncode == 0 and "PARLEY_APP" in short.stdout


@pytest.mark.parametrize("command", [("status",), ("dead", "list"), ("replay", "--dry-run")])
def test_redis_down_is_one_line(folder: Path, command: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there
    result = parley(*command, cwd=folder, PARLEY_REDIS_URL=f"redis://127.0.0.1:{port}")
    one_error(result, 1, f"pipeline Redis at redis://127.0.0.1:{port}/3")


def test_a_bad_redis_url_is_one_line(folder: Path) -> None:
    one_error(parley("status", cwd=folder, PARLEY_REDIS_URL="notaurl"), 2, "redis_url")


def test_an_unknown_dead_letter_id_is_one_line(folder: Path, redis_url: str) -> None:
    result = parley("dead", "show", "nope", cwd=folder, PARLEY_REDIS_URL=redis_url)
    one_error(result, 1, "no dead letter nope", "parley dead list")
    one_error(parley("dead", "drop", "a b", cwd=folder), 2, "no dead letter 'a b'")


# -- the operator commands: dead letters, replay, status, demo (issue 14) ---------------


def fail(text: str) -> BaseException:
    """An exception with a traceback, as a handler raises it."""
    try:
        raise ValueError(text)
    except ValueError as exc:
        return exc


def dead_letter(redis_url: str, env: Envelope, replaying: Entry | None = None) -> str:
    """Dead-letter ``env`` as a worker does (its store, its script); with ``replaying``,
    a replay of that dead letter (as ``parley replay --dead`` sends it) failing again."""

    async def run() -> str:
        client = AsyncRedis.from_url(Settings(redis_url=redis_url).pipeline)
        store = RedisPipelineStore(client, done_ttl=3600)
        try:
            envelope = as_replay(replaying, "replay-test", dead=True) if replaying else env
            return await store.dead_letter(envelope, 0, fail("boom"), "H", 1, time.time())
        finally:
            await store.aclose()

    return asyncio.run(run())


def dead_entries(redis_url: str) -> list[Entry]:
    return list(select(pipeline(redis_url), DEAD_LETTERS))


def pipeline(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(Settings(redis_url=redis_url).pipeline)


def in_a_terminal(args: list[str], answer: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """``parley ARGS`` with a terminal for stdin, answering ``answer`` to its question."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "parley", *args],
            cwd=cwd,
            env={**inherited, **env},
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.write(primary, answer.encode() + b"\n")  # the terminal holds it until read
        out, _ = process.communicate(timeout=60)
    finally:
        os.close(primary)
        os.close(secondary)
    assert "Traceback" not in out, out
    return process.returncode, out


def test_dead_drop_all_asks_first(folder: Path, redis_url: str) -> None:
    for n in range(2):
        dead_letter(redis_url, envelope("5191000001", f"bad {n}"))
    env = {"PARLEY_REDIS_URL": redis_url}
    # no terminal (a script, or the command pasted as a pipeline): refused, nothing dropped
    one_error(parley("dead", "drop", "--all", cwd=folder, **env), 1, "nothing dropped", "--yes")
    assert len(dead_entries(redis_url)) == 2
    code, out = in_a_terminal(["dead", "drop", "--all"], "n", folder, env)
    assert code == 1 and "Drop all 2 dead letters?" in out and "nothing dropped" in out, out
    assert len(dead_entries(redis_url)) == 2
    code, out = in_a_terminal(["dead", "drop", "--all"], "y", folder, env)
    assert code == 0 and out.rstrip().endswith("dropped 2 dead letters"), out
    assert dead_entries(redis_url) == []

    dead_letter(redis_url, envelope("5191000001", "bad again"))
    result = parley("dead", "drop", "--all", "--yes", cwd=folder, **env)
    assert result.returncode == 0 and result.stdout == "dropped 1 dead letter\n", result
    assert (
        parley("dead", "drop", "--all", cwd=folder, **env).stdout == "there are no dead letters\n"
    )
    one_error(parley("dead", "drop", cwd=folder, **env), 2, "give a dead letter id or --all")


def test_replay_asks_on_a_terminal_only(folder: Path, redis_url: str) -> None:
    asyncio.run(accept(redis_url, [envelope("5191000002", "hi")]))
    result = parley("replay", cwd=folder, PARLEY_REDIS_URL=redis_url)
    one_error(result, 1, "nothing replayed", "--yes")
    assert "1 logged webhook matches" in result.stdout
    code, out = in_a_terminal(["replay"], "y", folder, {"PARLEY_REDIS_URL": redis_url})
    assert code == 0 and "Replay 1 logged webhook?" in out and "replayed 1 logged webhook as" in out


def test_a_dead_letter_keeps_its_id_when_its_replay_fails(folder: Path, redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    poisoned = envelope("5191000003", "poison")
    noted = dead_letter(redis_url, poisoned)
    listing = parley("dead", "list", cwd=folder, **env).stdout
    assert noted in listing
    for attempts in (2, 3):  # replayed, failed again: a new entry, the same id
        (entry,) = dead_entries(redis_url)
        assert dead_letter(redis_url, poisoned, replaying=entry) == noted
        (again,) = dead_entries(redis_url)
        assert again.entry_id != entry.entry_id and again.fields["attempts"] == str(attempts)
    shown = parley("dead", "show", noted, cwd=folder, **env)
    assert (
        shown.returncode == 0 and f"id: {noted}\n" in shown.stdout and "attempts: 3" in shown.stdout
    )
    assert noted in parley("dead", "list", cwd=folder, **env).stdout
    # the event id names it too, and the entry's current stream id
    by_event = parley("dead", "show", poisoned.event_id, cwd=folder, **env)
    assert f"id: {noted}\n" in by_event.stdout
    assert f"id: {noted}\n" in parley("dead", "show", again.entry_id, cwd=folder, **env).stdout
    dropped = parley("dead", "drop", noted, cwd=folder, **env)
    assert dropped.stdout == f"dropped dead letter {noted}\n" and dead_entries(redis_url) == []
    one_error(parley("dead", "drop", noted, cwd=folder, **env), 1, f"no dead letter {noted}")


def test_two_dead_letters_of_one_event_need_their_ids(folder: Path, redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    logged = envelope("5191000004", "twice")
    first = dead_letter(redis_url, logged)
    second = dead_letter(redis_url, logged.model_copy(update={"replay_id": "replay-x:1-0"}))
    result = parley("dead", "show", logged.event_id, cwd=folder, **env)
    one_error(result, 1, "2 dead letters have event id", first, second)


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_dead_letters_print_times_and_no_message_text(folder: Path, redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    assert parley("dead", "list", cwd=folder, **env).stdout == "there are no dead letters\n"
    noted = dead_letter(redis_url, envelope("5191000005", "my secret order"))
    shown = parley("dead", "show", noted, cwd=folder, **env)
    assert shown.returncode == 0 and "Traceback" in shown.stdout  # the handler's, as stored
    lines = dict(line.split(": ", 1) for line in shown.stdout.splitlines() if ": " in line)
    for key in ("first_failure", "last_failure", "received_at"):
        assert ISO_UTC.fullmatch(lines[key]), lines[key]
    assert "my secret order" not in shown.stdout and "--payload" in lines["payload"]
    with_payload = parley("dead", "show", noted, "--payload", cwd=folder, **env)
    assert "my secret order" in with_payload.stdout
    listing = parley("dead", "list", cwd=folder, **env).stdout
    assert ISO_UTC.search(listing) and "my secret order" not in listing


async def accept(redis_url: str, envelopes: list[Envelope]) -> None:
    """Log envelopes as the ingress does (its acceptor)."""
    settings = Settings(redis_url=redis_url)
    client = AsyncRedis.from_url(settings.pipeline)
    try:
        await Acceptor(client, settings).accept(envelopes)
    finally:
        await client.aclose()


def test_replay_speaks_in_times(folder: Path, redis_url: str) -> None:
    env = {"PARLEY_REDIS_URL": redis_url}
    empty = parley("replay", "--dry-run", cwd=folder, **env)
    assert empty.returncode == 0 and empty.stdout == "the replay log is empty\n"
    asyncio.run(accept(redis_url, [envelope("5191000006", "one")]))
    one = parley("replay", "--dry-run", cwd=folder, **env)
    (entry,) = pipeline(redis_url).xrange(REPLAY_LOG)
    first_line = one.stdout.splitlines()[0]
    assert re.fullmatch(r"1 logged webhook matches, accepted at " + ISO_UTC.pattern, first_line)
    assert entry[0].decode() not in one.stdout and "by partition" in one.stdout
    asyncio.run(accept(redis_url, [envelope("5191000006", "two")]))
    two = parley("replay", "--dry-run", cwd=folder, **env).stdout
    assert "2 logged webhooks match, accepted " in two
    nothing = parley("replay", "--dry-run", "--user", "5190000000", cwd=folder, **env)
    assert nothing.stdout == "no logged webhooks match (user 5190000000)\n"
    later = parley("replay", "--since", "2999-01-01", "--dry-run", cwd=folder, **env)
    assert later.stdout == "no logged webhooks match (since 2999-01-01T00:00:00Z)\n"
    no_dead = parley("replay", "--dead", "--yes", cwd=folder, **env)
    assert no_dead.returncode == 0 and no_dead.stdout == "there are no dead letters\n"


def test_demo_refuses_a_redis_with_live_workers(folder: Path, redis_url: str) -> None:
    leases = Leases(pipeline(redis_url), "busy@host", ttl=60)
    leases.heartbeat()  # registered as a live node, as each node does
    try:
        result = parley("demo", "--redis", redis_url, cwd=folder)
        one_error(result, 1, "1 live worker node", "busy@host", "another Redis")
    finally:
        leases.leave()


def test_demo_on_a_redis_that_is_down_is_one_line(folder: Path) -> None:
    port = free_port()
    result = parley("demo", "--redis", f"redis://127.0.0.1:{port}", cwd=folder)
    one_error(result, 1, f"pipeline Redis at redis://127.0.0.1:{port}/3")


def test_expired_heartbeats_are_not_live() -> None:
    assert still_live({"a": 10.0, "b": 20.0}, redis_now=15.0) == {"b": 5.0}


@pytest.mark.parametrize("spelling", ["--log-level", "--loglevel"])
def test_both_log_level_spellings_on_both_commands(folder: Path, spelling: str) -> None:
    # parsed: each gets as far as its own check
    worker = parley("worker", spelling, "DEBUG", "--app", "nosuchmod:app", cwd=folder)
    one_error(worker, 2, "cannot import nosuchmod")
    ingress = parley(
        "ingress", spelling, "debug", "--insecure-skip-signature", "--host", "0.0.0.0", cwd=folder
    )
    one_error(ingress, 2, "loopback")
    one_error(parley("worker", spelling, "loud", cwd=folder), 2, "'loud' is not one of")


@pytest.mark.parametrize(
    "command",
    [("status",), ("replay", "--dry-run"), ("dead", "list"), ("dead", "drop", "--all", "--yes")],
)
def test_redis_url_option(folder: Path, redis_url: str, command: tuple[str, ...]) -> None:
    # the option over the environment, which names a server that is down
    result = parley(*command, "--redis-url", redis_url, cwd=folder)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result
    port = free_port()
    down = parley(*command, "--redis-url", f"redis://127.0.0.1:{port}", cwd=folder)
    one_error(down, 1, f"pipeline Redis at redis://127.0.0.1:{port}/3")


def test_dead_show_takes_redis_url(folder: Path, redis_url: str) -> None:
    noted = dead_letter(redis_url, envelope("5191000007", "x"))
    result = parley("dead", "show", noted, "--redis-url", redis_url, cwd=folder)
    assert result.returncode == 0 and f"id: {noted}" in result.stdout


#: Each command's options that a variable stands behind, and the variable
ENV_VARS = {
    ("worker",): {"--app": "PARLEY_APP", "--concurrency": "PARLEY_CONCURRENCY"},
    ("status",): {"--redis-url": "PARLEY_REDIS_URL"},
    ("replay",): {"--redis-url": "PARLEY_REDIS_URL"},
    ("dead", "list"): {"--redis-url": "PARLEY_REDIS_URL"},
    ("dead", "show"): {"--redis-url": "PARLEY_REDIS_URL"},
    ("dead", "drop"): {"--redis-url": "PARLEY_REDIS_URL"},
    ("send-webhook",): {"--phone-id": "WHATSAPP_PHONE_ID"},
}


def commands(group: click.Group, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    found: dict[tuple[str, ...], Any] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= commands(command, (*path, name))
        else:
            found[(*path, name)] = command
    return found


def test_help_names_the_environment_variables(folder: Path) -> None:
    every = commands(main)
    behind = {  # what the CLI itself declares, which the table must match
        path: {p.opts[0]: p.envvar for p in command.params if getattr(p, "envvar", None)}
        for path, command in every.items()
    }
    assert {path: envs for path, envs in behind.items() if envs} == ENV_VARS
    for path in every:
        shown = parley(*path, "--help", cwd=folder)
        assert shown.returncode == 0, shown.stderr
        text = " ".join(shown.stdout.split())  # help wraps lines anywhere
        for option, variable in ENV_VARS.get(path, {}).items():
            assert option in text and f"env var: {variable}" in text, (path, text)


# -- configuration as the first hour meets it ---------------------------------------------


def test_the_current_folders_env_file_is_read_under_the_environment(folder: Path) -> None:
    """``.env`` reaches the options behind variables (PARLEY_APP) and the settings; the
    environment wins over it."""
    (folder / ".env").write_text("PARLEY_APP=myapp:from_dotenv\n")
    one_error(parley("worker", cwd=folder), 2, "'from_dotenv'")
    one_error(parley("worker", cwd=folder, PARLEY_APP="myapp:from_env"), 2, "'from_env'")
    (folder / ".env").write_text("PARLEY_PARTITIONS=0\n")
    one_error(parley("status", cwd=folder), 2, "partitions")


def test_a_db_number_in_parley_redis_url_is_refused_in_one_line(folder: Path) -> None:
    result = parley("status", cwd=folder, PARLEY_REDIS_URL="redis://127.0.0.1:6379/12")
    one_error(result, 2, "redis_url", "names DB 12", "PARLEY_PIPELINE_URL")


def test_a_worker_refuses_a_deployment_of_another_partition_count(
    folder: Path, redis_url: str
) -> None:
    env = {"PARLEY_REDIS_URL": redis_url, "WHATSAPP_APP_SECRET": "tests-7c41d9e0b2a5"}
    from parley.workers.deployment import check_deployment

    check_deployment(Settings(redis_url=redis_url, partitions=16), "ingress")  # it recorded 16
    result = parley("worker", "--app", "myapp:app", cwd=folder, PARLEY_PARTITIONS="8", **env)
    one_error(result, 2, "PARLEY_PARTITIONS is 8 here", "uses 16")


def test_an_ingress_and_a_worker_on_different_redis_servers_are_told(
    folder: Path, redis_url: str, tmp_path: Path
) -> None:
    """The worker records itself in ITS pipeline; an ingress started against another
    Redis finds no worker there and says so, naming the URL it uses."""
    from parley.testing import RedisServer
    from parley.workers.deployment import check_deployment

    check_deployment(Settings(redis_url=redis_url), "worker")
    other = RedisServer().start()
    try:
        import logging

        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("parley.deployment").addHandler(handler)
        try:
            check_deployment(Settings(redis_url=other.url), "ingress")
            check_deployment(Settings(redis_url=redis_url), "ingress")
        finally:
            logging.getLogger("parley.deployment").removeHandler(handler)
        (warning,) = [r.getMessage() for r in records]
        assert "no worker has started against the pipeline Redis at" in warning
        assert f"{other.url}/3" in warning
    finally:
        other.stop()


@pytest.mark.timeout(90)
def test_a_worker_starts_in_a_few_lines(folder: Path, redis_url: str, tmp_path: Path) -> None:
    """Not one line per partition queue: Celery's banner, Parley's line naming what runs,
    one line when the partitions held change."""
    log = tmp_path / "worker.log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "parley", "worker", "--app", "myapp:app"],
            cwd=folder,
            env={**inherited, "PARLEY_REDIS_URL": redis_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "holding 16 of 16 partitions: 0-15" not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
    finally:
        worker.terminate()
        assert worker.wait(timeout=30) == 0
    text = log.read_text()
    assert "Started consuming" not in text and "partition 3: consuming" not in text
    assert "Canceling queue" not in text
    assert "released partitions 0-15" in text
    assert f"parley {__version__}: node" in text and "app myapp:app" in text
    logged = [line for line in text.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert len(logged) <= 8, text
