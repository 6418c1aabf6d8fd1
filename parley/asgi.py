"""The ingress as deployed: the endpoint (``parley.ingress``) composed with what sits
above it — the pipeline metrics collector, and Celery when the broker is not the
pipeline DB. ``parley ingress`` serves ``parley.asgi:from_environment`` (a factory,
so each uvicorn worker process builds its own app when it starts)."""

from __future__ import annotations

from fastapi import FastAPI

from parley.ingress.accept import Accept, Publish
from parley.ingress.app import create_app
from parley.metrics import PipelineCollector
from parley.workers.settings import Settings


def celery_publisher(settings: Settings) -> Publish | None:
    """Publishing through Celery, needed only when the broker is not the pipeline DB
    (else the ingress's script enqueues itself)."""
    if settings.broker == settings.pipeline:
        return None
    from parley.workers.celery import create_celery, publish

    celery = create_celery(settings)
    return lambda envelope: publish(celery, envelope, settings.partitions)


def create_ingress(
    settings: Settings,
    *,
    skip_signature: bool = False,
    acceptor: Accept | None = None,
    publish: Publish | None = None,
) -> FastAPI:
    return create_app(
        settings,
        skip_signature=skip_signature,
        acceptor=acceptor,
        publish=publish or celery_publisher(settings),
        collectors=[PipelineCollector(settings.pipeline, settings.partitions)],
    )


def from_environment() -> FastAPI:
    """What each ``parley ingress`` process serves. Signatures are always checked here:
    only the explicit ``--insecure-skip-signature`` flag, on loopback and in one
    process, serves an app without (no environment variable can)."""
    return create_ingress(Settings())
