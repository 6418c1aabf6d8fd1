"""The webhook endpoint: verify, split, dedup, log, enqueue — and answer fast.

``POST /webhook`` is a plain Starlette route (FastAPI's request machinery costs
more than the rest of the request); it answers 200 only after every envelope of
the delivery is in the replay log and on its partition queue (on RabbitMQ: confirmed
by the broker), and 503 when Redis or the broker fails, having marked nothing as seen
that is not on a queue, so Meta's retry goes through normally.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from parley.ingress.accept import Accept, Acceptor, Publish
from parley.ingress.metrics import IngressMetrics
from parley.wire.envelope import printable
from parley.workers.settings import Settings, weak_secret
from parley.workers.webhook import InvalidWebhook, split_delivery

log = logging.getLogger("parley.ingress")

INSECURE_WARNING = "!!! WEBHOOK SIGNATURES ARE NOT CHECKED: anyone can post to this ingress !!!"
NO_VERIFY_TOKEN_WARNING = (
    "WHATSAPP_VERIFY_TOKEN is not set: GET /webhook answers every verification handshake "
    "403, so Meta cannot subscribe this endpoint (set it to the verify token entered in "
    "Meta's webhook settings)"
)
#: Start-up warnings this process has logged: the CLI builds the app once to check the
#: settings before uvicorn builds the one it serves, and the operator should read each once
_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def startup_warnings(settings: Settings) -> list[str]:
    """What an operator serving this ingress to Meta must hear about (it still starts)."""
    if not settings.whatsapp_verify_token.get_secret_value():
        return [NO_VERIFY_TOKEN_WARNING]
    return []


#: The answer to a delivery refused for load (Meta retries it)
BUSY = "too many deliveries at once; retry"


def _answer(status: int, **body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


@dataclass
class Answer:
    """What ``POST /webhook`` answered one delivery, and what its one log line and its
    ``parley_deliveries_total`` sample say: every answer goes through ``receive``, which
    logs and counts it, so no path can answer silently or twice. ``facts`` are counts
    and ids — never the body or message text."""

    status: int
    outcome: str  # accepted | refused | unavailable
    reason: str = ""
    body: dict[str, Any] | None = None  # None: nobody is listening any more
    facts: dict[str, object] = field(default_factory=dict)
    level: int = logging.INFO

    def response(self) -> Response:
        if self.body is None:
            return Response(status_code=self.status)
        return _answer(self.status, **self.body)

    def log_line(self, ms: float) -> str:
        facts = "".join(f" {key}={value}" for key, value in self.facts.items())
        reason = f" reason={self.reason}" if self.reason else ""
        return f"delivery outcome={self.outcome} status={self.status}{reason}{facts} ms={ms:.2f}"


def _ids(envelopes: Iterable[Any], limit: int = 20) -> str:
    """The first ``limit`` event ids of a delivery, escaped for one log line."""
    ids = [printable(e.event_id) for e in envelopes]
    more = f",+{len(ids) - limit}" if len(ids) > limit else ""
    return ",".join(ids[:limit]) + more


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, (header or "").encode())


class BodyBudget:
    """Bytes of request bodies held at once by this process, all requests together: a
    flood of large unsigned uploads cannot buffer more than ``limit`` before the HMAC
    check rejects them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(
    settings: Settings,
    *,
    skip_signature: bool = False,
    acceptor: Accept | None = None,
    publish: Publish | None = None,
    collectors: Iterable[Collector] = (),
    warn: bool = False,
) -> FastAPI:
    """The ingress. ``skip_signature`` is for local development without an app secret
    (``parley ingress --insecure-skip-signature``); ``acceptor`` replaces Redis
    (``parley demo`` with no service); ``publish`` sends through Celery when the broker
    is not the pipeline DB; ``collectors`` add to ``/metrics`` (``parley.metrics``).
    ``warn``: log the warnings an operator serving it to Meta must hear (a missing
    verify token), once per process — ``parley ingress`` does, once for all its worker
    processes; the demo and the tests, which no handshake reaches, do not."""
    secret = settings.whatsapp_app_secret.get_secret_value().encode()
    if skip_signature and secret:
        raise RuntimeError(
            "WHATSAPP_APP_SECRET is set: webhooks are verified with it "
            "(--insecure-skip-signature is only for development without a secret)"
        )
    if not secret and not skip_signature:
        raise RuntimeError(
            "WHATSAPP_APP_SECRET is not set: the ingress will not accept unsigned webhooks "
            "(for local development only: parley ingress --insecure-skip-signature)"
        )
    if secret and (problem := weak_secret("WHATSAPP_APP_SECRET", secret.decode())):
        raise RuntimeError(problem)
    verify_token = settings.whatsapp_verify_token.get_secret_value().encode()
    if verify_token and (
        problem := weak_secret("WHATSAPP_VERIFY_TOKEN", verify_token.decode(), length=False)
    ):
        raise RuntimeError(problem)
    metrics_token = (
        settings.metrics_token.get_secret_value().encode() if settings.metrics_token else b""
    )
    if skip_signature:  # however the app is built: never silent
        warn_once(INSECURE_WARNING)
    if warn:
        for warning in startup_warnings(settings):
            warn_once(warning)

    metrics = IngressMetrics(collectors)
    reading = asyncio.Semaphore(settings.max_concurrent_deliveries)
    budget = BodyBudget(settings.max_buffered_bytes)

    def refuse(
        status: int, reason: str, error: str, level: int = logging.INFO, **facts: object
    ) -> Answer:
        return Answer(status, "refused", reason, {"error": error}, facts, level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if acceptor is not None:
            app.state.redis, app.state.acceptor = None, acceptor
            yield
            return
        client = Redis.from_url(settings.pipeline, socket_timeout=5, socket_connect_timeout=2)
        app.state.redis = client
        app.state.acceptor = Acceptor(client, settings, publish)
        yield
        await client.aclose()
        if callable(close := getattr(publish, "close", None)):  # its broker connections
            await asyncio.to_thread(close)

    async def verify(request: Request) -> Response:
        params = request.query_params
        given = params.get("hub.verify_token", "").encode()
        if (
            params.get("hub.mode") == "subscribe"
            and verify_token
            and hmac.compare_digest(verify_token, given)
            and "hub.challenge" in params
        ):
            return PlainTextResponse(params["hub.challenge"])
        return PlainTextResponse("forbidden", status_code=403)

    async def read_body(request: Request) -> bytes | Answer:
        """The body, within the size limit, the shared byte budget and the deadline."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return refuse(413, "too_large", f"body over {limit} bytes", bytes=int(declared))
        chunks: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout(settings.body_timeout):
                async for chunk in request.stream():
                    if held + len(chunk) > limit:
                        return refuse(
                            413, "too_large", f"body over {limit} bytes", bytes=held + len(chunk)
                        )
                    if not budget.take(len(chunk)):
                        return refuse(503, "busy", BUSY, logging.WARNING, bytes=held)
                    chunks.append(chunk)
                    held += len(chunk)
        except TimeoutError:
            return refuse(
                408,
                "slow_body",
                f"body not received within {settings.body_timeout}s",
                bytes=held,
            )
        except ClientDisconnect:  # nobody is listening
            return Answer(400, "refused", "disconnected", None, {"bytes": held})
        finally:
            budget.give_back(held)
        return b"".join(chunks)

    async def receive(request: Request) -> Response:
        """Every answer to ``POST /webhook`` leaves here: one log line, one count."""
        started = time.perf_counter()
        try:  # a burst waits for a slot; its bodies stay unread in the sockets meanwhile
            async with asyncio.timeout(settings.body_timeout):
                await reading.acquire()
        except TimeoutError:
            answer = refuse(503, "busy", BUSY, logging.WARNING)
        else:
            try:
                answer = await receive_one(request)
            finally:
                reading.release()
        metrics.deliveries.labels(answer.outcome, answer.reason).inc()
        log.log(answer.level, answer.log_line((time.perf_counter() - started) * 1000))
        return answer.response()

    async def receive_one(request: Request) -> Answer:
        raw = await read_body(request)
        if isinstance(raw, Answer):
            return raw
        size = len(raw)
        if not skip_signature and not signature_ok(
            secret, raw, request.headers.get("x-hub-signature-256")
        ):
            return refuse(401, "bad_signature", "invalid X-Hub-Signature-256", bytes=size)
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return refuse(400, "not_json", "body is not JSON", bytes=size)
        try:
            envelopes = split_delivery(
                payload, received_at=time.time(), max_events=settings.max_envelopes_per_delivery
            )
        except InvalidWebhook as exc:  # its text names the field, never a value
            why = f"not a WhatsApp webhook: {exc}"
            return refuse(400, "not_whatsapp", why, bytes=size, detail=repr(str(exc)))
        except Exception as exc:  # shapes split_delivery did not foresee: still the sender's fault
            why = "malformed WhatsApp webhook"
            return refuse(
                400, "malformed", why, logging.WARNING, bytes=size, exception=type(exc).__name__
            )
        count = len(envelopes)
        if settings.allowed_phone_ids and (
            strangers := {e.tenant_id for e in envelopes} - set(settings.allowed_phone_ids)
        ):
            return refuse(
                403,
                "phone_id_not_allowed",
                "phone number id not served here",
                bytes=size,
                envelopes=count,
                tenants=",".join(sorted(printable(t) for t in strangers)),
                ids=_ids(envelopes),
            )
        try:  # encoded once here, for the checks and for the replay log and queue
            encoded = [envelope.encode() for envelope in envelopes]
        except (ValueError, TypeError):  # nested deeper than pydantic or orjson will write
            return refuse(
                400, "malformed", "malformed WhatsApp webhook", bytes=size, envelopes=count
            )
        if any(len(one) > settings.max_envelope_bytes for one in encoded):
            return refuse(
                400,
                "too_large",
                f"one event over {settings.max_envelope_bytes} bytes",
                bytes=size,
                envelopes=count,
                ids=_ids(envelopes),
            )
        try:
            ids = await request.app.state.acceptor.accept(envelopes, encoded)
        except Exception as exc:
            return Answer(
                503,
                "unavailable",
                type(exc).__name__,
                {"error": "temporarily unavailable; retry"},
                {"bytes": size, "envelopes": count, "ids": _ids(envelopes)},
                logging.ERROR,
            )
        accepted = sum(1 for i in ids if i)
        metrics.envelopes.labels("new").inc(accepted)
        metrics.envelopes.labels("duplicate").inc(len(ids) - accepted)
        return Answer(
            200,
            "accepted",
            "",
            {"accepted": accepted, "duplicates": len(ids) - accepted},
            {
                "bytes": size,
                "envelopes": count,
                "new": accepted,
                "duplicates": len(ids) - accepted,
                "ids": _ids(envelopes),
            },
        )

    app = FastAPI(
        title="Parley ingress",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # nothing to document to the internet
    )
    app.router.routes.insert(0, Route("/webhook", receive, methods=["POST"]))
    app.router.routes.insert(0, Route("/webhook", verify, methods=["GET"]))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/metrics")
    async def metrics_page(request: Request) -> Response:
        if metrics_token:
            given = request.headers.get("authorization", "").removeprefix("Bearer ").encode()
            if not hmac.compare_digest(metrics_token, given):
                return PlainTextResponse("forbidden", status_code=403)
        elif not is_loopback(request.client.host if request.client else None) or any(
            name in request.headers for name in ("forwarded", "x-forwarded-for", "x-real-ip")
        ):  # a proxy on this host forwards the internet's requests from loopback
            return PlainTextResponse(
                "forbidden: set PARLEY_METRICS_TOKEN to scrape from elsewhere", status_code=403
            )
        # the pipeline collector reads Redis synchronously: off the event loop
        page = await asyncio.to_thread(generate_latest, metrics.scraped)
        return Response(page, media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            if app.state.redis is not None:
                await app.state.redis.ping()
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "error": type(exc).__name__}, 503)
        return JSONResponse({"status": "ready"})

    return app
