"""``--partitions auto``: leases, rendezvous hashing, hand-over and failover — all real:
the tests' redis-server, ``parley worker`` processes, SIGKILL and SIGTERM. The tests
taking the ``broker`` fixture run twice: on the tests' Redis as broker, and on a vhost
of the machine's RabbitMQ (``tests/rabbitmq.py``; skipped where none answers)."""

from __future__ import annotations

import itertools
import math
import re
import signal
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from parley.asgi import create_ingress
from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer
from parley.wire.keys import NODES, OWNERSHIP_CHANNEL, inflight_key, lease_key, queue_name
from parley.wire.partition import partition_for
from parley.workers.leases import Leases, assignment, holders
from parley.workers.pipeline import in_flight_record
from parley.workers.webhook import Webhook
from tests.helpers import RECONCILING, Pipeline, cli, make_settings, post_steadily, wait_for
from tests.http_server import ServedApp
from tests.rabbitmq import BROKERS, broker_env, list_queues, queue_depths
from tests.worker_process import WorkerProcess

PARTITIONS = 12


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    """The test runs on each broker: the deployment's extra environment (none for Redis,
    ``PARLEY_BROKER_URL`` of a vhost of its own for RabbitMQ)."""
    return broker_env(request)


def deployment(
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    lease_ttl: float,
    **env: str,
) -> Pipeline:
    return Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_PARTITIONS=str(PARTITIONS),
        PARLEY_LEASE_TTL=str(lease_ttl),
        **env,
    )


def amqp_of(pipeline: Pipeline) -> str | None:
    """The deployment's RabbitMQ URL; None when its broker is the tests' Redis."""
    url = pipeline.env.get("PARLEY_BROKER_URL")
    return url if url is not None and url.startswith("amqp") else None


def waiting(pipeline: Pipeline, partition: int) -> int:
    """Messages ready on a partition's queue (not held by a consumer)."""
    url = amqp_of(pipeline)
    if url is None:
        return int(pipeline.server.client(3).llen(queue_name(partition)))
    queue = queue_name(partition)
    return queue_depths(url, [queue]).get(queue, (0, 0))[0]


def users_in(partition: int, count: int) -> list[str]:
    users = (str(n) for n in itertools.count(10**6))
    return list(
        itertools.islice(
            (u for u in users if partition_for(PHONE_ID, u, PARTITIONS) == partition), count
        )
    )


def owners(server: RedisServer) -> list[str | None]:
    return holders(server.client(3), PARTITIONS)


def owned_by(server: RedisServer) -> Counter[str | None]:
    return Counter(owners(server))


# -- the pieces ------------------------------------------------------------------------


def test_assignment_is_balanced_and_a_join_moves_about_one_nth() -> None:
    for partitions, count in itertools.product((12, 16, 64, 256), range(1, 10)):
        moves = []
        for trial in range(10):
            nodes = [f"parley-{n}@host-{trial}" for n in range(count)]
            before = assignment(partitions, nodes)
            loads = Counter(before.values())
            assert sorted(before) == list(range(partitions))
            assert set(loads) == set(nodes)
            assert max(loads.values()) - min(loads.values()) <= 1, loads
            # every node computes the same answer, whatever order it lists the nodes in
            assert assignment(partitions, reversed(nodes)) == before
            after = assignment(partitions, [*nodes, f"joiner@host-{trial}"])
            moves.append(sum(before[k] != after[k] for k in before))
        ideal = partitions / (count + 1)  # what the joiner must get
        if partitions >= 4 * count:  # a few partitions per node, as the README advises
            assert sum(moves) / len(moves) <= 2 * ideal, (partitions, count, moves)


