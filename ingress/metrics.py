"""The ingress's own Prometheus metrics: what it answered to each delivery.

The pipeline's state (depths, owners, lag, the handler histogram) is read by a
collector from the operations layer (``parley.metrics``), registered on the same
registry by whoever composes the ingress (``parley.asgi``).

With several ingress processes (``parley ingress --workers N``) each one counts only
the deliveries it answered, and a scrape reaches one of them at random: the counters
would jump between processes. So when ``PROMETHEUS_MULTIPROC_DIR`` is set (the CLI sets
it before uvicorn starts its workers) prometheus-client keeps each process's counters in
a file there, and a scrape sums every process's files with its ``MultiProcessCollector``.
The collectors given (the pipeline's gauges, read from Redis at scrape time) are added
to that once, not per process: they are the same for every process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: Where prometheus-client keeps the counters of each process, when there are several
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class MultiprocessMisconfigured(RuntimeError):
    """``PROMETHEUS_MULTIPROC_DIR`` cannot be used as set; the text says why."""


def multiprocess_dir() -> str | None:
    """The directory the counters of all ingress processes are summed from, if any."""
    return os.environ.get(MULTIPROC_DIR) or None


class IngressMetrics:
    """One registry per ingress app: its delivery counters, plus any collectors given.
    ``scraped`` is what ``/metrics`` serves: that registry, or with several processes
    the sum of every process's counters plus the collectors."""

    def __init__(self, collectors: Iterable[Collector] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.deliveries = Counter(
            "parley_deliveries",
            "Webhook deliveries answered, by outcome (accepted, refused, unavailable) and reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.envelopes = Counter(
            "parley_envelopes",
            "Envelopes of accepted deliveries: new (enqueued) or duplicate (skipped)",
            ["outcome"],
            registry=self.registry,
        )
        directory = multiprocess_dir()
        if directory is None:
            self.scraped = self.registry
        else:
            self.scraped = summed_registry(directory)
        for collector in collectors:
            self.scraped.register(collector)


def summed_registry(directory: str) -> CollectorRegistry:
    """A registry of the counters of every process writing to ``directory``."""
    if values.ValueClass is values.MutexValue:
        # prometheus-client picks where counters live when it is first imported: this
        # process's would stay in memory, and the scrape would never see them
        raise MultiprocessMisconfigured(
            f"{MULTIPROC_DIR} was set after prometheus_client was imported: set it "
            "before the ingress process starts"
        )
    if not os.path.isdir(directory):
        raise MultiprocessMisconfigured(f"{MULTIPROC_DIR}={directory} is not a directory")
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry
