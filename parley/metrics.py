"""Prometheus metrics of the pipeline's state, served on the ingress's ``/metrics``.

Flower shows workers and tasks but no queue lengths, and hides a queue nobody
consumes — exactly the partition whose node died. So at scrape time this reads the
pipeline DB: each partition's lease holder and in-flight envelope, the live nodes, dead
letters, the replay log, and the handler-latency histogram the workers keep there
(``finish.lua`` adds each run to it, so every node's runs are counted without scraping
each node); and each partition's depth from the broker (``parley.depths``: a Redis list,
or a RabbitMQ queue). The ingress adds its own delivery counters
(``parley.ingress.metrics``).

On RabbitMQ a queue's oldest message cannot be read without taking it, so
``parley_partition_lag_seconds`` is left out there (absent, not 0: alert on depth).

A scrape is needed most while Redis is down, so it never fails for that: it answers
with what it could read — the ingress's own counters — plus ``parley_pipeline_up 0``,
logs one WARNING, and is bounded in time (a fail-fast client: short socket timeouts,
no retries) so a hung Redis cannot hang the scrape. A broker that does not answer (when
it is not the pipeline DB) likewise gives ``parley_broker_up 0``, one WARNING, and no
depth or lag families; the rest is exported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from parley.cache.redis import redact
from parley.depths import open_depths
from parley.status import PipelineState, read_state
from parley.workers.connections import PROBE_TIMEOUT, fail_fast_client
from parley.workers.pipeline import LATENCY_BUCKETS

log = logging.getLogger("parley.metrics")


class PipelineCollector(Collector):
    def __init__(
        self,
        pipeline_url: str,
        partitions: int,
        timeout: float = PROBE_TIMEOUT,
        *,
        broker_url: str | None = None,
    ) -> None:
        self.pipeline_url = pipeline_url
        self.partitions = partitions
        self.timeout = timeout
        #: where the partition queues are; None: the pipeline DB itself
        self.broker_url = broker_url or pipeline_url

    def collect(self) -> Iterator[Metric]:
        state = self.read()
        yield GaugeMetricFamily(
            "parley_pipeline_up",
            "1 when this scrape read the pipeline DB; 0 when it could not (the pipeline "
            "metrics are missing then)",
            0 if state is None else 1,
        )
        if state is not None:
            yield GaugeMetricFamily(
                "parley_broker_up",
                "1 when this scrape read the queue depths from the broker; 0 when it could "
                "not (the depth and lag metrics are missing then)",
                0 if state.broker_error else 1,
            )
            yield from pipeline_families(state)

    def read(self) -> PipelineState | None:
        """The pipeline's state, or None (and one WARNING) when Redis cannot give it."""
        try:
            # a connection per scrape (one every few seconds): nothing to close at shutdown
            with (
                fail_fast_client(self.pipeline_url, self.timeout) as client,
                open_depths(
                    self.broker_url,
                    pipeline_url=self.pipeline_url,
                    pipeline=client,
                    timeout=self.timeout,
                ) as depths,
            ):
                state = read_state(client, self.partitions, depths)
        except redis.RedisError as exc:
            log.warning(
                "/metrics: pipeline Redis at %s unreadable (%s: %s); parley_pipeline_up 0",
                redact(self.pipeline_url),
                type(exc).__name__,
                exc,
            )
            return None
        if state.broker_error:
            log.warning(
                "/metrics: queue depths unreadable (%s); parley_broker_up 0", state.broker_error
            )
        return state


def pipeline_families(state: PipelineState) -> Iterator[Metric]:
    """The metric families of one reading of the pipeline DB."""
    depth = GaugeMetricFamily(
        "parley_partition_depth", "Messages waiting on a partition queue", labels=["partition"]
    )
    owner = GaugeMetricFamily(
        "parley_partition_owner",
        '1 for the node holding a partition\'s lease; 0 with node="" when nobody does',
        labels=["partition", "node"],
    )
    in_flight = GaugeMetricFamily(
        "parley_partition_in_flight",
        "Envelopes of a partition started and not yet finished (one per busy lane)",
        labels=["partition"],
    )
    lag = GaugeMetricFamily(
        "parley_partition_lag_seconds",
        "Age of the oldest webhook waiting on a partition queue (0: none waiting; "
        "absent where the broker cannot tell: RabbitMQ)",
        labels=["partition"],
    )
    for row in state.partitions:
        k = str(row.partition)
        if row.depth is not None:
            depth.add_metric([k], row.depth)
            if state.lag_known:
                lag.add_metric([k], row.lag or 0.0)
        owner.add_metric([k, row.owner or ""], 1 if row.owner else 0)
        in_flight.add_metric([k], sum(row.in_flight.values()))
    if state.broker_error is None:
        yield depth
        if state.lag_known:
            yield lag
    yield owner
    yield in_flight
    yield GaugeMetricFamily(
        "parley_live_nodes", "Worker nodes with a live heartbeat", len(state.nodes)
    )
    yield GaugeMetricFamily(
        "parley_dead_letters", "Envelopes on the dead-letter stream", state.dead_letters
    )
    yield GaugeMetricFamily(
        "parley_replay_log_entries", "Envelopes in the replay log", state.replay_log
    )
    yield GaugeMetricFamily(
        "parley_timers_pending", "Scheduled actions not yet fired", state.timers
    )
    yield GaugeMetricFamily(
        "parley_timer_overdue_seconds",
        "How long ago the oldest unfired timer fell due (0: none overdue): alert on it",
        max(0.0, -state.next_timer) if state.next_timer is not None else 0.0,
    )
    yield handler_histogram(state.latency)
    yield CounterMetricFamily(  # exposed as parley_recovered_total
        "parley_recovered",
        "Accepted webhooks the reconciler found lost (in no queue, not in flight, not "
        "done) and re-enqueued",
        state.recovered,
    )


def handler_histogram(fields: dict[str, str]) -> HistogramMetricFamily:
    """The workers store one count per bucket; Prometheus wants them cumulative."""
    buckets, running = [], 0
    for bound in (*LATENCY_BUCKETS, "+Inf"):
        running += int(fields.get(f"le:{bound}", 0))
        buckets.append((str(bound), running))
    return HistogramMetricFamily(
        "parley_handler_seconds",
        "Handler run time of finished envelopes, all nodes",
        buckets=buckets,
        sum_value=float(fields.get("sum", 0)),
    )
