"""The pipeline benchmark's floor: a Celery no-op task with Parley's worker settings.

``celery -A bench.noop worker`` finds ``app``: built on first use from the settings in
the environment the benchmark gives the worker (``PARLEY_REDIS_URL`` ...).
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery

from parley.workers.celery import celery_config
from parley.workers.settings import Settings

TASK_NAME = "bench.noop"


def noop(envelope: dict[str, Any]) -> None:
    return None


def create_noop_app(settings: Settings) -> Celery:
    """A Celery app with Parley's Celery settings and the one no-op task."""
    app = Celery("bench", set_as_current=False)
    app.conf.update(celery_config(settings))
    app.task(name=TASK_NAME, ignore_result=True, shared=False)(noop)
    return app


@functools.cache
def _from_environment() -> Celery:
    return create_noop_app(Settings())


def __getattr__(name: str) -> Celery:
    if name == "app":
        return _from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