def test_leases_are_taken_renewed_and_released_only_by_their_holder(
    redis_url: str, redis_server: RedisServer
) -> None:
    client = redis.Redis.from_url(redis_server.db_url(3))
    a, b = Leases(client, "a", ttl=30), Leases(client, "b", ttl=30)
    assert a.acquire(1) and not b.acquire(1)
    assert a.acquire(1)  # the holder may extend it
    assert b.renew([1]) == set() and a.renew([1, 2]) == {1}
    assert b.release([1]) == 0 and client.get(lease_key(1)) == b"a"
    assert a.release([1]) == 1 and b.acquire(1)
    short = Leases(client, "short", ttl=0.5)
    assert short.acquire(5)
    wait_for(lambda: client.get(lease_key(5)) is None, timeout=10, what="lease expiry")
    assert a.acquire(5)
    assert sorted(a.heartbeat()) == ["a"] and sorted(short.heartbeat()) == ["a", "short"]
    wait_for(lambda: "short" not in a.heartbeat(), timeout=10, what="heartbeat expiry")
    assert client.zscore(NODES, "a") is not None


# -- nodes joining and leaving ---------------------------------------------------------


def test_nodes_joining_share_the_partitions(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=3)
    try:
        pipeline.start_worker("tests.apps:recording", "auto", "one")
        wait_for(lambda: owned_by(redis_server) == {"one@" + host(): PARTITIONS}, timeout=30)
        pipeline.start_worker("tests.apps:recording", "auto", "two")
        pipeline.start_worker("tests.apps:recording", "auto", "three")
        limit = math.ceil(PARTITIONS / 3) + 1

        def balanced() -> bool:
            counts = owned_by(redis_server)
            return None not in counts and len(counts) == 3 and max(counts.values()) <= limit

        wait_for(balanced, timeout=30, what="three nodes sharing the partitions")
        table = cli(redis_server, "status", partitions=PARTITIONS)
        for name in ("one", "two", "three"):
            assert f"{name}@{host()}" in table
        # and the work goes where the leases are: one message per partition
        users = {
            partition_for(PHONE_ID, u, PARTITIONS): u for u in map(str, range(10**6, 10**6 + 500))
        }
        for user in users.values():
            pipeline.publish(user, "1")
        wait_for(lambda: len(pipeline.runs()) == PARTITIONS, what="a message in every partition")
        pids = {w.process.pid: w.node for w in pipeline.workers}
        lease_of = owners(redis_server)
        for user, _seq, pid, _, _ in pipeline.runs():
            assert f"{pids[pid]}@{host()}" == lease_of[partition_for(PHONE_ID, user, PARTITIONS)]
    finally:
        pipeline.close()


def test_sigterm_hands_over_at_once_not_at_lease_expiry(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=60, **broker)
    try:
        pipeline.start_worker("tests.apps:recording", "auto", "stays")
        leaving = pipeline.start_worker("tests.apps:recording", "auto", "leaves")
        wait_for(lambda: len(owned_by(redis_server)) == 2 and None not in owned_by(redis_server))
        leaving.process.terminate()
        # a 60 s lease: only a hand-over, not expiry, can move them within 20 s
        wait_for(
            lambda: owned_by(redis_server) == {f"stays@{host()}": PARTITIONS},
            timeout=20,
            what="the partitions of the SIGTERMed node",
        )
        assert leaving.process.wait(timeout=30) == 0
        assert f"leaves@{host()}" not in cli(redis_server, "status", partitions=PARTITIONS)
    finally:
        pipeline.close()


