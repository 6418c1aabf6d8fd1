"""Key-ordered concurrency: a node runs many users at once, each user strictly in order.

The lane rule itself in-process; then real worker processes on the tests' redis-server:
200 users with random handler delays, a slow user beside 100 fast ones in the same
partition, a hand-over while several lanes run long handlers, and the loop-lag warning.
"""

from __future__ import annotations

import itertools
import random
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer
from parley.wire.keys import inflight_key, lease_key
from parley.wire.partition import partition_for
from parley.workers.lanes import Lanes, lane_of
from parley.workers.leases import assignment
from tests.helpers import PARTITIONS, Pipeline, cli, wait_for
from tests.rabbitmq import BROKERS, broker_env
from tests.test_ownership import chaos_runs

# -- the rule, in-process ----------------------------------------------------------------


def test_a_lane_runs_its_messages_one_at_a_time_in_order_and_others_at_once() -> None:
    lanes = Lanes()
    started: list[str] = []
    lanes.enter(("t", "a"), 0, lambda: started.append("a1"))
    lanes.enter(("t", "a"), 0, lambda: started.append("a2"))  # parked behind a1
    lanes.enter(("t", "b"), 0, lambda: started.append("b1"))  # another lane: at once
    lanes.enter(("t", "a"), 1, lambda: started.append("a3"))
    assert started == ["a1", "b1"] and lanes.busy() == 2
    drained: list[int] = []
    lanes.when_drained(0, lambda: drained.append(0))
    lanes.leave(("t", "a"), 0)  # a1 ends: a2 starts
    assert started == ["a1", "b1", "a2"]
    lanes.leave(("t", "b"), 0)
    lanes.leave(("t", "a"), 0)  # a2 ends: partition 0 is drained, a3 starts
    assert started[-1] == "a3" and drained == [0]
    assert lanes.unfinished() == {1: 1} and not lanes.wait_drained(timeout=0.01)
    lanes.leave(("t", "a"), 1)
    assert lanes.wait_drained(timeout=0) and lanes.busy() == 0
    lanes.when_drained(7, lambda: drained.append(7))  # nothing of it here: at once
    assert drained == [0, 7] and lanes.unfinished() == {}


def run_threads(lanes: Lanes | None) -> tuple[dict[str, list[int]], list[str]]:
    """8 users × 50 messages entered in queue order, each run on a thread of its own
    for 0-2 ms; without ``lanes`` (the naive pool) every message starts at once."""
    order: dict[str, list[int]] = {user: [] for user in "abcdefgh"}
    running: set[str] = set()
    overlap: list[str] = []
    lock = threading.Lock()
    threads: list[threading.Thread] = []

    def start(user: str, seq: int) -> None:
        def run() -> None:
            with lock:
                if user in running:
                    overlap.append(user)
                running.add(user)
                order[user].append(seq)
            time.sleep(random.uniform(0, 0.002))
            with lock:
                running.discard(user)
            if lanes is not None:
                lanes.leave(("t", user), None)

        thread = threading.Thread(target=run)
        threads.append(thread)
        thread.start()

    for seq in range(50):  # the consumer's thread: messages in queue order
        for user in order:
            if lanes is None:
                start(user, seq)
            else:
                lanes.enter(("t", user), None, lambda u=user, s=seq: start(u, s))
    if lanes is not None:
        assert lanes.wait_drained(timeout=30)
    for thread in list(threads):
        thread.join()
    return order, overlap


def test_many_threads_entering_and_leaving_keep_each_lane_in_order() -> None:
    order, overlap = run_threads(Lanes())
    assert overlap == [] and all(seqs == list(range(50)) for seqs in order.values())
    # the same load on a plain thread pool runs a user's messages at once, out of order
    order, overlap = run_threads(None)
    assert overlap or any(seqs != list(range(50)) for seqs in order.values())


def test_the_lane_of_a_task_message_is_its_envelopes_tenant_and_user() -> None:
    body = b'[[{"tenant_id": "106", "user_id": "5190001", "kind": "message"}], {}, {}]'
    assert lane_of("id-1", body, "application/json") == ("106", "5190001")
    assert lane_of("id-2", b"not json", "application/json") == ("task", "id-2")
    assert lane_of("id-3", body, "application/x-python-serialize") == ("task", "id-3")


# -- real worker processes ---------------------------------------------------------------


def users_in(partition: int, count: int) -> list[str]:
    users = (f"519{n:08d}" for n in itertools.count())
    in_partition = (u for u in users if partition_for(PHONE_ID, u, PARTITIONS) == partition)
    return list(itertools.islice(in_partition, count))


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> dict[str, str]:
    """The test runs on each broker: the deployment's extra environment (none for Redis,
    ``PARLEY_BROKER_URL`` of a vhost of its own for RabbitMQ)."""
    return broker_env(request)


