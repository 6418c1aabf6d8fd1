"""Worker and pipeline settings: the cache settings plus broker, pipeline and WhatsApp.

One ``Settings`` object is built when a process starts (by ``WappaBuilder().build()``
or the CLI) and handed to what needs it; nothing reads the environment at import.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from parley.cache.settings import CacheSettings, with_db

PIPELINE_DB = 3
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Settings(CacheSettings):
    # a bad value is named, never echoed: it may be a token
    model_config = SettingsConfigDict(**CacheSettings.model_config, hide_input_in_errors=True)

    broker_url: str | None = None
    pipeline_url: str | None = None
    #: Partition count; fixed for a deployment (changing it re-routes users).
    partitions: int = Field(default=16, gt=0, le=4096)
    #: RabbitMQ broker: the type the partition queues are declared with. ``classic``
    #: (one node), or ``quorum`` (replicated across a RabbitMQ cluster; Celery then
    #: sets the prefetch per consumer). Every process of a deployment must agree: a
    #: queue is declared once, and RabbitMQ refuses another type for it. Not used on Redis.
    amqp_queue_type: Literal["classic", "quorum"] = "classic"
    #: Seconds before the Redis broker redelivers an unacked message. Must exceed the
    #: longest handler run, or a slow handler's message would be handed out twice.
    visibility_timeout: int = Field(default=3600, gt=0)
    #: Ingress: the largest body accepted (Meta's largest payload is 3 MiB).
    max_body_bytes: int = Field(default=3 * 1024 * 1024, gt=0)
    #: Ingress: deliveries read at once; more are answered 503 at once (Meta retries).
    max_concurrent_deliveries: int = Field(default=64, gt=0)
    #: Ingress: bytes of request bodies held in memory at once, all requests together;
    #: a body that would go past it is answered 503. Bounds the ingress's memory.
    max_buffered_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    #: Ingress: seconds a client may take to send its whole body (408 after).
    body_timeout: float = Field(default=10.0, gt=0)
    #: Ingress: messages + statuses + error blocks in one delivery (400 beyond).
    max_envelopes_per_delivery: int = Field(default=1000, gt=0)
    #: Ingress: the largest single event, as JSON (400 beyond).
    max_envelope_bytes: int = Field(default=256 * 1024, gt=0)
    #: Ingress: a bearer token for /metrics; unset, /metrics answers loopback clients only.
    metrics_token: SecretStr | None = None
    #: Ingress: how long an accepted message/status id keeps a retry from being enqueued.
    dedup_ttl: int = Field(default=24 * 3600, gt=0)
    #: How long the replay log keeps accepted envelopes (e.g. 7d, 12h, or seconds).
    replay_retention: timedelta = Field(default=timedelta(days=7))
    #: And at most this many (None: no count cap).
    replay_max_entries: int | None = Field(default=None, gt=0)
    #: Seconds between the Redis broker's scans for unacked messages past the visibility
    #: timeout; None keeps kombu's default (a scan about every 100 s).
    redelivery_scan_interval: int | None = Field(default=None, gt=0)
    #: Seconds one handler call may take before it counts as failed (dead-lettered).
    handler_timeout: float = Field(default=300.0, gt=0)
    #: Handlers one worker node runs at once (``--concurrency``), each for a different
    #: user: handlers mostly await the network (Graph API, an LLM, a CRM), so a node
    #: overlaps many of them on one event loop. 64 × a 200 ms reply ≈ 300 webhooks/s.
    concurrency: int = Field(default=64, gt=0, le=1024)
    #: How long a done-marker keeps a redelivered webhook from running again.
    done_ttl: int = Field(default=2 * 24 * 3600, gt=0)
    #: Backoff of a failing call's retries (a cache operation, a Graph API request, the
    #: pipeline's own bookkeeping): base and cap, in seconds.
    retry_backoff: float = Field(default=0.2, gt=0)
    retry_backoff_max: float = Field(default=10.0, gt=0)
    #: How long one envelope's calls may keep failing transiently (an outage) before it
    #: is dead-lettered with reason ``transient`` and its user's lane moves on.
    transient_deadline: float = Field(default=180.0, gt=0)
    #: ``--partitions auto``: seconds between reconciler runs (one node at a time).
    reconcile_interval: float = Field(default=120.0, gt=0)
    #: Age a replay-log entry must reach before the reconciler may call it lost; must
    #: exceed the lease TTL plus the handler timeout. None: that sum plus a minute.
    reconcile_grace: float | None = Field(default=None, gt=0)
    #: Replay-log entries one reconciler run checks at most.
    reconcile_batch: int = Field(default=10_000, gt=0)
    #: ``--partitions auto``: seconds a partition lease (and a node's heartbeat) lasts
    #: unrenewed — how long a SIGKILLed node's partitions wait before moving. Renewed
    #: every third of it.
    lease_ttl: float = Field(default=6.0, ge=0.5)

    whatsapp_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("WHATSAPP_TOKEN")
    )
    whatsapp_phone_id: str = Field(default="", validation_alias=AliasChoices("WHATSAPP_PHONE_ID"))
    whatsapp_app_secret: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("WHATSAPP_APP_SECRET")
    )
    whatsapp_verify_token: SecretStr = Field(
        default=SecretStr(""), validation_alias=AliasChoices("WHATSAPP_VERIFY_TOKEN")
    )
    #: Phone number ids (tenants) this deployment answers for; empty: any. Deliveries
    #: for another number are refused (403).
    allowed_phone_ids: Annotated[frozenset[str], NoDecode] = frozenset()
    whatsapp_api_base: str = Field(
        default="https://graph.facebook.com", validation_alias=AliasChoices("WHATSAPP_API_BASE")
    )
    whatsapp_api_version: str = Field(
        default="v21.0", validation_alias=AliasChoices("WHATSAPP_API_VERSION")
    )

    @field_validator("allowed_phone_ids", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("replay_retention", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _timeouts_nest(self) -> Settings:
        if self.handler_timeout >= self.visibility_timeout:
            raise ValueError(
                f"PARLEY_HANDLER_TIMEOUT ({self.handler_timeout}s) must be below "
                f"PARLEY_VISIBILITY_TIMEOUT ({self.visibility_timeout}s)"
            )
        if self.reconcile_grace is not None and (
            self.reconcile_grace <= self.lease_ttl + self.handler_timeout
        ):
            raise ValueError(
                f"PARLEY_RECONCILE_GRACE ({self.reconcile_grace}s) must exceed "
                f"PARLEY_LEASE_TTL + PARLEY_HANDLER_TIMEOUT "
                f"({self.lease_ttl + self.handler_timeout}s)"
            )
        return self

    @property
    def grace(self) -> float:
        """How old an unaccounted replay-log entry must be before it counts as lost."""
        if self.reconcile_grace is not None:
            return self.reconcile_grace
        return self.lease_ttl + self.handler_timeout + 60.0

    @property
    def broker(self) -> str:
        return self.broker_url or with_db(self.redis_url, PIPELINE_DB)

    @property
    def pipeline(self) -> str:
        return self.pipeline_url or with_db(self.redis_url, PIPELINE_DB)


def parse_duration(text: str) -> timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` or ``"90"`` (seconds)."""
    text = text.strip()
    if text.isdigit():
        return timedelta(seconds=int(text))
    if text[-1:] in UNITS and text[:-1].isdigit():
        return timedelta(seconds=int(text[:-1]) * UNITS[text[-1]])
    raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d)")


#: What example files and tutorials put where a secret goes
PLACEHOLDER = re.compile(r"replace|change.?me|example|placeholder|your[-_ ]|xxx|secret$", re.I)
#: The shortest secret accepted where Parley checks one (Meta's app secrets are 32 chars)
MIN_SECRET_LENGTH = 16


def weak_secret(name: str, value: str, *, length: bool = True) -> str | None:
    """Why ``value`` must not be used as the secret ``name``, or None if it may (with
    ``length``, it must also be long enough). The message names the variable, never
    the value."""
    if PLACEHOLDER.search(value):
        return f"{name} is a placeholder (as in .env.example): set the real secret"
    if length and len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters: set the real secret"
    return None
