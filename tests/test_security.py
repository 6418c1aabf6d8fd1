"""One test per finding of the security review (issue 17): nothing unsigned gets in,
nothing signed gets out of bounds. Real ingress over HTTP, real Redis, real CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import ValidationError

from parley.asgi import create_ingress, from_environment
from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer, delivery, text_message
from parley.testing import sign as signed_with
from parley.wire.envelope import Envelope
from parley.wire.keys import DEAD_LETTERS
from parley.wire.messages import task_repr
from parley.workers.messenger import WhatsAppMessenger
from parley.workers.settings import Settings
from tests.helpers import ROOT, SECRET, make_settings, pipeline_keys, serve_on_free_port, sign
from tests.http_server import ServedApp


def parley(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The ``parley`` command with exactly this environment (and PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


# -- High: the environment alone cannot turn signature checks off ----------------------------


def test_the_environment_cannot_skip_signatures(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARLEY_INSECURE_SKIP_SIGNATURE", "1")  # what the bypass used
    monkeypatch.setenv("PARLEY_REDIS_URL", redis_url)
    monkeypatch.setenv("WHATSAPP_APP_SECRET", SECRET)
    body = orjson.dumps(delivery([text_message("5191000001", "hi")]))
    with ServedApp(from_environment()) as served:
        response = httpx.post(f"{served.url}/webhook", content=body)
    assert response.status_code == 401


def test_the_skip_flag_is_refused_with_a_secret_or_off_loopback(redis_url: str) -> None:
    with_secret = parley(
        "ingress", "--insecure-skip-signature", "--host", "127.0.0.1",
        PARLEY_REDIS_URL=redis_url, WHATSAPP_APP_SECRET=SECRET,
    )  # fmt: skip
    assert "WHATSAPP_APP_SECRET is set" in one_error_line(with_secret)
    public = parley("ingress", "--insecure-skip-signature", "--host", "0.0.0.0")
    assert "loopback" in one_error_line(public)


# -- Medium: placeholders are not credentials --------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["replace-with-app-secret", "short-but-real", "your-app-secret-goes-here"]
)
def test_placeholder_or_short_app_secrets_are_refused(redis_url: str, secret: str) -> None:
    with pytest.raises(RuntimeError, match="WHATSAPP_APP_SECRET"):
        create_ingress(make_settings(redis_url, whatsapp_app_secret=secret))
    line = one_error_line(parley("ingress", PARLEY_REDIS_URL=redis_url, WHATSAPP_APP_SECRET=secret))
    assert "WHATSAPP_APP_SECRET" in line and secret not in line


@pytest.mark.parametrize(
    "auth", ["admin:replace-with-a-long-password", "admin:s3cret", "admin", ""]
)
def test_flower_refuses_placeholder_or_missing_credentials(auth: str) -> None:
    line = one_error_line(parley("flower", FLOWER_BASIC_AUTH=auth))
    assert "FLOWER_BASIC_AUTH" in line and (not auth or auth.split(":")[-1] not in line)


# -- Medium: ids are validated at the door and escaped in URLs ---------------------------------


def test_a_path_traversal_tenant_is_refused_and_never_reaches_the_graph_api(
    ingress: httpx.Client, redis_server: RedisServer, graph: FakeGraphAPI
) -> None:
    body = orjson.dumps(
        delivery([text_message("5191000002", "hi")], phone_id="123/../../me?fields=id#")
    )
    response = ingress.post("/webhook", content=body, headers=sign(body))
    assert response.status_code == 400
    assert "phone_number_id" in response.json()["error"]
    assert pipeline_keys(redis_server) == 0 and graph.requests == 0


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("from", {"from": "5191000003\r\nX-Injected: 1"}),
        ("id", {"id": "wamid.[/bold]\r\nINFO forged line"}),
    ],
)
def test_ids_outside_metas_alphabet_are_refused_with_the_field_named(
    ingress: httpx.Client, redis_server: RedisServer, field: str, message: dict[str, str]
) -> None:
    body = orjson.dumps(delivery([{**text_message("5191000003", "hi"), **message}]))
    response = ingress.post("/webhook", content=body, headers=sign(body))
    assert response.status_code == 400 and f".{field} is not a valid id" in response.text
    assert pipeline_keys(redis_server) == 0


async def test_the_messenger_keeps_a_tenant_in_one_path_segment(graph: FakeGraphAPI) -> None:
    messenger = WhatsAppMessenger("test-token", PHONE_ID, api_base=graph.url)
    try:
        await messenger.for_tenant("123/../../me").send_text("hi", "5191000004")
    finally:
        await messenger.aclose()
    (sent,) = graph.wait_for(1)
    assert sent.phone_id == "123%2F..%2F..%2Fme"  # one segment, not a walk up the path


def test_an_allow_list_refuses_other_phone_numbers(
    redis_url: str, redis_server: RedisServer
) -> None:
    settings = make_settings(redis_url, allowed_phone_ids="111,222")
    body = orjson.dumps(delivery([text_message("5191000005", "hi")]))  # PHONE_ID: not listed
    with ServedApp(create_ingress(settings)) as served:
        response = httpx.post(f"{served.url}/webhook", content=body, headers=sign(body))
    assert response.status_code == 403
    assert pipeline_keys(redis_server) == 0


# -- Medium: unauthenticated uploads cannot exhaust memory -------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def slow_upload(port: int, size: int, chunk: int) -> int | None:
    """POST ``size`` unsigned bytes in ``chunk``-byte pieces, a little at a time; the
    status the ingress answered, or None if it closed the connection first."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
        )
        for _ in range(size // chunk):
            writer.write(b"x" * chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1]) if status_line else None
    except (ConnectionError, OSError):
        return None
    finally:
        writer.close()


