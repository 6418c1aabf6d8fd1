"""The pipeline benchmark's floor: a Celery no-op task with Parley's worker settings."""

from __future__ import annotations

from typing import Any

from celery import Celery

from workers.settings import get_settings
from workers.tasks import configure_celery

app = Celery("bench")
configure_celery(get_settings(), app)


@app.task(name="bench.noop", ignore_result=True)
def noop(envelope: dict[str, Any]) -> None:
    return None
