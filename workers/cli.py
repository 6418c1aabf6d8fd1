"""The ``parley`` command."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@click.group()
def main() -> None:
    """Parley: conversational WhatsApp apps on partitioned, ordered Celery workers."""


@main.command()
@click.option(
    "--redis", "redis_url", default=None, help="Run against this Redis instead of memory."
)
def demo(redis_url: str | None) -> None:
    """Play a pizza-ordering conversation for three users and print it."""
    from workers.demo import run_demo

    raise SystemExit(asyncio.run(run_demo(redis_url)))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "processes", default=1, show_default=True, type=int)
@click.option(
    "--insecure-skip-signature",
    is_flag=True,
    help="Accept unsigned webhooks. Local development only; logged loudly.",
)
@click.option("--log-level", default="info", show_default=True)
def ingress(
    host: str, port: int, processes: int, insecure_skip_signature: bool, log_level: str
) -> None:
    """The webhook endpoint (uvicorn serving ingress.app:app)."""
    import uvicorn

    from ingress.app import INSECURE_ENV, create_app

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    if insecure_skip_signature:
        os.environ[INSECURE_ENV] = "1"
    try:
        create_app(skip_signature=insecure_skip_signature)  # fail before binding, not per worker
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    uvicorn.run(
        "ingress.app:app",
        host=host,
        port=port,
        workers=processes,
        log_level=log_level,
        access_log=False,
    )


@main.command()
@click.option("--app", "app_path", required=True, help="The app: MODULE:ATTR (a ParleyApp).")
@click.option(
    "--partitions",
    default="all",
    show_default=True,
    help="Partitions to consume, e.g. 0-7,12 (or all).",
)
@click.option("--node", default=None, help="Node name (default parley-PID@HOST).")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(app_path: str, partitions: str, node: str | None, loglevel: str) -> None:
    """A worker node: consumes its partition queues one message at a time, in order."""
    from workers.builder import load_app
    from workers.partition import parse_partitions, queue_name
    from workers.settings import set_settings
    from workers.tasks import Runtime, celery_app, configure_celery, set_runtime

    logging.basicConfig(
        level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = load_app(app_path)
    settings = app.settings
    set_settings(settings)
    configure_celery(settings)
    if partitions == "auto":
        raise click.UsageError(
            "--partitions auto (automatic ownership) is not built yet; give ranges"
        )
    spec = f"0-{settings.partitions - 1}" if partitions == "all" else partitions
    try:
        owned = parse_partitions(spec, settings.partitions)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--partitions") from None
    name = node or f"parley-{os.getpid()}"
    runtime = Runtime(app, node=f"{name}@{socket.gethostname()}")
    set_runtime(runtime)
    recovered = runtime.run(runtime.recover(owned))  # before consuming anything newer
    if recovered:
        logging.getLogger("parley.worker").warning("finished %d in-flight envelope(s)", recovered)
    try:
        celery_app.worker_main(
            [
                "worker",
                "--pool",
                "solo",
                "--concurrency",
                "1",
                "--queues",
                ",".join(queue_name(p) for p in owned),
                "--hostname",
                f"{name}@%h",
                "--loglevel",
                loglevel,
                "--without-mingle",
                "--without-gossip",
            ]
        )
    finally:
        runtime.close()
