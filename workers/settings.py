"""Worker and pipeline settings: the cache settings plus broker, pipeline and WhatsApp.

One ``Settings`` object is built when a process starts (by ``WappaBuilder().build()``
or the CLI) and handed to what needs it; nothing reads the environment at import.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import AliasChoices, Field, field_validator, model_validator

from parley.cache.settings import CacheSettings, with_db

PIPELINE_DB = 3
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Settings(CacheSettings):
    broker_url: str | None = None
    pipeline_url: str | None = None
    #: Partition count; fixed for a deployment (changing it re-routes users).
    partitions: int = Field(default=16, gt=0, le=4096)
    #: Seconds before the Redis broker redelivers an unacked message. Must exceed the
    #: longest handler run, or a slow handler's message would be handed out twice.
    visibility_timeout: int = Field(default=3600, gt=0)
    #: Ingress: the largest body accepted (Meta's largest payload is 3 MiB).
    max_body_bytes: int = Field(default=3 * 1024 * 1024, gt=0)
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
    #: How long a done-marker keeps a redelivered webhook from running again.
    done_ttl: int = Field(default=2 * 24 * 3600, gt=0)
    #: Backoff of the in-place retry on transient errors: base and cap, in seconds.
    retry_backoff: float = Field(default=0.2, gt=0)
    retry_backoff_max: float = Field(default=10.0, gt=0)
    #: ``--partitions auto``: seconds a partition lease (and a node's heartbeat) lasts
    #: unrenewed — how long a SIGKILLed node's partitions wait before moving. Renewed
    #: every third of it.
    lease_ttl: float = Field(default=6.0, ge=0.5)

    whatsapp_token: str = Field(default="", validation_alias=AliasChoices("WHATSAPP_TOKEN"))
    whatsapp_phone_id: str = Field(default="", validation_alias=AliasChoices("WHATSAPP_PHONE_ID"))
    whatsapp_app_secret: str = Field(
        default="", validation_alias=AliasChoices("WHATSAPP_APP_SECRET")
    )
    whatsapp_verify_token: str = Field(
        default="", validation_alias=AliasChoices("WHATSAPP_VERIFY_TOKEN")
    )
    whatsapp_api_base: str = Field(
        default="https://graph.facebook.com", validation_alias=AliasChoices("WHATSAPP_API_BASE")
    )
    whatsapp_api_version: str = Field(
        default="v21.0", validation_alias=AliasChoices("WHATSAPP_API_VERSION")
    )

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
        return self

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
