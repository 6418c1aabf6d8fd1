"""The replay log, dead letters and ``parley replay`` / ``dead`` / ``status``, all real:
the ingress over HTTP, worker subprocesses, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest

from parley.ingress.accept import Acceptor
from parley.replay import stream_bound
from parley.testing import PHONE_ID, RedisServer, delivery, envelope, text_message
from parley.wire.keys import DEAD_LETTERS, REPLAY_LOG, queue_name
from parley.workers.celery import create_celery, publish
from tests.helpers import PARTITIONS, cli, make_settings, sign, wait_for
from tests.worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent


def queues(server: RedisServer) -> dict[int, list[dict]]:
    broker = server.client(3)
    found = {}
    for k in range(PARTITIONS):
        raw = broker.lrange(queue_name(k), 0, -1)
        if raw:  # LPUSH'd, consumed from the right: oldest last
            found[k] = [orjson.loads(m) for m in reversed(raw)]
    return found


def clear_queues(server: RedisServer) -> None:
    server.client(3).delete(*[queue_name(k) for k in range(PARTITIONS)])


def drained(server: RedisServer) -> bool:
    return not queues(server) and not server.client(3).hlen("unacked")


def caches(server: RedisServer) -> dict[int, dict[bytes, dict[bytes, bytes]]]:
    return {
        db: {key: server.client(db).hgetall(key) for key in server.client(db).keys("*")}
        for db in (0, 1, 2)
    }


def env_for(server: RedisServer) -> dict[str, str]:
    return {"PARLEY_REDIS_URL": server.url, "PARLEY_PARTITIONS": str(PARTITIONS)}


def post(client: httpx.Client, user: str, text: str) -> None:
    body = orjson.dumps(delivery([text_message(user, text)]))
    assert client.post("/webhook", content=body, headers=sign(body)).status_code == 200


def test_stream_bounds() -> None:
    assert stream_bound(None) == "-" and stream_bound(None, end=True) == "+"
    assert stream_bound("1732500000000-5") == "1732500000000-5"
    assert stream_bound("2026-01-01T00:00:00") == "1767225600000-0"
    assert stream_bound("2h", now=10_000.0) == "2800000-0"
    with pytest.raises(ValueError, match="neither"):
        stream_bound("yesterday")


def test_replay_rebuilds_the_caches(
    ingress: httpx.Client, redis_server: RedisServer, tmp_path: Path
) -> None:
    start = datetime.now(UTC).isoformat()
    worker = WorkerProcess("tests.apps:ledger", "all", env_for(redis_server), tmp_path, "ledger")
    worker.wait_ready()
    try:
        users = [f"5197000{n:04d}" for n in range(20)]
        for n in range(10):
            for user in users:
                post(ingress, user, f"{user} says {n}")
        wait_for(
            lambda: drained(redis_server) and len(caches(redis_server)[2]) == 21,
            what="200 webhooks",
        )
        wait_for(lambda: redis_server.client(2).hget(f"{PHONE_ID}:df:totals", "messages") == b"200")
        snapshot = caches(redis_server)
        assert redis_server.client(3).xlen(REPLAY_LOG) == 200
        for db in (0, 1, 2):
            redis_server.client(db).flushdb()
        out = cli(redis_server, "replay", "--since", start, "--yes")
        assert "200 logged webhooks match" in out and "replayed 200" in out
        wait_for(lambda: caches(redis_server) == snapshot, what="caches equal to the snapshot")
    finally:
        worker.stop()


def test_replay_filters_and_dry_run(ingress: httpx.Client, redis_server: RedisServer) -> None:
    users = ["51960000001", "51960000002", "51960000003"]
    for n in range(6):
        for user in users:
            post(ingress, user, f"{n}")
    clear_queues(redis_server)  # keep only what the replays enqueue
    log = redis_server.client(3).xrange(REPLAY_LOG)
    assert len(log) == 18

    out = cli(redis_server, "replay", "--user", users[1], "--dry-run")
    assert "6 logged webhooks match" in out and "by partition" in out and PHONE_ID in out
    assert queues(redis_server) == {}  # a dry run sends nothing

    cli(redis_server, "replay", "--user", users[1], "--yes")
    (sent,) = queues(redis_server).values()
    bodies = [orjson.loads(base64.b64decode(m["body"]))[0][0] for m in sent]
    assert [b["user_id"] for b in bodies] == [users[1]] * 6
    assert [b["payload"]["messages"][0]["text"]["body"] for b in bodies] == [
        str(n) for n in range(6)
    ]
    assert all(b["replay_id"] for b in bodies)
    clear_queues(redis_server)

    since, until = log[4][0].decode(), log[10][0].decode()
    cli(redis_server, "replay", "--since", since, "--until", until, "--yes")
    # entries 4..10 inclusive, nothing before or after: posted user by user, round by round
    wanted = [(users[i % 3], str(i // 3)) for i in range(4, 11)]
    logged = [orjson.loads(fields[b"envelope"]) for _, fields in log]
    assert [(e["user_id"], text_of(e)) for e in logged[4:11]] == wanted
    window = {
        entry_id.decode(): envelope["event_id"]
        for (entry_id, _), envelope in zip(log[4:11], logged[4:11], strict=True)
    }
    replayed = {  # each partition's queue in its order
        k: [orjson.loads(base64.b64decode(m["body"]))[0][0] for m in messages]
        for k, messages in queues(redis_server).items()
    }
    # every replayed envelope names its log entry: exactly the window's, each once
    by_entry = {
        b["replay_id"].rpartition(":")[2]: b for bodies in replayed.values() for b in bodies
    }
    assert sum(map(len, replayed.values())) == len(by_entry) == 7
    assert {entry: b["event_id"] for entry, b in by_entry.items()} == window
    for k, bodies in replayed.items():  # each partition in log order
        in_partition = [b["replay_id"].rpartition(":")[2] for b in bodies]
        assert in_partition == sorted(in_partition, key=list(window).index), k
    assert sorted((b["user_id"], text_of(b)) for b in by_entry.values()) == sorted(wanted)


def text_of(envelope: dict) -> str:
    text: str = envelope["payload"]["messages"][0]["text"]["body"]
    return text


def test_dead_letters_replay_after_the_fix(
    redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    worker = WorkerProcess("tests.apps:poison", "all", env_for(redis_server), tmp_path, "poison")
    worker.wait_ready()
    try:
        settings = make_settings(redis_url)
        celery = create_celery(settings)
        for text in ("fine 1", "poison 2", "always 3"):
            publish(celery, envelope("51950000001", text), PARTITIONS)
        dead = redis_server.client(3)
        wait_for(lambda: dead.xlen(DEAD_LETTERS) == 2, what="two dead letters")
        listing = cli(redis_server, "dead", "list")
        assert "ValueError" in listing and "*0001" in listing and "51950000001" not in listing
        first_id = dead.xrange(DEAD_LETTERS)[0][0].decode()
        assert "Traceback" in cli(redis_server, "dead", "show", first_id)
        # the id people note from the listing, of the one that will fail again
        noted = next(
            entry_id.decode()
            for entry_id, fields in dead.xrange(DEAD_LETTERS)
            if b"always 3" in fields[b"envelope"]
        )
        assert noted in listing

        redis_server.client(2).hset(f"{PHONE_ID}:df:control", "fixed", b"true")
        cli(redis_server, "replay", "--dead", "--yes")
        seen = redis_server.client(1)
        wait_for(
            lambda: (
                seen.hget(f"{PHONE_ID}:state:seen:51950000001", "texts") == b'["fine 1","poison 2"]'
            ),
            what="the fixed one processed",
        )
        wait_for(lambda: drained(redis_server))
        (remaining,) = dead.xrange(DEAD_LETTERS)
        fields = {k.decode(): v.decode() for k, v in remaining[1].items()}
        assert fields["attempts"] == "2" and "always 3" in fields["envelope"]
        assert remaining[0].decode() != noted and fields["id"] == noted  # a new entry, one id
        shown = cli(redis_server, "dead", "show", noted)
        assert f"id: {noted}\n" in shown and "attempts: 2\n" in shown
        assert "dead letters: 1" in cli(redis_server, "status")
        cli(redis_server, "dead", "drop", "--all", "--yes")
        assert dead.xlen(DEAD_LETTERS) == 0
    finally:
        worker.stop()


def test_replaying_20000_envelopes(redis_url: str, redis_server: RedisServer) -> None:
    settings = make_settings(redis_url)

    async def log_them() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(settings.pipeline)
        acceptor = Acceptor(client, settings)
        for start in range(0, 20_000, 500):
            await acceptor.accept(
                [envelope(f"5194{n % 1000:07d}", f"m{n}") for n in range(start, start + 500)]
            )
        await client.aclose()

    asyncio.run(log_them())
    clear_queues(redis_server)
    started = time.monotonic()
    out = cli(redis_server, "replay", "--since", "0-0", "--yes")
    elapsed = time.monotonic() - started
    assert "20000/20000" in out and "replayed 20000" in out, out
    assert sum(len(v) for v in queues(redis_server).values()) == 20_000
    print(out.strip().splitlines()[-1], f"(CLI wall time {elapsed:.1f}s)")
