"""Prometheus metrics of the pipeline's state, served on the ingress's ``/metrics``.

Flower shows workers and tasks but no queue lengths, and hides a queue nobody
consumes — exactly the partition whose node died. So at scrape time this reads the
pipeline DB: each partition's depth, lease holder and in-flight envelope, the live
nodes, dead letters, the replay log, and the handler-latency histogram the workers
keep there (``finish.lua`` adds each run to it, so every node's runs are counted
without scraping each node). The ingress adds its own delivery counters
(``parley.ingress.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from parley.status import read_state
from parley.workers.pipeline import LATENCY_BUCKETS


class PipelineCollector(Collector):
    def __init__(self, pipeline_url: str, partitions: int) -> None:
        self.pipeline_url = pipeline_url
        self.partitions = partitions

    def collect(self) -> Iterator[Metric]:
        # a connection per scrape (one every few seconds): nothing to close at shutdown
        with redis.Redis.from_url(self.pipeline_url, socket_timeout=5) as client:
            state = read_state(client, self.partitions)
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
            "Age of the oldest webhook waiting on a partition queue (0: none waiting)",
            labels=["partition"],
        )
        for row in state.partitions:
            k = str(row.partition)
            depth.add_metric([k], row.depth)
            owner.add_metric([k, row.owner or ""], 1 if row.owner else 0)
            in_flight.add_metric([k], sum(row.in_flight.values()))
            lag.add_metric([k], row.lag or 0.0)
        yield depth
        yield owner
        yield in_flight
        yield lag
        yield GaugeMetricFamily(
            "parley_live_nodes", "Worker nodes with a live heartbeat", len(state.nodes)
        )
        yield GaugeMetricFamily(
            "parley_dead_letters", "Envelopes on the dead-letter stream", state.dead_letters
        )
        yield GaugeMetricFamily(
            "parley_replay_log_entries", "Envelopes in the replay log", state.replay_log
        )
        yield handler_histogram(state.latency)


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