def test_two_hundred_slow_unsigned_uploads_stay_within_the_memory_bound(
    redis_url: str, tmp_path: Path
) -> None:
    """The bound: what the ingress holds at rest, plus twice PARLEY_MAX_BUFFERED_BYTES
    (32 MiB: the bodies being read, and the joined copies of those being checked), plus
    uvicorn's read buffers (64 KiB a connection) and 32 MiB of slack. Before the budget
    the same flood took the ingress from 72 MB to 848 MB."""
    log_path = tmp_path / "ingress.log"
    env = {
        **os.environ,
        "PARLEY_REDIS_URL": redis_url,
        "WHATSAPP_APP_SECRET": SECRET,
        "PARLEY_BODY_TIMEOUT": "20",
    }

    ingress, port = serve_on_free_port(
        lambda port: [
            *(sys.executable, "-m", "parley", "ingress"),
            *("--host", "127.0.0.1", "--port", str(port)),
        ],
        _healthy,
        log_path,
        env=env,
        cwd=ROOT,
    )
    try:
        at_rest = rss_bytes(ingress.pid)
        peak = at_rest
        connections, size = 200, 3 * 1024 * 1024

        async def flood() -> list[int | None]:
            nonlocal peak
            uploads = asyncio.gather(
                *(slow_upload(port, size, 64 * 1024) for _ in range(connections))
            )
            while not uploads.done():
                peak = max(peak, rss_bytes(ingress.pid))
                await asyncio.sleep(0.05)
            return await uploads

        answers = asyncio.run(flood())
        bound = at_rest + 2 * 32 * 2**20 + connections * 64 * 2**10 + 32 * 2**20
        print(f"ingress RSS at rest {at_rest >> 20} MiB, peak {peak >> 20} MiB")
        assert peak <= bound, f"RSS grew {(peak - at_rest) >> 20} MiB"
        assert set(answers) <= {401, 503, None}  # refused; none accepted
        assert 401 in answers  # the budget still lets whole bodies through to the check
        assert ingress.poll() is None and _healthy(port)
    finally:
        ingress.terminate()
        ingress.wait(timeout=30)
    text = log_path.read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text, text[-3000:]


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# -- Medium: signed amplification is refused fast ----------------------------------------------


def amplification_payloads() -> dict[str, bytes]:
    many = [text_message(f"51920{n:06d}", "x") for n in range(39_000)]
    big_metadata = delivery([text_message(f"51930{n:06d}", "x") for n in range(300)])
    big_metadata["entry"][0]["changes"][0]["value"]["metadata"]["padding"] = "p" * 2**20
    nested = orjson.dumps(delivery([text_message("5194000001", "NESTED")]))
    nested = nested.replace(b'"NESTED"', b"[" * 300 + b'"x"' + b"]" * 300)
    return {
        "39,000 messages and contacts": orjson.dumps(delivery(many)),
        "1 MiB of metadata": orjson.dumps(big_metadata),
        "44,000 messages": orjson.dumps(
            delivery([text_message(f"51950{n:06d}", "x") for n in range(44_000)])
        ),
        "nesting 300 deep": nested,
    }


def test_signed_amplification_is_answered_400_quickly_and_redis_never_stalls(
    redis_url: str, redis_server: RedisServer
) -> None:
    admin = redis_server.client(3)
    admin.config_set("slowlog-log-slower-than", 50_000)  # µs: any call over 50 ms
    admin.slowlog_reset()
    settings = make_settings(redis_url, max_body_bytes=16 * 2**20)
    with ServedApp(create_ingress(settings)) as served, httpx.Client(timeout=5) as client:
        for name, body in amplification_payloads().items():
            # the 5 s timeout is a deadline, not a measurement: the old code took 103 s
            response = client.post(f"{served.url}/webhook", content=body, headers=sign(body))
            assert response.status_code == 400, (name, response.text)
    assert admin.ping() and admin.slowlog_get() == []
    assert pipeline_keys(redis_server) == 0