def test_a_long_handler_keeps_its_lease_and_the_hand_over_waits_for_it(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    ttl = 3.0  # ≥ 3 s: a shorter lease starves on a loaded 2-core machine
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=ttl)
    try:
        pipeline.start_worker("tests.apps:recording", "auto", "first")
        wait_for(lambda: owned_by(redis_server) == {f"first@{host()}": PARTITIONS})
        later = assignment(PARTITIONS, [f"first@{host()}", f"second@{host()}"])
        moving = next(k for k, node in later.items() if node.startswith("second@"))
        (user,) = users_in(moving, 1)
        pipeline.publish(user, "1 block")
        pipeline.wait_blocked()
        pipeline.start_worker("tests.apps:recording", "auto", "second")
        first = pipeline.workers[0]
        wait_for(  # the hand-over has begun: "2" will wait on the queue for the heir
            lambda: f"partition {moving}: stopped consuming" in first.log(),
            what="the first node to stop consuming the moving partition",
        )
        pipeline.publish(user, "2")
        # the handler runs for 3 lease lifetimes: the lease is renewed beside it and the
        # partition stays with the node running it
        until = time.monotonic() + 3 * ttl
        while time.monotonic() < until:
            assert owners(redis_server)[moving] == f"first@{host()}"
            time.sleep(0.05)
        assert pipeline.seqs(user) == []
        pipeline.release_blocked()
        wait_for(lambda: pipeline.seqs(user) == [1, 2], what="both messages")
        assert owners(redis_server)[moving] == f"second@{host()}"
        (first_pid, first_end), (second_pid, second_start) = [
            (pid, end) if seq == 1 else (pid, start)
            for _, seq, pid, start, end in sorted(pipeline.runs(), key=lambda r: r[1])
        ]
        assert (first_pid, second_pid) == tuple(w.process.pid for w in pipeline.workers)
        assert first_end <= second_start
    finally:
        pipeline.close()


def test_sigterm_during_a_long_handler_keeps_the_leases_until_it_ends(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    ttl = 3.0  # ≥ 3 s: a shorter lease starves on a loaded 2-core machine
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=ttl)
    try:
        first = pipeline.start_worker("tests.apps:recording", "auto", "first")
        mine = {f"first@{host()}": PARTITIONS}
        wait_for(lambda: owned_by(redis_server) == mine)
        (user,) = users_in(5, 1)
        pipeline.publish(user, "1 block")
        pipeline.wait_blocked()
        first.process.terminate()  # warm shutdown: the message in hand is finished first
        pipeline.publish(user, "2")
        until = time.monotonic() + 3 * ttl
        while time.monotonic() < until:  # still renewed while the handler runs
            assert owned_by(redis_server) == mine
            time.sleep(0.05)
        pipeline.release_blocked()
        assert first.process.wait(timeout=30) == 0
        # message 2 ran here only if it was taken before the consumer was cancelled
        assert pipeline.seqs(user) in ([1], [1, 2])
        assert owned_by(redis_server) == {None: PARTITIONS}  # released on the way out
        pipeline.start_worker("tests.apps:recording", "auto", "second")
        wait_for(lambda: pipeline.seqs(user) == [1, 2], what="message 2, once")
    finally:
        pipeline.close()


def test_a_node_never_runs_a_partition_whose_lease_another_node_holds(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    """The lease moves while the node still consumes (as when a starved node misses its
    renewals): begin.lua refuses the envelope, it goes back in front (on RabbitMQ: the
    task rejects it with requeue — putting it back through a Redis client lost it), the
    node stops consuming — and runs it once the lease is its own again."""
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=30, **broker)  # renews / 10 s
    try:
        node = pipeline.start_worker("tests.apps:recording", "auto", "fenced")
        wait_for(lambda: owned_by(redis_server) == {f"fenced@{host()}": PARTITIONS})
        pipelinedb = redis_server.client(3)
        pipelinedb.set(lease_key(4), "intruder", ex=60)  # taken behind the node's back
        (user,) = users_in(4, 1)
        pipeline.publish(user, "1")
        wait_for(lambda: "lease not held" in node.log(), what="the refusal")
        wait_for(lambda: "partition 4: stopped consuming" in node.log(), what="the cancel")
        # back on its queue (on RabbitMQ once rejected: the cancel may come first)
        wait_for(lambda: waiting(pipeline, 4) == 1, timeout=10, what="the message put back")
        assert pipeline.seqs(user) == []
        pipelinedb.delete(lease_key(4))  # the intruder goes away
        pipelinedb.publish(OWNERSHIP_CHANNEL, "released intruder")
        wait_for(lambda: pipeline.seqs(user) == [1], what="the message, on the lease holder")
        assert owners(redis_server)[4] == f"fenced@{host()}"
    finally:
        pipeline.close()


