"""The ingress as deployed: the endpoint (``parley.ingress``) composed with what sits
above it — the pipeline metrics collector, and Celery when the broker is not the
pipeline DB. ``parley ingress`` serves ``parley.asgi:from_environment`` (a factory,
so each uvicorn worker process builds its own app when it starts)."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from parley.ingress.accept import Accept, Publish
from parley.ingress.app import create_app
from parley.ingress.metrics import MULTIPROC_DIR, MultiprocessMisconfigured, multiprocess_dir
from parley.metrics import PipelineCollector
from parley.workers.settings import Settings

log = logging.getLogger("parley.ingress")

#: Set by ``parley ingress --workers N`` for its worker processes: it has logged the
#: start-up warnings once already, so they do not repeat them (internal, not a setting)
WARNED = "_PARLEY_INGRESS_WARNED"


def celery_publisher(settings: Settings) -> Publish | None:
    """Publishing through Celery, needed only when the broker is not the pipeline DB
    (else the ingress's script enqueues itself): with publisher confirms on RabbitMQ,
    bounded in time (``parley.workers.celery.create_publisher``)."""
    if settings.broker == settings.pipeline:
        return None
    from parley.workers.celery import create_publisher

    return create_publisher(settings)


def create_ingress(
    settings: Settings,
    *,
    skip_signature: bool = False,
    acceptor: Accept | None = None,
    publish: Publish | None = None,
    warn: bool = False,
) -> FastAPI:
    """``warn``: see ``create_app``."""
    return create_app(
        settings,
        skip_signature=skip_signature,
        acceptor=acceptor,
        publish=publish or celery_publisher(settings),
        collectors=[
            PipelineCollector(settings.pipeline, settings.partitions, broker_url=settings.broker)
        ],
        warn=warn,
    )


def from_environment() -> FastAPI:
    """What each ``parley ingress`` process serves. Signatures are always checked here:
    only the explicit ``--insecure-skip-signature`` flag, on loopback and in one
    process, serves an app without (no environment variable can)."""
    return create_ingress(Settings(), warn=not os.environ.get(WARNED))  # logged once


def prepare_processes(processes: int) -> Callable[[], None]:
    """What ``parley ingress --workers N`` (N > 1) sets up before uvicorn starts its
    worker processes, which inherit the environment; returns what undoes it on exit.

    A directory where each process keeps its delivery counters, so ``/metrics`` sums
    all of them (``parley.ingress.metrics``): ``PROMETHEUS_MULTIPROC_DIR`` if the
    operator set it (never emptied here), else a private one made here and removed by
    the returned clean-up. And the mark that the start-up warnings were logged. uvicorn
    replaces a worker that dies by itself; the counts the dead one kept stay in the
    sum, as counters must (there are no per-process gauges to mark dead)."""
    if processes <= 1:
        return lambda: None
    directory = multiprocess_dir()
    made = None
    if directory is None:
        directory = made = tempfile.mkdtemp(prefix="parley-metrics-")
    elif not os.path.isdir(directory):
        raise MultiprocessMisconfigured(f"{MULTIPROC_DIR}={directory} is not a directory")
    elif leftovers := [name for name in os.listdir(directory) if name.endswith(".db")]:
        log.warning(
            "%s=%s holds %d counter file(s) of earlier processes: /metrics counts them too "
            "(empty it before starting the ingress to count from zero)",
            MULTIPROC_DIR,
            directory,
            len(leftovers),
        )
    log.info("/metrics sums the counters of the %d worker processes in %s", processes, directory)
    saved = {name: os.environ.get(name) for name in (MULTIPROC_DIR, WARNED)}
    os.environ[MULTIPROC_DIR] = directory
    os.environ[WARNED] = "1"

    def clean_up() -> None:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)

    return clean_up


def uvicorn_log_config(level: str, fmt: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus Parley's loggers (the root's handler, in
    ``fmt`` at ``level``): uvicorn applies it in every worker process it starts, which
    would otherwise drop the ingress's INFO lines — one per delivery."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["parley"] = {"format": fmt}
    config["handlers"]["parley"] = {
        "class": "logging.StreamHandler",
        "formatter": "parley",
        "stream": "ext://sys.stderr",
    }
    config["root"] = {"handlers": ["parley"], "level": level.upper()}
    return config
