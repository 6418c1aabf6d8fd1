"""The reconciler: every accepted webhook ends done or dead-lettered, or is sent again.

Real Redis throughout (the tests' own server), kombu itself taking a message unacked,
the CLI as a subprocess, and a ``--partitions auto`` node recovering a message popped
off its queue behind Parley's back."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from kombu import Connection
from redis.asyncio import Redis

from parley.testing import FakeGraphAPI, RedisServer, delivery, envelope, text_message
from parley.wire.envelope import Envelope, mask_user_id
from parley.wire.keys import (
    RECONCILER,
    RECONCILER_CURSOR,
    RECOVERED,
    REPLAY_LOG,
    done_key,
    inflight_key,
    queue_name,
)
from parley.wire.messages import routed_message, task_envelope
from parley.wire.partition import partition_for
from parley.workers import reconciler as reconciler_module
from parley.workers.pipeline import RedisPipelineStore
from parley.workers.reconciler import Busy, Reconciler
from parley.workers.settings import Settings
from tests.helpers import PARTITIONS, RECONCILING, Pipeline, cli, make_settings, sign, wait_for

OLD = 3600.0  # seconds: past the default grace (lease + handler timeout + a minute)
YOUNG = 10.0  # within it


def log_entry(client: redis.Redis, env: Envelope, age: float) -> str:
    """Log ``env`` as the ingress's accept.lua does, dated ``age`` seconds back (call
    oldest first: stream ids only grow)."""
    seconds, micros = client.time()
    ms = seconds * 1000 + micros // 1000 - int(age * 1000)
    entry_id = client.xadd(
        REPLAY_LOG,
        {
            "envelope": env.encode(),
            "partition": partition_of(env),
            "tenant": env.tenant_id,
            "user": env.user_id,
            "kind": env.kind,
        },
        id=f"{ms}-0",
    )
    return entry_id.decode()


def enqueue(client: redis.Redis, env: Envelope) -> str:
    """Put ``env``'s task message on its queue, as the ingress does; returns the queue."""
    queue, message = routed_message(env, PARTITIONS)
    client.lpush(queue, message)
    return queue


def queued(client: redis.Redis, queue: str) -> list[Envelope]:
    """The envelopes waiting on ``queue``, oldest first."""
    return [
        Envelope.from_json(task_envelope(orjson.loads(raw)) or {})
        for raw in reversed(client.lrange(queue, 0, -1))
    ]


def partition_of(env: Envelope) -> int:
    return partition_for(env.tenant_id, env.user_id, PARTITIONS)


def reconciler(server: RedisServer, **overrides: object) -> Reconciler:
    client = server.client(3)
    return Reconciler(
        client, client, make_settings(server.url, **overrides), "test", recheck_after=0
    )


_users = itertools.count(1)


def secret(name: str) -> Envelope:
    """A webhook of a user of its own, whose text must never reach a log line."""
    return envelope(f"5199{next(_users):07d}", f"secret text of {name}")


@pytest.fixture
async def store(redis_url: str, redis_server: RedisServer) -> AsyncIterator[RedisPipelineStore]:
    """The workers' own bookkeeping (begin, finish, dead-letter) on an emptied server."""
    pipeline_store = RedisPipelineStore(Redis.from_url(redis_server.db_url(3)), done_ttl=3600)
    yield pipeline_store
    await pipeline_store.aclose()


# -- one run, piece by piece -----------------------------------------------------------