def test_sigkill_mid_handler_the_successor_finishes_it_first_without_the_visibility_timeout(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=3)  # visibility: 1 h
    try:
        doomed = pipeline.start_worker("tests.apps:recording", "auto", "doomed")
        wait_for(lambda: owned_by(redis_server) == {f"doomed@{host()}": PARTITIONS})
        user, neighbour = users_in(3, 2)
        pipeline.publish(user, "1 block")
        pipeline.publish(neighbour, "10")
        pipeline.publish(user, "2")
        pipeline.wait_blocked()
        doomed.kill()
        pipeline.release_blocked()
        heir = pipeline.start_worker("tests.apps:recording", "auto", "heir")
        wait_for(lambda: pipeline.seqs(user) == [1, 2] and pipeline.seqs(neighbour) == [10])
        runs = {(u, seq): (start, end) for u, seq, _, start, end in pipeline.runs()}
        assert len(runs) == len(pipeline.runs()) == 3
        assert runs[(user, 1)][1] <= runs[(user, 2)][0]  # the user's 2 did not overtake 1
        # the heir finished the envelope left in flight before it consumed anything
        heir_runs = sorted(
            (start, (u, seq))
            for u, seq, pid, start, _ in pipeline.runs()
            if pid == heir.process.pid
        )
        assert heir_runs[0][1] == (user, 1)
        # the killed node's unacked messages went back in front at takeover (not after
        # the broker's 1 h visibility timeout) and their copy of the finished one was
        # acked without running: three runs, nothing unacked or in flight
        wait_for(lambda: redis_server.client(3).hlen("unacked") == 0, what="nothing unacked")
        assert not redis_server.client(3).hlen(inflight_key(3))
    finally:
        pipeline.close()


def test_a_message_left_in_flight_is_finished_by_the_heir_before_its_queue(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """SIGTERM during a backoff: the node acks the message and leaves it in flight, so
    only the heir's recovery can run it — and it runs before anything from the queue."""
    user, other = users_in(5, 2)
    pipeline = Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_PARTITIONS=str(PARTITIONS),
        PARLEY_LEASE_TTL="3",
        PARLEY_TRANSIENT_DEADLINE="600",
    )
    try:
        graph.outage(503, recipients={user})
        leaving = pipeline.start_worker("tests.apps:echo", "auto", "leaving")
        wait_for(lambda: owned_by(redis_server) == {f"leaving@{host()}": PARTITIONS})
        pipeline.publish(user, "first")
        wait_for(lambda: "failed transiently" in leaving.log(), what="a backoff")
        leaving.process.terminate()
        assert leaving.process.wait(timeout=15) == 0
        in_flight = redis_server.client(3).hvals(inflight_key(5))
        assert [in_flight_record(raw).envelope.user_id for raw in in_flight] == [user]
        assert not redis_server.client(3).hlen("unacked")  # acked: only the record holds it
        graph.recover()
        pipeline.publish(other, "queued")  # waits on the queue for the heir
        pipeline.start_worker("tests.apps:echo", "auto", "heir")
        graph.wait_for(2, timeout=30)
        # the recovered one ran before the heir consumed the queue
        assert [m.to for m in graph.sent] == [user, other]
        wait_for(  # the reply goes out before the handler's end is recorded
            lambda: not redis_server.client(3).hlen(inflight_key(5)), what="nothing in flight"
        )
    finally:
        pipeline.close()