# -- Low: secrets stay out of errors; ids cannot forge output ----------------------------------


def test_a_validation_error_does_not_show_the_secrets(redis_url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(whatsapp_token="EAAG-real-token-1234", partitions="many")  # type: ignore[arg-type]
    assert "EAAG-real-token-1234" not in str(caught.value)
    assert "partitions" in str(caught.value)
    result = parley(
        "ingress", PARLEY_PARTITIONS="many", WHATSAPP_APP_SECRET="an-app-secret-never-shown"
    )
    assert "an-app-secret-never-shown" not in result.stdout + result.stderr
    assert "partitions" in one_error_line(result)


def test_dead_list_prints_a_markup_id_as_it_is(redis_url: str, redis_server: RedisServer) -> None:
    envelope = Envelope(
        tenant_id=PHONE_ID,
        user_id="5196000001",
        kind="message",
        event_id="wamid.[/bold]x",  # refused at the ingress today; a replay could carry it
        received_at=time.time(),
        payload={},
    )
    redis_server.client(3).xadd(
        DEAD_LETTERS,
        {
            "envelope": orjson.dumps(envelope.to_json()),
            "tenant_id": PHONE_ID,
            "user_id": envelope.user_id,
            "event_id": envelope.event_id,
            "kind": "message",
            "partition": 0,
            "handler": "H",
            "error_type": "builtins.ValueError",
            "error": "[red]boom",
            "traceback": "",
            "attempts": 1,
            "first_failure": time.time(),
            "last_failure": time.time(),
        },
    )
    result = parley("dead", "list", PARLEY_REDIS_URL=redis_url)
    assert result.returncode == 0, result.stderr
    assert "wamid.[/bold]x" in result.stdout and "[red]boom" in result.stdout


def test_a_cr_lf_id_yields_one_log_line() -> None:
    envelope = Envelope(
        tenant_id=PHONE_ID,
        user_id="5196000002",
        kind="message",
        event_id="wamid.a\r\n2026-01-01 INFO parley.worker: forged",
        received_at=time.time(),
        payload={},
    )
    shown = task_repr(envelope)
    assert "\n" not in shown and "\r" not in shown and "\\r\\n" in shown


def test_no_public_openapi_and_metrics_only_for_loopback_or_a_token(redis_url: str) -> None:
    with ServedApp(create_ingress(make_settings(redis_url))) as served:
        assert httpx.get(f"{served.url}/openapi.json").status_code == 404
        assert httpx.get(f"{served.url}/metrics").status_code == 200  # loopback
        proxied = {"X-Forwarded-For": "203.0.113.9"}  # a proxy on this host, for someone
        assert httpx.get(f"{served.url}/metrics", headers=proxied).status_code == 403
    settings = make_settings(redis_url, metrics_token="a-long-metrics-token-1")
    with ServedApp(create_ingress(settings)) as served:
        assert httpx.get(f"{served.url}/metrics").status_code == 403
        bearer = {"Authorization": "Bearer a-long-metrics-token-1"}
        assert httpx.get(f"{served.url}/metrics", headers=bearer).status_code == 200


def test_signed_with_the_real_secret_still_gets_in(ingress: httpx.Client) -> None:
    body = orjson.dumps(delivery([text_message("5196000003", "hi")]))
    assert ingress.post("/webhook", content=body, headers=signed_with(body, SECRET)).is_success


def test_a_delivery_at_the_cap_is_accepted_in_short_script_calls(
    redis_url: str, redis_server: RedisServer
) -> None:
    """1000 events (the default cap) are all accepted, in calls of at most 256 events,
    none of which holds Redis for 50 ms."""
    admin = redis_server.client(3)
    admin.config_set("slowlog-log-slower-than", 50_000)
    admin.slowlog_reset()
    admin.config_resetstat()
    messages = [text_message(f"51970{n:06d}", "x") for n in range(1000)]
    body = orjson.dumps(delivery(messages))
    settings = make_settings(redis_url, max_body_bytes=4 * 2**20)
    with ServedApp(create_ingress(settings)) as served:
        response = httpx.post(f"{served.url}/webhook", content=body, headers=sign(body))
    assert response.status_code == 200 and response.json()["accepted"] == 1000
    assert admin.xlen("parley:log") == 1000 and admin.slowlog_get() == []
    calls = admin.info("commandstats")
    evalsha = calls.get("cmdstat_evalsha", {}).get("calls", 0)
    assert evalsha >= 4  # 1000 events / 256 per call
