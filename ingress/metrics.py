"""The ingress's own Prometheus metrics: what it answered to each delivery.

The pipeline's state (depths, owners, lag, the handler histogram) is read by a
collector from the operations layer (``parley.metrics``), registered on the same
registry by whoever composes the ingress (``parley.asgi``).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import Collector


class IngressMetrics:
    """One registry per ingress app: its delivery counters, plus any collectors given."""

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
        for collector in collectors:
            self.registry.register(collector)

    def refused(self, reason: str) -> None:
        self.deliveries.labels("refused", reason).inc()
