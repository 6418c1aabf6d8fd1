"""``parley worker --partitions auto``: take and hand over partitions while running.

A thread beside the worker's event loop heartbeats, renews the node's leases and
re-balances by rendezvous hashing (:mod:`workers.leases`). It never touches the
consumer itself: taking and dropping a partition run on the worker's own loop (kombu's
hub), between messages, through Celery's consumer control (``add_task_queue`` /
``cancel_task_queue``). The order of events is always:

- take: lease acquired (only if free) → every unacked message a predecessor left is put
  back at the front of the queue, in its original order → the envelopes it left in
  flight are finished → the queue is consumed;
- hand over: consumer cancelled (a blocking pop already sent is answered and its
  message put back in front) → the partition's lanes drain (every message of it this
  node took runs to its end and is acked; the lease is renewed meanwhile) → the lease
  is released → the next owner takes it.

A node that cannot renew stops consuming before its leases can run out; a SIGKILLed
node's leases simply expire (``PARLEY_LEASE_TTL``).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import redis
from celery import Celery, bootsteps, signals

from parley.wire.keys import NODES, OWNERSHIP_CHANNEL, queue_name
from parley.wire.partition import format_partitions
from parley.workers import private_api
from parley.workers.lanes import Lanes, wait_for_lanes
from parley.workers.leases import Leases, assignment

log = logging.getLogger("parley.ownership")


class Phase(enum.Enum):
    TAKING = "taking"  # lease held, consumer not added yet (recovering first)
    HELD = "held"  # consuming
    DROPPING = "dropping"  # consumer cancelled, lanes draining; lease released after


class NodeNameTaken(RuntimeError):
    pass


class Companion(Protocol):
    """A thread that lives as long as the node's ownership (the reconciler)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Coordinator:
    """One node's partition ownership. Thread-safe; the consumer-side steps run on the
    worker's loop through ``schedule`` (set by :class:`OwnershipStep`)."""

    def __init__(
        self,
        leases: Leases,
        broker: redis.Redis | None,
        notifications: redis.Redis,
        partitions: int,
        ttl: float,
    ) -> None:
        self.leases = leases
        #: its own client, without the leases' short socket timeout: it mostly waits
        self.notifications = notifications
        self.node = leases.node
        #: the Redis broker, to put a dead node's message back in front (RabbitMQ,
        #: without it, requeues unacked messages in place by itself)
        self.broker = broker
        self.partitions = partitions
        self.ttl = ttl
        self.interval = ttl / 3
        self.phases: dict[int, Phase] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        #: SIGTERM: keep renewing what we hold (the message in hand may run long),
        #: take and drop nothing more; the consumer's shutdown hands everything over
        self.draining = threading.Event()
        self.stopping = threading.Event()  # the thread ends
        self.renewed_at = time.monotonic()
        #: partition → the monotonic time until which its lease is surely ours: the
        #: start of the round that last acquired or renewed it, plus the TTL, less a
        #: margin. Read by every cache call and send (``holds``), with no round trip.
        self.valid_until: dict[int, float] = {}
        self.margin = ttl / 6
        self.consumer: Any = None  # the Celery consumer, while it runs
        self.lanes: Lanes | None = None  # its pool's lanes
        #: run on the worker's loop before a taken partition is consumed (recovery)
        self.on_take: Callable[[int], object] | None = None
        #: started with the ownership thread, stopped before it
        self.companions: list[Companion] = []
        self._thread: threading.Thread | None = None
        self._listener: Any = None
        self._announced: frozenset[int] = frozenset()  # what the last summary line said

    # -- life cycle ----------------------------------------------------------------------

    def claim_name(self) -> None:
        """Wait out a previous life of this node name (a restart after SIGKILL); refuse
        if another live process keeps renewing it."""
        client = self.leases.client
        deadline = time.monotonic() + 2 * self.ttl + 1
        while (score := client.zscore(NODES, self.node)) is not None:
            now_ms = client.time()
            if score <= now_ms[0] * 1000 + now_ms[1] // 1000:
                break
            if time.monotonic() > deadline:
                raise NodeNameTaken(f"node name {self.node!r} is in use by a live node")
            time.sleep(0.2)

    def start(self) -> None:
        if self._thread is not None:
            return
        pubsub = self.notifications.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(**{OWNERSHIP_CHANNEL: lambda _message: self.wake.set()})
        self._listener = pubsub.run_in_thread(
            sleep_time=self.interval, daemon=True, exception_handler=self._listener_failed
        )
        self._thread = threading.Thread(target=self._run, name="parley-ownership", daemon=True)
        self._thread.start()
        for companion in self.companions:
            companion.start()

    def _listener_failed(self, exc: BaseException, pubsub: Any, thread: Any) -> None:
        log.debug("ownership notifications interrupted: %s", exc)
        time.sleep(self.interval)

    def stop(self) -> None:
        for companion in self.companions:
            companion.stop()
        self.stopping.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl)
        if self._listener is not None:
            self._listener.stop()

    def _run(self) -> None:
        first = True
        while not self.stopping.is_set():
            try:
                self.tick()
                if first:
                    self.leases.announce()
                    first = False
            except redis.RedisError as exc:
                self._unreachable(exc)
            except Exception:  # a bug must not silently end ownership: log, keep going
                log.exception("ownership tick failed")
            self.wake.wait(self.interval)
            self.wake.clear()

    # -- one round -----------------------------------------------------------------------

    def tick(self) -> None:
        started = time.monotonic()
        nodes = self.leases.heartbeat()
        with self.lock:
            mine = dict(self.phases)
        kept = self.leases.renew(mine)
        self.renewed_at = started
        self.valid_until.update(dict.fromkeys(kept, started + self.ttl - self.margin))
        if self.draining.is_set():
            return
        for partition in sorted(mine.keys() - kept):
            log.error("partition %d: lease lost (expired or taken); stop consuming", partition)
            self._drop(partition)
        owners = assignment(self.partitions, nodes)
        desired = {k for k, node in owners.items() if node == self.node}
        for partition, phase in sorted(mine.items()):
            if partition in kept and phase is Phase.HELD and partition not in desired:
                log.info("partition %d: handing over to %s", partition, owners.get(partition))
                self._drop(partition)
        for partition in sorted(desired - mine.keys()):
            if self.draining.is_set():
                return
            asked = time.monotonic()
            if self.leases.acquire(partition):
                self.valid_until[partition] = asked + self.ttl - self.margin
                self._take(partition)
        self._announce()

    def _announce(self) -> None:
        """One line when the partitions this node holds change, not one per partition
        (16 at a node's start): what an operator reads to see where users went."""
        with self.lock:
            held = frozenset(k for k, phase in self.phases.items() if phase is not Phase.DROPPING)
        if held != self._announced:
            self._announced = held
            log.info(
                "holding %d of %d partitions: %s",
                len(held),
                self.partitions,
                format_partitions(held) or "none",
            )

    def holds(self, partition: int) -> bool:
        """Whether this node surely still holds ``partition``'s lease: no other node
        can have taken it yet. Local (no round trip): a node that froze past its lease
        (a GC pause, a paused VM, SIGSTOP) finds out here, at its first call after."""
        return time.monotonic() < self.valid_until.get(partition, 0.0)

    def lease_lost(self, partition: int) -> None:
        """The worker refused an envelope of ``partition``: its lease is another node's.
        Re-check at once, so the consumer is cancelled before it takes more."""
        self.wake.set()

    def give_up(self, partition: int) -> None:
        """The worker abandoned an envelope of ``partition`` (its lease ran out under a
        handler): stop consuming it and release it, even if the next renewal succeeds,
        so that whoever takes it next finishes what was left in flight first."""
        with self.lock:
            held = partition in self.phases
        if held:
            self._drop(partition)
        self.wake.set()

    def _unreachable(self, exc: BaseException) -> None:
        """Redis unreachable: once the leases could have run out before the next try,
        stop consuming (another node may own them by then)."""
        left = self.ttl - (time.monotonic() - self.renewed_at)
        log.warning("cannot renew partition leases (%s); %.1fs left on them", exc, left)
        if left <= self.interval * 1.5:
            with self.lock:
                consuming = [k for k, phase in self.phases.items() if phase is not Phase.DROPPING]
            for partition in consuming:
                self._drop(partition)

    # -- taking and dropping: the consumer side runs on the worker's loop ----------------

    def _take(self, partition: int) -> None:
        with self.lock:
            self.phases[partition] = Phase.TAKING
        try:
            restored = (
                private_api.restore_unacked(self.broker, queue_name(partition))
                if self.broker
                else 0
            )
        except redis.RedisError:
            with self.lock:  # not taken: the next round tries again (the lease is ours)
                self.phases.pop(partition, None)
            raise
        if restored:
            log.warning(
                "partition %d: put %d unacked message(s) back in front", partition, restored
            )
        self.schedule(self._consume, partition)

    def _consume(self, partition: int) -> None:
        if self.phases.get(partition) is not Phase.TAKING:
            return  # dropped before its turn came
        try:
            if self.on_take is not None:
                self.on_take(partition)
        except Exception:  # not taken; the lease is released and the next round retries
            log.exception("partition %d: recovery before consuming failed", partition)
            self._drop(partition)
            return
        with self.lock:
            if self.phases.get(partition) is not Phase.TAKING:
                return  # dropped meanwhile
            private_api.consume(self.consumer, queue_name(partition))
            self.phases[partition] = Phase.HELD
        log.debug("partition %d: consuming", partition)

    def _drop(self, partition: int) -> None:
        with self.lock:
            if self.phases.get(partition) is Phase.DROPPING:
                return
            self.phases[partition] = Phase.DROPPING
        self.schedule(self._stop_consuming, partition)

    def _stop_consuming(self, partition: int) -> None:
        self.cancel([partition])
        log.info("partition %d: stopped consuming; releasing it once its lanes drain", partition)
        if self.lanes is None:
            self._release(partition)
        else:
            self.lanes.when_drained(partition, lambda: self._release(partition))

    def _release(self, partition: int) -> None:
        with self.lock:
            if self.phases.get(partition) is not Phase.DROPPING:
                return  # relinquished meanwhile
            self.phases.pop(partition)
            self.valid_until.pop(partition, None)
        try:
            self.leases.release([partition])
        except redis.RedisError as exc:  # unreachable: it expires instead
            log.warning("partition %d: lease not released (%s); it will expire", partition, exc)
        else:
            log.info("partition %d: released", partition)

    def cancel(self, partitions: list[int]) -> None:
        """Stop consuming these queues, leaving no popped message behind."""
        private_api.stop_consuming(self.consumer, [queue_name(k) for k in partitions], self.broker)

    def schedule(self, function: Any, *args: Any) -> None:
        """Run on the worker's loop thread, between messages."""
        private_api.call_soon(self.consumer, function, *args)

    def quiesce(self) -> list[int]:
        """On the worker's thread, with its loop stopped (SIGTERM, or a consumer
        restart): stop consuming every partition and wait until every message this node
        took has run to its end. The leases stay held (and renewed) until ``relinquish``."""
        with self.lock:
            partitions = sorted(self.phases)
            self.phases.update(dict.fromkeys(partitions, Phase.DROPPING))
        if self.consumer is not None:
            try:
                self.cancel(partitions)
            except Exception as exc:  # a dead connection: nothing is consumed on it anyway
                log.warning("cancelling partition consumers failed: %s", exc)
            private_api.forget_queues(self.consumer, [queue_name(k) for k in partitions])
        if self.lanes is not None:
            wait_for_lanes(self.lanes)
        return partitions

    def relinquish(self, leave: bool) -> None:
        """Release every partition at once, after ``quiesce``."""
        with self.lock:
            partitions = sorted(self.phases)
            self.phases.clear()
            self.valid_until.clear()
        try:
            self.leases.release(partitions)
            if leave:
                self.leases.leave()
        except redis.RedisError as exc:
            log.warning("could not release leases (they will expire): %s", exc)
        if partitions:
            log.info("released partitions %s", format_partitions(partitions))


