"""Reaching Redis from a process that is starting, or that probes it on a schedule.

A worker started before its Redis (a host booting, ``docker compose up`` starting
everything at once, Redis restarting) would otherwise die at its first command with a
traceback, and its supervisor would restart it in a loop. Celery waits for its broker
instead (``broker_connection_retry_on_startup``), and so does arq: so ``parley worker``
PINGs the pipeline Redis, and the broker when that is another Redis, until they answer,
before anything touches them. The backoff is capped and exponential
(``PARLEY_RETRY_BACKOFF``, ``PARLEY_RETRY_BACKOFF_MAX``: the same policy as any other
failing call), with one log line per attempt, and the wait has no end: an outage is
waited out, never turned into an exit. Only a refusal that waiting cannot fix (a wrong
password, a user without the right) ends the process, in one line.

SIGTERM or Ctrl-C while waiting ends the process at once (exit 0 and 1), without a
traceback: nothing has started yet, so there is nothing to hand over.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry

from parley.cache.redis import redact
from parley.cache.settings import REDIS_SCHEMES
from parley.workers.settings import Settings

log = logging.getLogger("parley.worker")

#: Seconds a probe may take to connect, and then to get its reply.
PROBE_TIMEOUT = 2.0


class RedisRefused(Exception):
    """Redis answered, and refused: waiting will not help (credentials, ACL)."""


class _Stopping(BaseException):
    """SIGTERM during the wait. A ``BaseException``, so that no ``except Exception`` on
    the way (redis-py's connection code) swallows it."""


def is_redis(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def fail_fast_client(url: str, timeout: float = PROBE_TIMEOUT) -> redis.Redis:
    """A client whose every command fails within about ``timeout`` seconds when Redis is
    down, unknown or hung, and never retries by itself: for callers that do their own
    waiting (the start-up PING) or must answer in bounded time (a ``/metrics`` scrape).
    Clients that live longer keep redis-py's reconnecting defaults."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def worker_targets(settings: Settings) -> dict[str, str]:
    """The Redis servers a worker touches before it consumes, by what they are to it."""
    targets = {"pipeline Redis": settings.pipeline}
    if is_redis(settings.broker) and settings.broker != settings.pipeline:
        targets["broker Redis"] = settings.broker
    return targets


def _ping(name: str, url: str) -> redis.ConnectionError | redis.TimeoutError | None:
    """None if ``url`` answers a PING, else why not (the errors an outage gives)."""
    try:
        with fail_fast_client(url) as client:
            client.ping()
    except (AuthenticationError, AuthorizationError) as exc:
        raise RedisRefused(f"{name} at {redact(url)} refused the connection: {exc}") from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # incl. LOADING, DNS
        return exc
    except redis.RedisError as exc:
        raise RedisRefused(f"{name} at {redact(url)} answered PING with: {exc}") from exc
    return None


def wait_for_redis(targets: Mapping[str, str], *, backoff: float, backoff_max: float) -> None:
    """Return once each of ``targets`` (what it is → URL) has answered a PING, retrying
    each with capped exponential backoff and a WARNING per failed attempt, forever.

    Raises ``RedisRefused`` when one answers with a refusal instead."""
    delays = ExponentialBackoff(cap=backoff_max, base=backoff)
    for name, url in targets.items():
        attempt = 0
        while (error := _ping(name, url)) is not None:
            attempt += 1
            delay = delays.compute(attempt - 1)
            log.warning(
                "%s at %s unreachable (%s); retrying in %.1fs (attempt %d)",
                name,
                redact(url),
                error,
                delay,
                attempt,
            )
            time.sleep(delay)
        if attempt:
            log.info("%s at %s reachable after %d failed attempt(s)", name, redact(url), attempt)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``_Stopping`` inside the block (then the previous handler is back:
    Celery installs its own later). Signal handlers belong to the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopping

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_at_start(settings: Settings) -> None:
    """``wait_for_redis`` for a worker about to start, on its Redis servers with its
    backoff settings. The process ends, in one line and without a traceback, on SIGTERM
    (exit 0: stopped as asked), Ctrl-C (exit 1) or a refusal (exit 1, the reason)."""
    try:
        with _sigterm_raises():
            wait_for_redis(
                worker_targets(settings),
                backoff=settings.retry_backoff,
                backoff_max=settings.retry_backoff_max,
            )
    except _Stopping:
        log.warning("stopped (SIGTERM) while waiting for Redis")
        raise SystemExit(0) from None
    except KeyboardInterrupt:
        log.warning("interrupted while waiting for Redis")
        raise SystemExit(1) from None
    except RedisRefused as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