def test_a_node_that_cannot_renew_stops_consuming(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """The pipeline DB (leases) becomes unreachable while the broker stays up: the node
    must stop taking messages before its leases can expire and another node take over."""
    leases_db = RedisServer().start()
    pipeline = Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_PARTITIONS=str(PARTITIONS),
        PARLEY_LEASE_TTL="3",
        PARLEY_PIPELINE_URL=leases_db.db_url(3),
    )
    try:
        worker = pipeline.start_worker("tests.apps:recording", "auto", "cut-off")
        wait_for(lambda: None not in holders(leases_db.client(3), PARTITIONS))
        leases_db.stop()
        wait_for(
            lambda: worker.log().count("stopped consuming") == PARTITIONS,
            timeout=20,
            what="every partition's consumer cancelled",
        )
        user = "51912340000"
        partition = pipeline.publish(user, "1")
        broker = redis_server.client(3)
        until = time.monotonic() + 6.0  # two lease lifetimes: nothing may take it
        while time.monotonic() < until:
            assert broker.llen(queue_name(partition)) == 1 and broker.hlen("unacked") == 0
            time.sleep(0.05)
        leases_db.start()  # same port, empty: the node registers and takes them again
        wait_for(lambda: pipeline.seqs(user) == [1], what="the message, once leases are back")
    finally:
        pipeline.close()
        leases_db.close()


# -- chaos -----------------------------------------------------------------------------


def chaos_runs(server: RedisServer, users: list[str]) -> dict[str, list[list[Any]]]:
    client = server.client(1)
    pipe = client.pipeline()
    for user in users:
        pipe.hget(f"{PHONE_ID}:state:chaos:{user}", "runs")
    return {u: orjson.loads(r) if r else [] for u, r in zip(users, pipe.execute(), strict=True)}


def overlaps(runs: dict[str, list[list[Any]]]) -> list[tuple[list[Any], list[Any]]]:
    """Pairs of runs of one partition by two processes whose [start, end] intervals
    overlap (one node runs many users of a partition at once; two nodes never)."""
    by_partition: dict[int, list[list[Any]]] = defaultdict(list)
    for user_runs in runs.values():
        for run in user_runs:
            by_partition[run[2]].append(run)
    found = []
    for partition_runs in by_partition.values():
        partition_runs.sort(key=lambda run: run[3])
        for n, before in enumerate(partition_runs):
            for after in itertools.takewhile(
                lambda run, end=before[4]: run[3] < end, partition_runs[n + 1 :]
            ):
                if after[1] != before[1]:
                    found.append((before, after))
    return found


def in_flight_on(server: RedisServer, node: str) -> set[tuple[str, int]]:
    """(user, seq) of every envelope the pipeline DB records as running on ``node``."""
    found = set()
    for key in server.client(3).scan_iter("parley:inflight:*"):
        for raw in server.client(3).hvals(key):
            record = in_flight_record(raw)
            if record.node == node:
                text = Webhook.from_envelope(record.envelope).get_message_text()
                found.add((record.envelope.user_id, int(text)))
    return found


