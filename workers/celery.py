"""The Celery app of a Parley process, built from its settings.

Nothing here runs at import: ``create_celery(settings)`` makes a new app for the
settings it is given (the worker, the ingress's fallback publisher and ``parley demo``
each build theirs when they start). ``celery -A parley.workers flower`` finds the
``app`` attribute of this module, which builds one from the environment on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

from parley.wire.envelope import Envelope
from parley.wire.keys import DEFAULT_QUEUE, queue_name
from parley.wire.messages import TASK_NAME, task_repr, task_shadow
from parley.wire.partition import partition_for
from parley.workers.settings import Settings

#: Celery's ``worker_pool``: its thread pool, running each lane's messages in order
LANE_POOL = "parley.workers.lanes:LanePool"
#: Messages a node holds per handler it can run: those parked behind a busy lane wait
#: here, so other users' messages behind them still reach a free thread
PREFETCH_MULTIPLIER = 4
#: Options every Parley worker node is started with (the pool and concurrency come
#: from the settings: ``celery_config``)
WORKER_OPTIONS = ("--without-mingle", "--without-gossip")


def celery_config(settings: Settings) -> dict[str, Any]:
    """Parley's Celery settings: JSON only, acks after the handler, the lane pool with
    ``settings.concurrency`` threads, prefetch bounded by it."""
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker.startswith("memory://"):
        # the in-memory broker (parley demo) polls; its default 1 s is a second a message
        transport["polling_interval"] = 0.01
    if settings.redelivery_scan_interval:
        transport["unacked_restore_interval"] = settings.redelivery_scan_interval
        transport["unacked_restore_throttle"] = 1
        # a node SIGKILLed during a scan leaves kombu's scan lock held until it expires
        # (5 minutes by default): no redelivery anywhere until then
        transport["unacked_mutex_expire"] = max(10, 5 * settings.redelivery_scan_interval)
    return {
        **amqp_queues(settings),
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_pool": LANE_POOL,
        "worker_concurrency": settings.concurrency,
        "worker_prefetch_multiplier": PREFETCH_MULTIPLIER,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_create_missing_queues": True,
        "task_default_queue": DEFAULT_QUEUE,
        "worker_hijack_root_logger": False,
    }


def amqp_queues(settings: Settings) -> dict[str, Any]:
    """How the queues are declared on RabbitMQ. Celery declares each queue when it
    first publishes to or consumes from it (``task_create_missing_queues``), durable
    (kombu's default), bound to a durable direct exchange of its name: messages and
    queues outlive a broker restart (Celery publishes them persistent). With
    ``PARLEY_AMQP_QUEUE_TYPE=quorum`` they are declared ``x-queue-type: quorum`` —
    the default queue too, so the worker detects quorum queues at start
    (``worker_detect_quorum_queues``) and sets its prefetch per consumer: quorum
    queues refuse a channel-wide (global) prefetch."""
    if settings.amqp_queue_type != "quorum":
        return {}
    return {
        "task_create_missing_queue_type": "quorum",
        "task_default_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
    }


def create_celery(
    settings: Settings,
    handle: Callable[[dict[str, Any]], str] | None = None,
    on_shutdown: Callable[[], object] | None = None,
) -> Celery:
    """A Celery app for these settings; with ``handle``, the worker's one task
    (``parley.handle``: one envelope's JSON in, its outcome out); ``on_shutdown`` is
    called as soon as a warm shutdown begins (SIGTERM), before the tasks in hand end."""
    app = Celery("parley")
    app.conf.update(celery_config(settings))
    if handle is not None:
        app.task(name=TASK_NAME, ignore_result=True, shared=False)(handle)
    if on_shutdown is not None:
        signals.worker_shutting_down.connect(lambda **_: on_shutdown(), weak=False)
    return app


def publish(
    app: Celery, envelope: Envelope, partitions: int, *, timeout: float | None = None
) -> int:
    """Send an envelope to its partition's queue through Celery (any broker); returns
    the partition. On a Redis broker the ingress and ``parley replay`` push the same
    message themselves (``parley.wire.messages``), many per round trip. ``timeout``:
    seconds the write, and on a confirming AMQP channel the broker's confirm, may take
    (``create_publisher``)."""
    partition = partition_for(envelope.tenant_id, envelope.user_id, partitions)
    queue = queue_name(partition)
    bounded: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    if timeout is not None:
        bounded["confirm_timeout"] = timeout
    app.send_task(
        TASK_NAME,
        args=[envelope.to_json()],
        queue=queue,
        routing_key=queue,
        argsrepr=task_repr(envelope),
        kwargsrepr="{}",
        shadow=task_shadow(envelope),
        ignore_result=True,
        **bounded,
    )
    return partition


#: Seconds the ingress's publisher may spend on one message (connecting, the write, the
#: broker's confirm) before it gives up
PUBLISH_TIMEOUT = 5.0
#: AMQP broker URL schemes (kombu's py-amqp transport), where publisher confirms apply
AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


class Publisher:
    """A confirming, time-bounded publish (``create_publisher``); ``close`` releases
    its broker connections."""

    def __init__(self, app: Celery, partitions: int, timeout: float) -> None:
        self.app = app
        self.partitions = partitions
        self.timeout = timeout

    def __call__(self, envelope: Envelope) -> int:
        return publish(self.app, envelope, self.partitions, timeout=self.timeout)

    def close(self) -> None:
        self.app.close()


def create_publisher(settings: Settings, timeout: float = PUBLISH_TIMEOUT) -> Publisher:
    """What the ingress publishes with when the broker is not the pipeline DB: returns
    only once the broker has the message, else raises, within about ``timeout``
    seconds per message (blocking: the ingress calls it off its event loop).

    On AMQP the channel is in publisher-confirm mode, so "has it" means RabbitMQ
    confirmed it (persisted, for a durable queue), not merely that the bytes left this
    process; a Redis broker's LPUSH reply is that confirm already. The publish declares
    its queue first (kombu caches that per connection): a message to a queue no worker
    declared yet would otherwise be confirmed and dropped as unroutable. One reconnect
    is tried, so a pooled connection the broker closed (a restart) costs a retry, not
    a 503; a broker that is down costs a 503 fast. No ``task-sent`` events: the
    ingress's own Redis path sends none either."""
    app = create_celery(settings)
    if settings.broker.startswith(AMQP_SCHEMES):
        transport = dict(app.conf.broker_transport_options or {})
        transport["confirm_publish"] = True
        app.conf.broker_transport_options = transport
    app.conf.broker_connection_timeout = timeout
    app.conf.task_send_sent_event = False
    app.conf.task_publish_retry_policy = {
        "max_retries": 1,
        "interval_start": 0,
        "interval_step": 0.1,
        "interval_max": 0.1,
    }
    return Publisher(app, settings.partitions, timeout)


@functools.cache
def _from_environment() -> Celery:
    return create_celery(Settings())


def __getattr__(name: str) -> Celery:
    """``celery -A parley.workers …`` (Flower, inspect): the app for the environment's
    settings, built when Celery first asks for it."""
    if name == "app":
        return _from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
