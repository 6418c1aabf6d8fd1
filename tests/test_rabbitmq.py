"""The pipeline on RabbitMQ: real ``parley worker`` processes consuming the partition
queues of a vhost of their own on the machine's RabbitMQ (``tests/rabbitmq.py``), the
pipeline and caches on the tests' redis-server. First, in-process, the rule that keeps
an AMQP channel single-threaded: the lane pool acks on the consumer's loop thread.
The tests that run on both brokers (ordering, chaos, hand-over, fencing) are in
``test_lanes.py`` and ``test_ownership.py``, parametrised by their ``broker`` fixture."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer
from parley.wire.keys import queue_name
from parley.workers.celery import create_celery
from parley.workers.lanes import LanePool
from parley.workers.settings import Settings
from tests.helpers import Pipeline, wait_for
from tests.rabbitmq import list_queues, queue_depths
from tests.test_ownership import chaos_runs

PARTITIONS = 16


# -- in-process: acks on the consumer's thread --------------------------------------------


def test_on_amqp_the_pool_acks_on_the_loop_thread_in_each_lanes_order() -> None:
    """Celery's callback (which acks) of every message runs on the thread of the
    consumer's loop (kombu's hub), never on the pool thread that ran the handler; a
    lane's next message starts only after its predecessor was acked. No broker is
    touched: the pool only needs to know it serves an AMQP one."""
    from kombu.asynchronous import Hub

    app = create_celery(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672/none"))
    pool = LanePool(8, app=app)
    hub = Hub()
    loop_thread = threading.Thread(target=hub.run_forever, daemon=True)
    pool.register_with_event_loop(hub)
    loop_thread.start()
    events: list[tuple[str, str, int]] = []  # (what, user:seq, thread)
    lock = threading.Lock()

    def record(what: str, key: str) -> None:
        with lock:
            events.append((what, key, threading.get_ident()))

    try:
        for seq in range(5):
            for user in ("a", "b", "c"):
                key = f"{user}:{seq}"
                body = orjson.dumps([[{"tenant_id": PHONE_ID, "user_id": user}], {}, {}])
                pool.on_apply(
                    lambda *_, key=key: (time.sleep(0.002), record("ran", key)),
                    args=("parley.handle", key, {"delivery_info": {}}, body, None, None),
                    callback=lambda _ret, key=key: record("acked", key),
                )
        # polled, not ``wait_drained``: that runs the acks itself (for a stopped loop)
        wait_for(lambda: len(events) == 30, timeout=30, what="every message acked")
        wait_for(lambda: not pool.lanes.unfinished(), timeout=10, what="every lane left")
    finally:
        hub.stop()
        pool.executor.shutdown()
    acks = [e for e in events if e[0] == "acked"]
    assert {thread for _, _, thread in acks} == {loop_thread.ident}
    assert all(thread != loop_thread.ident for what, _, thread in events if what == "ran")
    for user in ("a", "b", "c"):
        mine = [(what, key) for what, key, _ in events if key.startswith(user)]
        expected = [(w, f"{user}:{seq}") for seq in range(5) for w in ("ran", "acked")]
        assert mine == expected, user


def test_on_redis_the_pool_acks_on_the_pool_thread() -> None:
    app = create_celery(Settings(redis_url="redis://127.0.0.1:1"))
    assert not LanePool(2, app=app).settle_on_consumer


# -- real worker processes on a vhost of the machine's RabbitMQ ----------------------------


def on_rabbitmq(
    amqp_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI, **env: str
) -> Pipeline:
    return Pipeline(
        redis_server,
        tmp_path,
        graph,
        PARLEY_BROKER_URL=amqp_url,
        PARLEY_PARTITIONS=str(PARTITIONS),
        **env,
    )


def load(pipeline: Pipeline, users: list[str], rounds: int) -> None:
    """``rounds`` messages per user, round by round (users interleaved, as webhooks come)."""
    for seq in range(rounds):
        for user in users:
            pipeline.publish(user, str(seq))


def wait_all_handled(
    pipeline: Pipeline, redis_server: RedisServer, users: list[str], rounds: int, timeout: float
) -> dict[str, list[list[Any]]]:
    """Every user's runs once all ``rounds`` of each are recorded; on a timeout, what
    the broker still holds, so a stall is visible in the failure."""

    def handled() -> int:
        return sum(len(r) for r in chaos_runs(redis_server, users).values())

    try:
        wait_for(lambda: handled() == rounds * len(users), timeout=timeout, what="all handled")
    except TimeoutError:
        depths = queue_depths(
            pipeline.env["PARLEY_BROKER_URL"], [queue_name(k) for k in range(PARTITIONS)]
        )
        raise AssertionError(
            f"{handled()} of {rounds * len(users)} handled; queues (ready, consumers): {depths}"
        ) from None
    return chaos_runs(redis_server, users)


def assert_each_user_in_order(runs: dict[str, list[list[Any]]], rounds: int) -> None:
    for user, user_runs in runs.items():
        assert [run[0] for run in user_runs] == list(range(rounds)), user
        for before, after in itertools.pairwise(user_runs):
            assert before[4] <= after[3], (user, before, after)  # one at a time


def test_pinned_nodes_handle_50_users_x_10_in_order(
    amqp_url: str, redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """The issue's load: 50 users × 10 envelopes, two nodes pinned to half the partitions
    each. It used to stop after about half (two queues each holding one unacked message,
    nothing moving)."""
    pipeline = on_rabbitmq(amqp_url, redis_server, tmp_path, graph)
    users = [f"5197{n:06d}" for n in range(50)]
    rounds = 10
    try:
        load(pipeline, users, rounds)
        started = time.monotonic()
        pipeline.start_worker("tests.apps:chaos", "0-7", "low")
        pipeline.start_worker("tests.apps:chaos", "8-15", "high")
        runs = wait_all_handled(pipeline, redis_server, users, rounds, timeout=60)
        print(f"500 on RabbitMQ, pinned: {time.monotonic() - started:.1f}s")
    finally:
        pipeline.close()
    assert_each_user_in_order(runs, rounds)
    # declared durable, classic by default: they and their messages outlive a restart
    queues = parley_queues(amqp_url)
    assert {queue_name(k) for k in range(PARTITIONS)} <= set(queues)
    assert {(q["type"], q["durable"]) for q in queues.values()} == {("classic", True)}


def parley_queues(url: str) -> dict[str, dict[str, Any]]:
    """The vhost's Parley queues (Celery may declare its own beside them)."""
    return {name: q for name, q in list_queues(url).items() if name.startswith("parley.")}