def test_200_users_with_random_delays_each_in_order_exactly_once(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path: Path,
    graph: FakeGraphAPI,
    broker: dict[str, str],
) -> None:
    """Handlers wait 5-50 ms at random, so later messages of other users overtake earlier
    ones all the time; no user's messages may overlap, reorder, repeat or go missing —
    on either broker (on RabbitMQ the acks are sent from the consumer's thread)."""
    pipeline = Pipeline(redis_server, tmp_path, graph, PARLEY_CONCURRENCY="32", **broker)
    users = [f"5198{n:06d}" for n in range(200)]
    rounds = 5
    try:
        pipeline.start_worker("tests.apps:chaos", "all", "lanes")
        for seq in range(rounds):
            for user in users:
                pipeline.publish(user, str(seq))
        done = redis_server.client(3)
        wait_for(
            lambda: (
                sum(1 for _ in done.scan_iter("parley:done:*", count=1000)) == rounds * len(users)
            ),
            what="every webhook done",
        )
    finally:
        pipeline.close()
    runs = chaos_runs(redis_server, users)  # [seq, pid, partition, start, end] per user
    for user in users:
        assert [run[0] for run in runs[user]] == list(range(rounds)), user
        for before, after in itertools.pairwise(runs[user]):
            assert before[4] <= after[3], (user, before, after)  # one at a time
    everything = sorted((run for r in runs.values() for run in r), key=lambda run: run[3])
    # the node did run users at once, and later messages did overtake earlier ones
    at_once = max(
        sum(1 for other in everything if other[3] <= run[3] < other[4]) for run in everything
    )
    assert at_once > 4
    finished = sorted(everything, key=lambda run: run[4])
    assert any(a[0] > b[0] for a, b in itertools.pairwise(finished))


def test_a_slow_user_does_not_delay_100_fast_users_of_the_same_partition(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = Pipeline(redis_server, tmp_path, graph, PARLEY_CONCURRENCY="8")
    slow, *fast = users_in(5, 101)
    try:
        pipeline.start_worker("tests.apps:recording", "all", "mixed")
        published = {slow: time.time()}
        pipeline.publish(slow, "1 slow")
        for user in fast:
            published[user] = time.time()
            pipeline.publish(user, "1")
        wait_for(lambda: len(pipeline.runs()) == 101, what="all 101 users handled")
    finally:
        pipeline.close()
    latency = {user: end - published[user] for user, _, _, _, end in pipeline.runs()}
    assert max(latency[user] for user in fast) < latency[slow] / 2


def test_a_hand_over_waits_for_every_lane_of_the_partition_to_drain(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """Three users' long handlers run on node A when node B joins and the partition is
    B's: A stops taking the partition's messages, keeps its lease until all three
    finished, then B takes over; each user's next message runs after its first, once."""
    host = socket.gethostname()
    first, second = f"a@{host}", f"b@{host}"
    moving = next(
        k for k, node in assignment(PARTITIONS, [first, second]).items() if node == second
    )
    pipeline = Pipeline(redis_server, tmp_path, graph, PARLEY_LEASE_TTL="3")
    broker = redis_server.client(3)
    users = users_in(moving, 3)
    try:
        pipeline.start_worker("tests.apps:recording", "auto", "a")
        wait_for(lambda: broker.get(lease_key(moving)) == first.encode())
        for user in users:
            pipeline.publish(user, "1 block")
        wait_for(lambda: broker.hlen(inflight_key(moving)) == 3, what="three lanes running")
        assert f"3 on {first}" in cli(redis_server, "status")
        pipeline.start_worker("tests.apps:recording", "auto", "b")
        wait_for(
            lambda: f"partition {moving}: stopped consuming" in pipeline.workers[0].log(),
            what="A stops taking the partition",
        )
        for user in users:
            pipeline.publish(user, "2")
        until = time.monotonic() + 3.0  # three lease lifetimes: A keeps renewing it
        while time.monotonic() < until:
            assert broker.get(lease_key(moving)) == first.encode()
            time.sleep(0.05)
        assert all(pipeline.seqs(user) == [] for user in users)
        pipeline.release_blocked()
        wait_for(lambda: all(pipeline.seqs(user) == [1, 2] for user in users))
        wait_for(lambda: broker.get(lease_key(moving)) == second.encode())
    finally:
        pipeline.close()
    runs = pipeline.runs()
    assert Counter((user, seq) for user, seq, *_ in runs) == {
        (user, seq): 1 for user in users for seq in (1, 2)
    }
    ends = {(user, seq): end for user, seq, _, _, end in runs}
    starts = {(user, seq): start for user, seq, _, start, _ in runs}
    assert all(ends[(user, 1)] <= starts[(user, 2)] for user in users)
    pids = {seq: {pid for _, s, pid, _, _ in runs if s == seq} for seq in (1, 2)}
    assert len(pids[1]) == 1 and pids[1] != pids[2]  # the second messages ran on B


def test_a_handler_that_blocks_the_loop_is_named_in_a_warning(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    pipeline = Pipeline(redis_server, tmp_path, graph)
    try:
        node = pipeline.start_worker("tests.apps:recording", "all", "blocker")
        # a first webhook warms the process up: a first import on the loop (from a fresh
        # clone, compiling) can block it too, and is named as what it is
        pipeline.publish("51900000077", "0")
        wait_for(lambda: pipeline.seqs("51900000077") == [0], what="the warm-up webhook")
        warm = node.log().count("event loop was blocked")
        pipeline.publish("51900000077", "1 blocking")
        wait_for(lambda: node.log().count("event loop was blocked") > warm, what="the warning")
    finally:
        pipeline.close()
    (line,) = [line for line in node.log().splitlines() if "event loop was blocked" in line][warm:]
    assert "RecordingHandler.handle_message (apps.py:" in line
    assert "asyncio.to_thread" in line
