"""Prometheus metrics for what only Parley knows, served on the ingress's ``/metrics``.

Flower shows workers and tasks but no queue lengths, and hides a queue nobody
consumes — exactly the partition whose node died. So at scrape time this reads the
pipeline DB: each partition's depth, lease holder and in-flight envelope, the live
nodes, dead letters, the replay log, and the handler-latency histogram the workers
keep there (``finish.lua`` adds each run to it, so every node's runs are counted
without scraping each node). The ingress process adds its own delivery counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from workers.leases import NODES, lease_key
from workers.messages import waiting_since
from workers.partition import queue_name
from workers.pipeline import DEAD_LETTERS, LATENCY, LATENCY_BUCKETS, REPLAY_LOG, inflight_key
from workers.settings import Settings


class PipelineCollector(Collector):
    def __init__(self, client: redis.Redis, partitions: int) -> None:
        self.client = client
        self.partitions = partitions

    def collect(self) -> Iterator[Metric]:
        pipe = self.client.pipeline(transaction=False)
        for k in range(self.partitions):
            pipe.llen(queue_name(k))
            pipe.get(lease_key(k))
            pipe.exists(inflight_key(k))
            pipe.lindex(queue_name(k), -1)  # the oldest waiting message
        pipe.zcard(NODES)
        pipe.xlen(DEAD_LETTERS)
        pipe.xlen(REPLAY_LOG)
        pipe.hgetall(LATENCY)
        *per_partition, nodes, dead, logged, latency = pipe.execute()

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
            "1 while a partition's envelope runs",
            labels=["partition"],
        )
        lag = GaugeMetricFamily(
            "parley_partition_lag_seconds",
            "Age of the oldest webhook waiting on a partition queue (0: none waiting)",
            labels=["partition"],
        )
        now = time.time()
        for k in range(self.partitions):
            queued, holder, running, oldest = per_partition[4 * k : 4 * k + 4]
            since = waiting_since(oldest)
            lag.add_metric([str(k)], max(0.0, now - since) if since is not None else 0.0)
            depth.add_metric([str(k)], queued)
            owner.add_metric([str(k), holder.decode() if holder else ""], 1 if holder else 0)
            in_flight.add_metric([str(k)], running)
        yield depth
        yield owner
        yield in_flight
        yield lag
        yield GaugeMetricFamily("parley_live_nodes", "Worker nodes with a live heartbeat", nodes)
        yield GaugeMetricFamily("parley_dead_letters", "Envelopes on the dead-letter stream", dead)
        yield GaugeMetricFamily("parley_replay_log_entries", "Envelopes in the replay log", logged)
        yield handler_histogram({k.decode(): v.decode() for k, v in latency.items()})


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


class IngressMetrics:
    """One registry per ingress app: its delivery counters and the pipeline collector."""

    def __init__(self, settings: Settings) -> None:
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
        self.client = redis.Redis.from_url(settings.pipeline, socket_timeout=5)
        self.registry.register(PipelineCollector(self.client, settings.partitions))

    def refused(self, reason: str) -> None:
        self.deliveries.labels("refused", reason).inc()