def test_chaos_sigkill_join_and_freeze_under_steady_load(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    """Steady signed traffic through the ingress onto 3 auto nodes; one is SIGKILLed, one
    joins, and one is frozen (SIGSTOP) past its lease while its handlers wait on the
    network, then woken: the fault after which a node without fencing writes next to
    its partition's new owner.

    On RabbitMQ the SIGKILLed node's unacked messages go back to their queues at their
    places when its connection drops, and its successor finishes what it left in flight
    first: every user's order holds, with no reconciler (it is off on RabbitMQ) and
    nothing lost. The freeze is left out there: a frozen node's connection stays open,
    so the messages it had taken stay in its hands until it wakes, while the new owner
    already runs its users' later ones — Redis' takeover puts them back in front, RabbitMQ
    lets no other consumer take them (see README, "Choosing a broker")."""
    pipeline = Pipeline(
        redis_server,
        tmp_path,
        graph,
        **{**RECONCILING, "PARLEY_PARTITIONS": str(PARTITIONS), **broker},
    )
    amqp = amqp_of(pipeline)
    # on RabbitMQ each accepted webhook waits for the broker's confirm: a third of the
    # load (10 per user, not 20) keeps the test's time near the Redis run's
    webhooks, user_count = (2_000, 200) if amqp else (6_000, 300)
    users = [f"5197{n:06d}" for n in range(user_count)]
    messages = [(users[n % user_count], n // user_count) for n in range(webhooks)]
    settings = make_settings(
        redis_server.url, partitions=PARTITIONS, **({"broker_url": amqp} if amqp else {})
    )
    with ServedApp(create_ingress(settings)) as served, httpx.Client(base_url=served.url) as client:
        try:
            for name in ("n1", "n2", "n3"):
                pipeline.start_worker("tests.apps:chaos", "auto", name)
            wait_for(
                lambda: len(owned_by(redis_server)) == 3 and None not in owned_by(redis_server)
            )
            publisher = post_steadily(client, messages, rate=250)
            done = redis_server.client(3)

            def processed() -> int:
                return sum(1 for _ in done.scan_iter("parley:done:*", count=1000))

            wait_for(lambda: processed() >= webhooks // 5, timeout=120, what="a fifth")
            killed = pipeline.workers[1]
            killed_as = f"{killed.node}@{host()}"
            killed_partitions = {k for k, n in enumerate(owners(redis_server)) if n == killed_as}
            # with handlers in hand: their messages are unacked when it dies
            wait_for(lambda: in_flight_on(redis_server, killed_as), what="a handler in hand")
            killed.kill()
            killed_at = time.time()
            killed_in_flight = in_flight_on(redis_server, killed_as)
            wait_for(lambda: processed() >= 2 * webhooks // 5, timeout=120, what="two fifths")
            pipeline.start_worker("tests.apps:chaos", "auto", "n4")
            wait_for(lambda: processed() >= 3 * webhooks // 5, timeout=120, what="three fifths")
            frozen_partitions: set[int] = set()
            frozen_in_flight: set[tuple[str, int]] = set()
            if amqp is None:
                frozen = pipeline.workers[0]
                frozen_as = f"{frozen.node}@{host()}"
                frozen_partitions = {
                    k for k, n in enumerate(owners(redis_server)) if n == frozen_as
                }
                frozen_in_flight = freeze_with_handlers_in_hand(frozen, frozen_as, redis_server)
                frozen_at = processed()
                wait_for(  # its leases ran out and others moved its users on
                    lambda: frozen_as not in owners(redis_server) and processed() > frozen_at + 300,
                    timeout=60,
                    what="the frozen node's partitions taken over",
                )
                frozen.process.send_signal(signal.SIGCONT)
            publisher.join(timeout=120)
            assert not publisher.is_alive()
            lost = settle(pipeline, processed, webhooks)
        finally:
            pipeline.close()

    runs = chaos_runs(redis_server, users)
    logs = "".join(worker.log() for worker in pipeline.workers)
    recovered = {
        (user, int(seq))
        for user, seq in re.findall(r"recovered .*message=wamid\.(\d+)\.(\d+)", logs)
    }
    assert overlaps(runs) == []  # no partition was ever run by two nodes at once
    assert lost == 0  # every accepted webhook ran: the reconciler sent the lost ones again
    for user in users:
        seqs = [run[0] for run in runs[user] if (user, run[0]) not in recovered]
        deduped = [seq for seq, _ in itertools.groupby(seqs)]
        assert deduped == sorted(set(deduped)), user  # in order, but for recovered ones
        assert {run[0] for run in runs[user]} == {seq for u, seq in messages if u == user}
    for user, _ in recovered:  # only the pop of a dead or frozen consumer loses one
        partition = partition_for(PHONE_ID, user, PARTITIONS)
        assert partition in killed_partitions | frozen_partitions, recovered
    counts = Counter((user, run[0]) for user, user_runs in runs.items() for run in user_runs)
    repeats = {run for run, count in counts.items() if count > 1}
    # re-run: only what the killed or the frozen node had in flight, at most once more
    assert repeats <= killed_in_flight | frozen_in_flight, repeats
    assert all(counts[run] == 2 for run in repeats)
    names = {worker.process.pid: worker.node for worker in pipeline.workers}
    nodes = Counter(names[run[1]] for user_runs in runs.values() for run in user_runs)
    assert set(nodes) == {"n1", "n2", "n3", "n4"}
    after_kill = {run[2] for r in runs.values() for run in r if run[3] > killed_at + 0.5}
    assert after_kill == set(range(PARTITIONS))  # the killed node's partitions moved on
    if killed_in_flight:  # its successor finished them before consuming the queues
        assert f"left in flight by {killed_as}" in logs
    if amqp is not None:  # nothing to recover by hand: the broker put them back in place
        assert not recovered
    assert_nothing_left(pipeline)


def freeze_with_handlers_in_hand(
    node: WorkerProcess, node_as: str, server: RedisServer
) -> set[tuple[str, int]]:
    """SIGSTOP ``node`` at a moment it has handlers running (the in-flight records,
    read while it is stopped, say which); returns them."""
    for _ in range(100):
        wait_for(lambda: in_flight_on(server, node_as), timeout=30, what="a handler in hand")
        node.process.send_signal(signal.SIGSTOP)
        in_hand = in_flight_on(server, node_as)
        if in_hand:
            return in_hand
        node.process.send_signal(signal.SIGCONT)  # it finished them first: try again
    raise AssertionError(f"{node_as} was never stopped with a handler in hand")


def queues_empty(pipeline: Pipeline, *, unacked: bool = True) -> bool:
    """No message waiting on a partition queue, nor (``unacked``) held by a node: kombu's
    unacked hash on Redis; on RabbitMQ the vhost's counts (``rabbitmqctl``, about a
    second: without ``unacked``, a passive declare per queue, waiting ones only)."""
    queues = [queue_name(k) for k in range(PARTITIONS)]
    url = amqp_of(pipeline)
    if url is None:
        broker = pipeline.server.client(3)
        return not any(broker.llen(q) for q in queues) and not (unacked and broker.hlen("unacked"))
    if not unacked:
        return not any(ready for ready, _ in queue_depths(url, queues).values())
    found = list_queues(url)
    return not any(
        found[q]["messages_ready"] or found[q]["messages_unacknowledged"]
        for q in queues
        if q in found
    )


def assert_nothing_left(pipeline: Pipeline) -> None:
    """Queues empty, nothing unacked or in flight: within seconds, far below the broker's
    visibility timeout (an hour), after which it would redeliver what a dead node held."""
    pipelinedb = pipeline.server.client(3)
    wait_for(
        lambda: (
            queues_empty(pipeline)
            and not any(pipelinedb.hlen(inflight_key(k)) for k in range(PARTITIONS))
        ),
        timeout=30,
        what="queues, unacked and in-flight records empty",
    )


def settle(pipeline: Pipeline, processed: Callable[[], int], webhooks: int) -> int:
    """Wait until every webhook is done, or until all queues are empty with nothing
    unacked or in flight for a few seconds; returns how many never ran."""
    pipelinedb = pipeline.server.client(3)

    def idle() -> bool:
        return queues_empty(pipeline, unacked=amqp_of(pipeline) is None) and not list(
            pipelinedb.scan_iter("parley:inflight:*")
        )

    deadline = time.monotonic() + 300
    idle_since: float | None = None
    while (done := processed()) < webhooks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {webhooks} webhooks done")
        if idle():
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 5:
                return webhooks - done
        else:
            idle_since = None
        time.sleep(0.1)
    return 0


def test_the_overlap_check_catches_a_naive_deployment(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """Two nodes told to consume the same partitions (no leases): the same check the
    chaos test passes finds a partition run on two nodes at once."""
    pipeline = deployment(redis_server, tmp_path, graph, lease_ttl=3)
    users = [f"5198{n:06d}" for n in range(40)]
    try:
        pipeline.start_worker("tests.apps:chaos", "all", "naive-1")
        pipeline.start_worker("tests.apps:chaos", "all", "naive-2")
        for seq in range(15):
            for user in users:
                pipeline.publish(user, str(seq))
        wait_for(
            lambda: sum(len(r) for r in chaos_runs(redis_server, users).values()) >= 600,
            what="600 runs",
        )
    finally:
        pipeline.close()
    assert overlaps(chaos_runs(redis_server, users))


# -- helpers ---------------------------------------------------------------------------


def host() -> str:
    return socket.gethostname()
