"""Parley's workers: the Celery app, handlers, the messenger and the builder.

``celery -A workers ...`` finds the Celery app here as ``workers.celery``.
"""

from __future__ import annotations

from workers.builder import ParleyApp, WappaBuilder
from workers.handler import WappaEventHandler
from workers.tasks import celery_app as celery
from workers.tasks import publish
from workers.webhook import Envelope, Webhook, split_delivery

__all__ = [
    "Envelope",
    "ParleyApp",
    "WappaBuilder",
    "WappaEventHandler",
    "Webhook",
    "celery",
    "publish",
    "split_delivery",
]