def test_quorum_queues_when_asked_and_a_pinned_run_on_them_keeps_each_users_order(
    amqp_url: str, redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """``PARLEY_AMQP_QUEUE_TYPE=quorum``: the publisher and the nodes declare every queue
    a durable quorum queue (RabbitMQ refuses a global prefetch on those: the nodes set it
    per consumer), and two pinned nodes handle 30 users × 5 in order on them."""
    pipeline = on_rabbitmq(amqp_url, redis_server, tmp_path, graph, PARLEY_AMQP_QUEUE_TYPE="quorum")
    users = [f"5195{n:06d}" for n in range(30)]
    rounds = 5
    try:
        load(pipeline, users, rounds)
        pipeline.start_worker("tests.apps:chaos", "0-7", "low")
        pipeline.start_worker("tests.apps:chaos", "8-15", "high")
        runs = wait_all_handled(pipeline, redis_server, users, rounds, timeout=60)
    finally:
        pipeline.close()
    assert_each_user_in_order(runs, rounds)
    queues = parley_queues(amqp_url)
    assert {queue_name(k) for k in range(PARTITIONS)} <= set(queues)
    assert {(q["type"], q["durable"]) for q in queues.values()} == {("quorum", True)}


def test_auto_nodes_share_the_partitions_and_keep_each_users_order(
    amqp_url: str, redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """``--partitions auto`` on RabbitMQ: two nodes take the partitions by lease, consume
    their queues, and the issue's load is handled, each user in order, each partition's
    runs by one node."""
    from parley.workers.leases import holders

    pipeline = on_rabbitmq(amqp_url, redis_server, tmp_path, graph, PARLEY_LEASE_TTL="3")
    users = [f"5196{n:06d}" for n in range(50)]
    rounds = 10
    try:
        pipeline.start_worker("tests.apps:chaos", "auto", "one")
        pipeline.start_worker("tests.apps:chaos", "auto", "two")

        def shared() -> bool:
            owners = holders(redis_server.client(3), PARTITIONS)
            return None not in owners and len(set(owners)) == 2

        wait_for(shared, timeout=30, what="two nodes holding every partition")
        started = time.monotonic()
        load(pipeline, users, rounds)
        runs = wait_all_handled(pipeline, redis_server, users, rounds, timeout=60)
        print(f"500 on RabbitMQ, auto: {time.monotonic() - started:.1f}s")
    finally:
        pipeline.close()
    assert_each_user_in_order(runs, rounds)
    pids_by_partition: dict[int, set[int]] = {}
    for user_runs in runs.values():
        for _seq, pid, partition, _start, _end in user_runs:
            pids_by_partition.setdefault(partition, set()).add(pid)
    assert len({pid for pids in pids_by_partition.values() for pid in pids}) == 2
    assert all(len(pids) == 1 for pids in pids_by_partition.values())
