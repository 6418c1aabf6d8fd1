"""Lanes: many users' handlers at once on one node, each user's strictly in order.

The Celery consumer hands the pool every message it takes, in queue order, on its own
thread. :class:`LanePool` is Celery's thread pool with one rule added: a message starts
at once when no earlier message of its lane — (tenant, user); a tenant-level error
block has the tenant's own lane — is unfinished on this node; otherwise it is parked
behind that lane's last message and goes to a thread when that one's task has ended
(acked, or dead-lettered and acked). So up to ``--concurrency`` users run at once, one
user's webhooks run one at a time in the order they were queued, and a parked message
holds no thread: one slow user holds one thread, not the partition.

Celery selects the pool through its documented ``worker_pool`` setting (a class
path); tasks, events, acks and Flower work as with Celery's own thread pool, because
the pool only decides *when* Celery's ``apply_target`` runs.

Each message also counts against its partition (from the queue it came from), so a
hand-over can wait for the partition's lanes to drain before releasing its lease.

On RabbitMQ the ack (or reject) of each message is sent from the consumer's own thread,
never from the pool thread that ran it: an AMQP channel is not thread-safe, and kombu's
reader puts the connection's socket in non-blocking mode while it reads, so an ack
written from another thread at that moment can fail half-sent or be lost — the message
then stays unacked, holding its prefetch slot and its queue. The pool thread hands the
end of its message (Celery's callback, then leaving the lane) to the consumer's loop
(kombu's hub, woken at once); while the loop is stopped (a warm shutdown draining the
lanes), the thread waiting for the drain runs them itself. The Redis transport keeps
acking on the pool thread: its acks are Redis commands on a thread-safe client.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import orjson
import redis
from celery import Celery, bootsteps
from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult
from celery.concurrency.thread import TaskPool as ThreadTaskPool

from parley.wire.keys import partition_of_queue
from parley.workers import private_api

log = logging.getLogger("parley.lanes")

Lane = tuple[str, ...]


class Lanes:
    """Which lanes are busy, what waits in each, and how many messages of each partition
    are unfinished on this node. Thread-safe: the consumer's thread enters messages, pool
    threads leave them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        #: a busy lane → what waits behind its running message (a free lane has no entry)
        self._waiting: dict[Lane, deque[Callable[[], object]]] = {}
        self._unfinished: Counter[int | None] = Counter()
        self._on_drained: dict[int | None, list[Callable[[], object]]] = {}
        #: ends of messages to run on the consumer's thread (``settle_later``)
        self._settling: deque[Callable[[], object]] = deque()
        #: one thread at a time sends acks (the loop, or the thread draining it)
        self._settle_lock = threading.Lock()

    def enter(self, lane: Lane, partition: int | None, start: Callable[[], object]) -> None:
        """Run ``start`` now if ``lane`` is free, else when the lane's earlier messages left."""
        with self._lock:
            self._unfinished[partition] += 1
            waiting = self._waiting.get(lane)
            if waiting is not None:
                waiting.append(start)
                return
            self._waiting[lane] = deque()
        start()

    def leave(self, lane: Lane, partition: int | None) -> None:
        """A message of ``lane`` ended: start the lane's next one, if any."""
        with self._lock:
            waiting = self._waiting[lane]
            following = waiting.popleft() if waiting else None
            if following is None:
                del self._waiting[lane]
            self._unfinished[partition] -= 1
            drained: list[Callable[[], object]] = []
            if not self._unfinished[partition]:
                del self._unfinished[partition]
                drained = self._on_drained.pop(partition, [])
            self._changed.notify_all()
        if following is not None:
            following()
        for callback in drained:
            callback()

    def when_drained(self, partition: int, callback: Callable[[], object]) -> None:
        """Call ``callback`` once no message of ``partition`` is unfinished here (now, if
        none is; else on the thread that finishes the last one)."""
        with self._lock:
            if self._unfinished.get(partition):
                self._on_drained.setdefault(partition, []).append(callback)
                return
        callback()

    def settle_later(self, end: Callable[[], object]) -> None:
        """Queue a message's end (its ack, then leaving its lane) for ``settle``, which
        the consumer's thread runs (any thread)."""
        with self._lock:
            self._settling.append(end)
            self._changed.notify_all()

    def settle(self) -> None:
        """Run every queued end, in the order queued (the consumer's thread)."""
        with self._settle_lock:
            while True:
                with self._lock:
                    if not self._settling:
                        return
                    end = self._settling.popleft()
                end()

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Block until nothing is unfinished on this node; False if ``timeout`` passed.
        Runs the queued ends meanwhile: the caller is the consumer's thread, whose loop
        is stopped while it waits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.settle()
            with self._changed:
                if not self._unfinished:
                    return True
                if self._settling:
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)

    def unfinished(self) -> dict[int | None, int]:
        with self._lock:
            return dict(self._unfinished)

    def busy(self) -> int:
        """How many lanes have a message running or waiting."""
        with self._lock:
            return len(self._waiting)