def install(app: Celery, coordinator: Coordinator) -> None:
    """Run the coordinator inside this Celery app's worker consumer: it needs the
    consumer's task queues and its event loop."""

    # celery has no type hints, so StartStopStep is Any to mypy
    class OwnershipStep(bootsteps.StartStopStep):  # type: ignore[misc]
        name = "parley.ownership"
        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            if not private_api.has_event_loop(c):
                raise RuntimeError("--partitions auto needs the worker's event loop")
            coordinator.consumer = c
            coordinator.lanes = private_api.pool_of(c).lanes
            coordinator.start()

        def stop(self, c: Any) -> None:
            # Celery stops the consumer before the pool: the lanes can still drain here
            coordinator.quiesce()  # the ownership thread keeps renewing meanwhile
            if not coordinator.draining.is_set():
                # a consumer restart (broker connection lost): start over with no partitions
                coordinator.relinquish(leave=False)

        def shutdown(self, c: Any) -> None:
            coordinator.draining.set()
            coordinator.quiesce()  # nothing left to wait for, unless stop was skipped
            coordinator.stop()
            coordinator.relinquish(leave=True)

    def shutting_down(**_: Any) -> None:
        # SIGTERM: take nothing new from here on; the consumer's shutdown hands over
        coordinator.draining.set()

    app.steps["consumer"].add(OwnershipStep)
    signals.worker_shutting_down.connect(shutting_down, weak=False)
