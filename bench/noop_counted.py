"""The no-op floor on AMQP: ``bench.noop``'s app, whose worker counts each finished
task in the pipeline DB (``bench.brokers.NOOP_DONE``), since RabbitMQ does not tell a
queue's unacknowledged messages without its management API. One INCR per task, a
loopback round trip on the pool thread after the task: a small cost the Redis floor
does not pay.

``celery -A bench.noop_counted worker`` finds ``app``."""

from __future__ import annotations

import functools
from typing import Any

import redis
from celery import Celery, signals

from bench.brokers import NOOP_DONE
from bench.noop import create_noop_app
from parley.workers.settings import Settings


@functools.cache
def _from_environment() -> Celery:
    settings = Settings()
    app = create_noop_app(settings)
    client = redis.Redis.from_url(settings.pipeline)

    def count(**_: Any) -> None:
        client.incr(NOOP_DONE)

    signals.task_postrun.connect(count, weak=False)
    return app


def __getattr__(name: str) -> Celery:
    if name == "app":
        return _from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