def wait_for_lanes(lanes: Lanes, report_every: float = 5.0) -> None:
    """Block until every message this node took has run to its end, saying what it waits for."""
    while not lanes.wait_drained(report_every):
        left = sum(lanes.unfinished().values())
        log.info("waiting for %d message(s) in %d lane(s) to finish", left, lanes.busy())


def install_drain(app: Celery, broker: redis.Redis | None) -> None:
    """Warm shutdown (or a consumer restart) of a node with fixed partitions: stop
    taking messages, then let every message taken run to its end (parked ones included)
    before Celery stops the pool — so nothing is left unacked for kombu to put back out
    of order."""

    class DrainStep(bootsteps.StartStopStep):  # type: ignore[misc]
        name = "parley.drain"
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def stop(self, c: Any) -> None:  # Celery stops the consumer before the pool
            queues = [queue.name for queue in private_api.consumed_queues(c)]
            try:
                private_api.stop_consuming(c, queues, broker)
            except Exception as exc:  # a dead connection: nothing is consumed on it anyway
                log.warning("cancelling consumers failed: %s", exc)
            wait_for_lanes(private_api.pool_of(c).lanes)

    app.steps["consumer"].add(DrainStep)


def lane_of(task_id: str, body: Any, content_type: str | None) -> Lane:
    """A Parley task's lane: its envelope's (tenant, user). Anything else (another task,
    an undecodable body) gets a lane of its own, so it orders nothing."""
    if content_type in (None, "application/json"):
        try:
            envelope = orjson.loads(body)[0][0]
            return (str(envelope["tenant_id"]), str(envelope["user_id"]))
        except (orjson.JSONDecodeError, LookupError, TypeError):
            pass
    return ("task", task_id)


def settles_on_consumer(app: Celery) -> bool:
    """Whether messages of this app's broker must be acked on the consumer's thread:
    every transport but Redis and the in-memory one (their acks are thread-safe)."""
    with app.connection_for_read() as connection:  # not connected: only its transport
        driver: str = connection.transport.driver_type
    return driver not in ("redis", "memory")


class LanePool(ThreadTaskPool):  # type: ignore[misc]  # celery has no type hints
    """Celery's thread pool, running each lane's messages one at a time, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lanes = Lanes()
        #: the consumer's loop, when messages must be settled on its thread (AMQP)
        self.hub: Any = None
        self.settle_on_consumer = self.app is not None and settles_on_consumer(self.app)

    def register_with_event_loop(self, loop: Any) -> None:
        super().register_with_event_loop(loop)
        if self.settle_on_consumer:
            self.hub = loop

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> ApplyResult:
        # args: (task name, task id, request dict, body, content type, content encoding)
        _, task_id, request, body, content_type, _ = args or (None,) * 6
        lane = lane_of(task_id, body, content_type)
        partition = partition_of_queue(request.get("delivery_info", {}).get("routing_key"))
        ended: Future[None] = Future()
        hub = self.hub
        outcome: list[Any] = []

        def end() -> None:
            try:
                if outcome and callback is not None:
                    callback(outcome[0])  # Celery's on_success: the ack (or reject)
            except BaseException:
                log.exception("task %s could not be acknowledged", task_id)
            finally:
                ended.set_result(None)
                self.lanes.leave(lane, partition)

        def run() -> None:
            try:
                if hub is None:
                    apply_target(target, args, kwargs, callback, accept_callback)
                else:  # the callback acks: it runs in ``end``, on the consumer's thread
                    apply_target(target, args, kwargs, outcome.append, accept_callback)
            except BaseException:  # the task's own errors never get here: Celery's tracer
                log.exception("task %s failed outside its handler", task_id)
            finally:
                if hub is None:
                    ended.set_result(None)
                    self.lanes.leave(lane, partition)
                else:
                    self.lanes.settle_later(end)
                    hub.call_soon(self.lanes.settle)  # thread-safe: wakes the loop

        self.lanes.enter(lane, partition, lambda: self.executor.submit(run))
        return ApplyResult(ended)

    def _get_info(self) -> dict[str, Any]:
        info: dict[str, Any] = super()._get_info()
        info["busy-lanes"] = self.lanes.busy()
        return info
