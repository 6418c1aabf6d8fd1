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
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from parley.ingress.accept import Accept, Acceptor, Publish
from parley.ingress.metrics import IngressMetrics
from parley.workers.settings import Settings
from parley.workers.webhook import InvalidWebhook, split_delivery

log = logging.getLogger("parley.ingress")


def _answer(status: int, **body: Any) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, (header or "").encode())


def create_app(
    settings: Settings,
    *,
    skip_signature: bool = False,
    acceptor: Accept | None = None,
    publish: Publish | None = None,
    collectors: Iterable[Collector] = (),
) -> FastAPI:
    """The ingress. ``acceptor`` replaces Redis (``parley demo`` with no service);
    ``publish`` sends through Celery when the broker is not the pipeline DB;
    ``collectors`` add to ``/metrics`` (the pipeline's state, ``parley.metrics``)."""
    secret = settings.whatsapp_app_secret.encode()
    if not secret and not skip_signature:
        raise RuntimeError(
            "WHATSAPP_APP_SECRET is not set: the ingress will not accept unsigned webhooks "
            "(for local development only: parley ingress --insecure-skip-signature)"
        )
    if skip_signature:
        log.warning("!!! WEBHOOK SIGNATURES ARE NOT CHECKED: anyone can post to this ingress !!!")

    metrics = IngressMetrics(collectors)

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
        token = settings.whatsapp_verify_token.encode()
        given = params.get("hub.verify_token", "").encode()
        if (
            params.get("hub.mode") == "subscribe"
            and token
            and hmac.compare_digest(token, given)
            and "hub.challenge" in params
        ):
            return PlainTextResponse(params["hub.challenge"])
        return PlainTextResponse("forbidden", status_code=403)

    async def receive(request: Request) -> Response:
        started = time.perf_counter()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return refuse(413, "too_large", f"body over {settings.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                return refuse(413, "too_large", f"body over {settings.max_body_bytes} bytes")
        raw = bytes(body)
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
            envelopes = split_delivery(payload, received_at=time.time())
        except InvalidWebhook as exc:
            return refuse(400, "not_whatsapp", f"not a WhatsApp webhook: {exc}")
        except Exception as exc:  # shapes split_delivery did not foresee: still the sender's fault
            log.warning("delivery refused: malformed (%s)", type(exc).__name__)
            return refuse(400, "malformed", "malformed WhatsApp webhook")
        try:
            ids = await request.app.state.acceptor.accept(envelopes)
        except Exception as exc:
            log.error(
                "delivery outcome=unavailable envelopes=%d error=%s: %s",
                len(envelopes),
                type(exc).__name__,
                exc,
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
            ",".join(e.event_id for e in envelopes),
            (time.perf_counter() - started) * 1000,
        )
        return _answer(200, accepted=accepted, duplicates=len(ids) - accepted)

    app = FastAPI(title="Parley ingress", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.router.routes.insert(0, Route("/webhook", receive, methods=["POST"]))
    app.router.routes.insert(0, Route("/webhook", verify, methods=["GET"]))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/metrics")
    async def metrics_page() -> Response:
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
