"""The ``parley`` command."""

from __future__ import annotations

import asyncio

import click


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