async def test_each_place_accounts_for_an_entry_and_only_the_lost_one_goes_again(
    redis_server: RedisServer, store: RedisPipelineStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_server.client(3)
    names = ["done", "dead", "in flight", "queued", "unacked", "lost", "young"]
    envs = {name: secret(name) for name in names}
    ids = {
        name: log_entry(client, envs[name], YOUNG if name == "young" else OLD - n)
        for n, name in enumerate(names)
    }
    await store.finish(envs["done"], partition_of(envs["done"]), 0.01)
    await store.dead_letter(
        envs["dead"], partition_of(envs["dead"]), RuntimeError("bug"), "handle", 1, time.time()
    )
    await store.begin(envs["in flight"], partition_of(envs["in flight"]), "node-a")
    unacked_queue = enqueue(client, envs["unacked"])
    enqueue(client, envs["queued"])
    with Connection(redis_server.db_url(3)) as connection:
        # kombu itself pops it and records it unacked, as a consuming node does
        taken = connection.default_channel.basic_get(unacked_queue)
        assert taken is not None and client.hlen("unacked") == 1
        assert envs["unacked"] not in queued(client, unacked_queue)
        with caplog.at_level(logging.WARNING, logger="parley.reconciler"):
            report = reconciler(redis_server).run()
        again = reconciler(redis_server).run()

    assert (report.checked, report.settled, report.pending) == (6, 2, 3)
    assert [entry.entry_id for entry in report.lost] == [ids["lost"]]
    lost_queue = queue_name(partition_of(envs["lost"]))
    # back as accepted: no replay id, so its done-marker still guards it
    assert queued(client, lost_queue).count(envs["lost"]) == 1
    assert client.get(RECOVERED) == b"1"
    assert client.get(RECONCILER_CURSOR).decode() == ids["dead"] == report.settled_to
    (line,) = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert envs["lost"].event_id in line and ids["lost"] in line
    assert mask_user_id(envs["lost"].user_id) in line and envs["lost"].user_id not in line
    assert "secret" not in caplog.text

    # the second run finds it queued: nothing goes twice
    assert (again.checked, again.pending, again.lost) == (4, 4, [])  # after the cursor
    assert queued(client, lost_queue).count(envs["lost"]) == 1
    assert client.get(RECOVERED) == b"1"
    assert client.get(RECONCILER) is None  # each run released its lease


async def test_the_cursor_passes_settled_entries_and_stops_at_a_pending_one(
    redis_server: RedisServer, store: RedisPipelineStore
) -> None:
    client = redis_server.client(3)
    first, waiting, third, young = (secret(n) for n in ("first", "waiting", "third", "young"))
    ids = [
        log_entry(client, env, age)
        for env, age in ((first, OLD), (waiting, OLD - 1), (third, OLD - 2), (young, YOUNG))
    ]
    for env in (first, third, young):
        await store.finish(env, partition_of(env), 0.01)
    queue = enqueue(client, waiting)

    report = reconciler(redis_server).run()
    assert report.settled_to == client.get(RECONCILER_CURSOR).decode() == ids[0]
    assert (report.settled, report.pending, report.lost) == (2, 1, [])

    client.rpop(queue)  # a node takes it and finishes it
    await store.finish(waiting, partition_of(waiting), 0.01)
    report = reconciler(redis_server).run()
    assert report.since > ids[0] and report.checked == 2  # from the cursor on
    # the young entry is not judged yet: the cursor waits before it
    assert client.get(RECONCILER_CURSOR).decode() == ids[2]

    report = reconciler(redis_server).run()
    assert (report.checked, report.settled_to) == (0, None)
    assert client.get(RECONCILER_CURSOR).decode() == ids[2]


def test_a_dry_run_changes_nothing_and_a_run_waits_for_the_lease(
    redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client(3)
    lost = secret("lost")
    entry_id = log_entry(client, lost, OLD)
    client.set(RECONCILER, "another-node abcd", ex=60)

    report = reconciler(redis_server).run(dry_run=True)  # takes no lease
    assert [entry.entry_id for entry in report.lost] == [entry_id]
    assert client.llen(queue_name(partition_of(lost))) == 0
    assert client.get(RECOVERED) is None and client.get(RECONCILER_CURSOR) is None

    with pytest.raises(Busy, match="another-node"):
        reconciler(redis_server).run()
    assert client.llen(queue_name(partition_of(lost))) == 0
    client.delete(RECONCILER)
    assert [entry.entry_id for entry in reconciler(redis_server).run().lost] == [entry_id]


def test_only_entries_whose_done_marker_could_still_exist_are_checked(
    redis_url: str, redis_server: RedisServer
) -> None:
    client = redis_server.client(3)
    expired, recent = secret("expired"), secret("recent")
    # PARLEY_DONE_TTL 3600: a marker set at acceptance is gone after an hour, so an entry
    # older than that (less a margin of a tenth) cannot tell done from lost
    log_entry(client, expired, 3500)
    recent_id = log_entry(client, recent, 3000)
    run = reconciler(redis_server, done_ttl=3600)
    assert [entry.entry_id for entry in run.run(since="0-0", dry_run=True).lost] == [recent_id]

    report = run.run(since="0-0")  # by hand, from a time: the cursor stays
    assert [entry.entry_id for entry in report.lost] == [recent_id]
    assert expired not in queued(client, queue_name(partition_of(expired)))
    assert recent in queued(client, queue_name(partition_of(recent)))
    assert client.get(RECONCILER_CURSOR) is None


def test_a_message_found_on_the_second_look_is_not_lost(
    redis_url: str, redis_server: RedisServer
) -> None:
    """Popped by a consumer that was cancelled, and put back in front between the two
    looks: on no list at the first, on its queue at the second."""
    client = redis_server.client(3)
    moving = secret("moving")
    log_entry(client, moving, OLD)
    queue, message = routed_message(moving, PARTITIONS)

    class PutBackDuringThePause(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            client.rpush(queue, message)  # settle_pending_pop's push back to the front
            return False

    run = Reconciler(
        client, client, make_settings(redis_server.url), "test", stopping=PutBackDuringThePause()
    )
    report = run.run()
    assert (report.lost, report.pending) == ([], 1)
    assert client.llen(queue) == 1 and client.get(RECOVERED) is None


def test_a_partition_with_too_long_a_backlog_to_read_counts_as_pending(
    redis_url: str, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_server.client(3)
    behind = secret("behind")
    log_entry(client, behind, OLD)
    queue = queue_name(partition_of(behind))
    monkeypatch.setattr(reconciler_module, "QUEUE_SCAN_LIMIT", reconciler_module.CHUNK)
    backlog = routed_message(envelope(behind.user_id, "later"), PARTITIONS)[1]
    client.lpush(queue, *[backlog] * (reconciler_module.CHUNK + 1))
    report = reconciler(redis_server).run()
    assert (report.pending, report.lost) == (1, [])
    client.ltrim(queue, 0, reconciler_module.CHUNK - 2)  # one chunk: read in full
    assert [entry.envelope for entry in reconciler(redis_server).run().lost] == [behind]


async def test_the_in_flight_record_of_a_crashed_node_accounts_for_its_entry(
    redis_server: RedisServer, store: RedisPipelineStore
) -> None:
    client = redis_server.client(3)
    crashed = secret("crashed")
    log_entry(client, crashed, OLD)
    await store.begin(crashed, partition_of(crashed), "dead-node")
    assert client.hexists(inflight_key(partition_of(crashed)), done_key(crashed))
    report = reconciler(redis_server).run()
    assert (report.pending, report.lost) == (1, [])


# -- by hand: parley replay --unfinished, parley status --------------------------------


async def test_replay_unfinished_and_status_from_the_command_line(
    redis_server: RedisServer, store: RedisPipelineStore
) -> None:
    client = redis_server.client(3)
    done, lost = secret("done"), secret("lost")
    done_id, lost_id = log_entry(client, done, OLD), log_entry(client, lost, OLD - 1)
    await store.finish(done, partition_of(done), 0.01)

    dry = cli(redis_server, "replay", "--unfinished", "--dry-run")
    assert "1 done or dead-lettered" in dry and "1 lost" in dry and "would re-enqueue" in dry
    assert lost_id in dry and lost.event_id in dry and "secret" not in dry
    assert f"cursor: none (unchanged; a run would move it to {done_id})" in dry
    assert "unaccounted for: 1 of the 2" in cli(redis_server, "status")
    assert client.llen(queue_name(partition_of(lost))) == 0

    done_run = cli(redis_server, "replay", "--unfinished")
    assert "re-enqueued:" in done_run and lost_id in done_run
    assert f"cursor: {done_id} (moved)" in done_run
    assert queued(client, queue_name(partition_of(lost))) == [lost]
    status = cli(redis_server, "status")
    assert "recovered by the reconciler: 1" in status
    assert "unaccounted for: 0 of the 1" in status  # after the cursor: the queued one

    since = cli(redis_server, "replay", "--unfinished", "--since", "2h")
    assert "0 lost" in since and f"cursor: {done_id} (unchanged: --since)" in since


# -- the loss test: a real node recovers what a dead consumer took ---------------------


def post(client: httpx.Client, user: str, text: str) -> None:
    body = orjson.dumps(delivery([text_message(user, text)]))
    assert client.post("/webhook", content=body, headers=sign(body)).status_code == 200


def test_a_message_popped_behind_parleys_back_is_recovered_and_runs_once(
    ingress: httpx.Client, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    users = [f"5198800{n:04d}" for n in range(4)]
    for seq in (1, 2, 3):
        for user in users:
            post(ingress, user, str(seq))
    broker = redis_server.client(3)
    # what a consumer SIGKILLed mid-BRPOP leaves: Redis handed the message to a dead socket
    queue = next(q for q in map(queue_name, range(PARTITIONS)) if broker.llen(q))
    lost = Envelope.from_json(task_envelope(orjson.loads(broker.rpop(queue))) or {})
    pipeline = Pipeline(
        redis_server,
        tmp_path,
        graph,
        **RECONCILING,
    )
    assert isinstance(pipeline.settings, Settings) and pipeline.settings.grace == 6
    try:
        node = pipeline.start_worker("tests.apps:recording", "auto", "keeper")
        wait_for(
            lambda: len(pipeline.runs()) == 3 * len(users),
            timeout=60,
            what="every webhook handled, the lost one after the grace period",
        )
        last = broker.xrevrange(REPLAY_LOG, count=1)[0][0]
        wait_for(
            lambda: broker.get(RECONCILER_CURSOR) == last,
            timeout=30,
            what="a reconciler run that finds every entry settled",
        )
        runs = pipeline.runs()
        assert Counter((user, seq) for user, seq, *_ in runs) == {
            (user, seq): 1 for user in users for seq in (1, 2, 3)
        }
        assert broker.get(RECOVERED) == b"1"
        assert "parley_recovered_total 1.0" in ingress.get("/metrics").text
        (line,) = [line for line in node.log().splitlines() if "recovered" in line]
        assert "WARNING" in line and lost.event_id in line and lost.user_id not in line
        for user in users:  # in order per user, but for the recovered one
            seqs = [seq for u, seq, *_ in runs if u == user]
            if user == lost.user_id:
                seqs.remove(int(lost.payload["messages"][0]["text"]["body"]))
            assert seqs == sorted(seqs)

        started = time.monotonic()  # the reconciler thread does not hold up a shutdown
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
    finally:
        pipeline.close()
