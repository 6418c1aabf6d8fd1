"""The ingress's ``/metrics`` after a known run, all real: HTTP, redis-server, a worker."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import orjson

from parley.asgi import create_ingress
from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer, delivery, text_message
from parley.wire.partition import partition_for
from tests.helpers import (
    PARTITIONS,
    Pipeline,
    make_settings,
    scrape,
    sign,
    users_in_two_partitions,
    value,
    wait_for,
)
from tests.http_server import ServedApp


def depths(metrics: dict) -> dict[int, float]:
    return {
        int(dict(labels)["partition"]): v
        for (name, labels), v in metrics.items()
        if name == "parley_partition_depth" and v
    }


def test_metrics_count_deliveries_depths_owners_and_handler_runs(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    user_a, user_b = users_in_two_partitions()
    body = orjson.dumps(
        delivery([text_message(user_a, "1"), text_message(user_b, "1"), text_message(user_a, "2")])
    )
    with (
        ServedApp(create_ingress(make_settings(redis_url))) as served,
        httpx.Client(base_url=served.url) as client,
    ):
        assert client.post("/webhook", content=body, headers=sign(body)).status_code == 200
        assert client.post("/webhook", content=body, headers=sign(body)).json()["duplicates"] == 3
        assert client.post("/webhook", content=body, headers=sign(body, "x")).status_code == 401
        assert client.post("/webhook", content=b"{", headers=sign(b"{")).status_code == 400

        metrics = scrape(client)
        assert value(metrics, "parley_pipeline_up") == 1
        assert value(metrics, "parley_broker_up") == 1  # the broker is the pipeline DB
        assert value(metrics, "parley_deliveries_total", outcome="accepted", reason="") == 2
        assert (
            value(metrics, "parley_deliveries_total", outcome="refused", reason="bad_signature")
            == 1
        )
        assert value(metrics, "parley_deliveries_total", outcome="refused", reason="not_json") == 1
        assert value(metrics, "parley_envelopes_total", outcome="new") == 3
        assert value(metrics, "parley_envelopes_total", outcome="duplicate") == 3
        partition_a = partition_for(PHONE_ID, user_a, PARTITIONS)
        partition_b = partition_for(PHONE_ID, user_b, PARTITIONS)
        assert depths(metrics) == {partition_a: 2, partition_b: 1}
        for partition in (partition_a, partition_b):  # the oldest waiting webhook's age
            assert 0 < value(metrics, "parley_partition_lag_seconds", partition=str(partition)) < 60
        assert value(metrics, "parley_partition_lag_seconds", partition=str(partition_a + 1)) == 0
        assert value(metrics, "parley_replay_log_entries") == 3
        assert value(metrics, "parley_dead_letters") == 0
        assert value(metrics, "parley_live_nodes") == 0
        assert value(metrics, "parley_partition_owner", partition="0", node="") == 0
        assert value(metrics, "parley_handler_seconds_count") == 0

        pipeline = Pipeline(redis_server, tmp_path, graph)
        try:
            pipeline.start_worker("tests.apps:recording", "auto", "metered")
            wait_for(lambda: pipeline.seqs(user_a) == [1, 2] and pipeline.seqs(user_b) == [1])
            node = f"metered@{socket.gethostname()}"
            metrics = scrape(client)
            assert depths(metrics) == {}
            assert value(metrics, "parley_partition_lag_seconds", partition=str(partition_a)) == 0
            assert value(metrics, "parley_handler_seconds_count") == 3
            assert value(metrics, "parley_handler_seconds_bucket", le="+Inf") == 3
            assert 0 < value(metrics, "parley_handler_seconds_sum") < 60
            assert value(metrics, "parley_live_nodes") == 1
            for k in range(PARTITIONS):
                assert value(metrics, "parley_partition_owner", partition=str(k), node=node) == 1
                assert value(metrics, "parley_partition_in_flight", partition=str(k)) == 0
        finally:
            pipeline.close()
