"""The webhook endpoint: verify, split, dedup, log, enqueue — and answer fast.

``POST /webhook`` is a plain Starlette route (FastAPI's request machinery costs
more than the rest of the request); it answers 200 only after every envelope of
the delivery is in the replay log and on its partition queue, and 503 when Redis
fails, having marked nothing as seen, so Meta's retry goes through normally.
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


def _answer(status: int, **body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


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
) -> FastAPI:
    """The ingress. ``skip_signature`` is for local development without an app secret
    (``parley ingress --insecure-skip-signature``); ``acceptor`` replaces Redis
    (``parley demo`` with no service); ``publish`` sends through Celery when the broker
    is not the pipeline DB; ``collectors`` add to ``/metrics`` (``parley.metrics``)."""
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
    if skip_signature:
        log.warning("!!! WEBHOOK SIGNATURES ARE NOT CHECKED: anyone can post to this ingress !!!")

    metrics = IngressMetrics(collectors)
    reading = asyncio.Semaphore(settings.max_concurrent_deliveries)
    budget = BodyBudget(settings.max_buffered_bytes)

    def refuse(status: int, reason: str, error: str) -> Response:
        metrics.refused(reason)
        return _answer(status, error=error)

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

    async def read_body(request: Request) -> bytes | Response:
        """The body, within the size limit, the shared byte budget and the deadline."""
        limit = settings.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return refuse(413, "too_large", f"body over {limit} bytes")
        chunks: list[bytes] = []
        held = 0
        try:
            async with asyncio.timeout(settings.body_timeout):
                async for chunk in request.stream():
                    if held + len(chunk) > limit:
                        return refuse(413, "too_large", f"body over {limit} bytes")
                    if not budget.take(len(chunk)):
                        return refuse(503, "busy", "too many deliveries at once; retry")
                    chunks.append(chunk)
                    held += len(chunk)
        except TimeoutError:
            return refuse(408, "slow_body", f"body not received within {settings.body_timeout}s")
        except ClientDisconnect:
            metrics.refused("disconnected")
            return Response(status_code=400)  # nobody is listening
        finally:
            budget.give_back(held)
        return b"".join(chunks)

    async def receive(request: Request) -> Response:
        try:  # a burst waits for a slot; its bodies stay unread in the sockets meanwhile
            async with asyncio.timeout(settings.body_timeout):
                await reading.acquire()
        except TimeoutError:
            return refuse(503, "busy", "too many deliveries at once; retry")
        try:
            return await receive_one(request)
        finally:
            reading.release()

    async def receive_one(request: Request) -> Response:
        started = time.perf_counter()
        raw = await read_body(request)
        if isinstance(raw, Response):
            return raw
        if not skip_signature and not signature_ok(
            secret, raw, request.headers.get("x-hub-signature-256")
        ):
            log.info("delivery refused: bad or missing signature (%d bytes)", len(raw))
            return refuse(401, "bad_signature", "invalid X-Hub-Signature-256")
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return refuse(400, "not_json", "body is not JSON")
        try:
            envelopes = split_delivery(
                payload, received_at=time.time(), max_events=settings.max_envelopes_per_delivery
            )
        except InvalidWebhook as exc:
            return refuse(400, "not_whatsapp", f"not a WhatsApp webhook: {exc}")
        except Exception as exc:  # shapes split_delivery did not foresee: still the sender's fault
            log.warning("delivery refused: malformed (%s)", type(exc).__name__)
            return refuse(400, "malformed", "malformed WhatsApp webhook")
        if settings.allowed_phone_ids and any(
            e.tenant_id not in settings.allowed_phone_ids for e in envelopes
        ):
            return refuse(403, "phone_id_not_allowed", "phone number id not served here")
        try:  # encoded once here, for the checks and for the replay log and queue
            encoded = [envelope.encode() for envelope in envelopes]
        except (ValueError, TypeError):  # nested deeper than pydantic or orjson will write
            return refuse(400, "malformed", "malformed WhatsApp webhook")
        if any(len(raw) > settings.max_envelope_bytes for raw in encoded):
            return refuse(400, "too_large", f"one event over {settings.max_envelope_bytes} bytes")
        try:
            ids = await request.app.state.acceptor.accept(envelopes, encoded)
        except Exception as exc:
            log.error(
                "delivery outcome=unavailable envelopes=%d error=%s",
                len(envelopes),
                type(exc).__name__,
            )
            metrics.deliveries.labels("unavailable", type(exc).__name__).inc()
            return _answer(503, error="temporarily unavailable; retry")
        accepted = sum(1 for i in ids if i)
        metrics.deliveries.labels("accepted", "").inc()
        metrics.envelopes.labels("new").inc(accepted)
        metrics.envelopes.labels("duplicate").inc(len(ids) - accepted)
        log.info(
            "delivery outcome=accepted envelopes=%d new=%d duplicates=%d ids=%s ms=%.2f",
            len(envelopes),
            accepted,
            len(ids) - accepted,
            ",".join(printable(e.event_id) for e in envelopes[:20]),
            (time.perf_counter() - started) * 1000,
        )
        return _answer(200, accepted=accepted, duplicates=len(ids) - accepted)

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
        page = await asyncio.to_thread(generate_latest, metrics.registry)
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
