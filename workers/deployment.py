"""What the ingress and the workers of one deployment must agree on, checked at start.

They are configured separately — the ingress from its environment, a worker from its
app's code and environment — and a disagreement loses nothing loudly: webhooks wait on
a queue nobody consumes, or users are routed to partitions by a different count. So
each process records itself in the pipeline DB's ``parley:deployment`` hash when it
starts and compares:

- the partition count: a mismatch refuses to start (it would re-route users);
- a Redis broker that is not the pipeline's DB carries the same record: a broker that
  belongs to another pipeline refuses to start (its messages would be handled against
  the wrong done-markers, leases and replay log);
- a pipeline no counterpart has ever started against is a WARNING, not a refusal
  (starting workers before the ingress is normal), naming the URL to compare.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

import redis

from parley.cache.redis import redact
from parley.wire.keys import DEPLOYMENT
from parley.workers.connections import fail_fast_client, is_redis
from parley.workers.settings import Settings

log = logging.getLogger("parley.deployment")

Role = Literal["ingress", "worker"]
COUNTERPART: dict[Role, Role] = {"ingress": "worker", "worker": "ingress"}


class DeploymentMismatch(Exception):
    """This process and the deployment recorded in its Redis disagree: the message says
    on what, and which variable to fix."""


def _record(client: redis.Redis, partitions: int, role: Role) -> dict[str, str]:
    """Record ``role`` as started; the deployment's fields as they now are."""
    with client.pipeline(transaction=True) as pipe:
        pipe.hsetnx(DEPLOYMENT, "id", uuid.uuid4().hex)
        pipe.hsetnx(DEPLOYMENT, "partitions", partitions)
        pipe.hset(DEPLOYMENT, f"{role}_started_at", f"{time.time():.0f}")
        pipe.hgetall(DEPLOYMENT)
        fields = pipe.execute()[-1]
    return {k.decode(): v.decode() for k, v in fields.items()}


def check_deployment(settings: Settings, role: Role) -> None:
    """Raise ``DeploymentMismatch`` if this process would not work together with the
    others on its pipeline; warn if it has no counterpart there yet."""
    pipeline = redact(settings.pipeline)
    with fail_fast_client(settings.pipeline) as client:
        recorded = _record(client, settings.partitions, role)
    if int(recorded["partitions"]) != settings.partitions:
        raise DeploymentMismatch(
            f"PARLEY_PARTITIONS is {settings.partitions} here, but the deployment on the "
            f"pipeline Redis at {pipeline} uses {recorded['partitions']}: give the ingress "
            f"and every worker the same PARLEY_PARTITIONS (to change it for good, stop "
            f"everything and delete the key {DEPLOYMENT} there)"
        )
    if is_redis(settings.broker) and settings.broker != settings.pipeline:
        with fail_fast_client(settings.broker) as client:
            client.hsetnx(DEPLOYMENT, "id", recorded["id"])
            broker_id = client.hget(DEPLOYMENT, "id")
        if broker_id is not None and broker_id.decode() != recorded["id"]:
            raise DeploymentMismatch(
                f"the broker Redis at {redact(settings.broker)} belongs to a deployment "
                f"whose pipeline is not {pipeline}: give the ingress and every worker the "
                "same PARLEY_BROKER_URL and PARLEY_PIPELINE_URL (or PARLEY_REDIS_URL)"
            )
    other = COUNTERPART[role]
    if f"{other}_started_at" not in recorded:
        log.warning(
            "no %s has started against the pipeline Redis at %s yet: the %s must use the "
            "same Redis (PARLEY_REDIS_URL, or PARLEY_PIPELINE_URL and PARLEY_BROKER_URL; "
            "a worker's app moves them only with .with_redis_cache(url, pipeline=True))",
            other,
            pipeline,
            other,
        )
