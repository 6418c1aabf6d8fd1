"""The messenger against the fake Graph API, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from parley.testing import FakeGraphAPI
from parley.testing.redis_server import free_port
from parley.workers.calls import TransientFailure
from parley.workers.messenger import MessengerError, MessengerTransientError, WhatsAppMessenger

TOKEN = "secret-token"


@pytest.fixture
def graph() -> Iterator[FakeGraphAPI]:
    with FakeGraphAPI(token=TOKEN) as fake:
        yield fake


def messenger(graph: FakeGraphAPI, **kwargs: object) -> WhatsAppMessenger:
    return WhatsAppMessenger(TOKEN, "1065", api_base=graph.url, backoff_base=0.01, **kwargs)  # type: ignore[arg-type]


async def test_every_send_has_the_cloud_api_shape(graph: FakeGraphAPI) -> None:
    m = messenger(graph)
    assert (await m.send_text("Hello", "51911")).startswith("wamid.")
    await m.send_buttons("Size?", "51911", [("s", "Small"), ("l", "Large")], footer="Parley")
    await m.send_list(
        "Menu", "51911", "View", [{"title": "Pizza", "rows": [{"id": "p", "title": "P"}]}]
    )
    await m.send_image("51911", link="https://example.invalid/p.jpg", caption="Pizza")
    await m.send_image("51911", media_id="998877")
    await m.send_reaction("51911", "wamid.OLD", "🍕")
    assert await m.mark_as_read("wamid.OLD") is True
    sent = graph.wait_for(7)
    assert [s.type for s in sent] == [
        "text",
        "interactive",
        "interactive",
        "image",
        "image",
        "reaction",
        "read",
    ]
    assert sent[0].body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "51911",
        "type": "text",
        "text": {"body": "Hello", "preview_url": False},
    }
    buttons = sent[1].body["interactive"]["action"]["buttons"]
    assert buttons[1] == {"type": "reply", "reply": {"id": "l", "title": "Large"}}
    assert all(s.phone_id == "1065" for s in sent)
    await m.aclose()


async def test_bad_arguments_fail_before_sending() -> None:
    """Against a Graph API nothing can reach (a port nothing listens on): a request
    before the arguments' check would raise TransientFailure instead."""
    m = WhatsAppMessenger(
        TOKEN, "1065", api_base=f"http://127.0.0.1:{free_port()}", retry_deadline=0.3
    )
    try:
        with pytest.raises(TransientFailure, match="unreachable"):  # unreachable indeed
            await m.send_text("hi", "1")
        with pytest.raises(ValueError, match="1 to 3"):
            await m.send_buttons("?", "1", [("a", "A")] * 4)
        with pytest.raises(ValueError, match="20 characters"):
            await m.send_buttons("?", "1", [("a", "A" * 21)])
        with pytest.raises(ValueError, match="exactly one"):
            await m.send_image("1")
    finally:
        await m.aclose()


async def test_bad_token_raises_with_metas_code(graph: FakeGraphAPI) -> None:
    m = WhatsAppMessenger("wrong", "1065", api_base=graph.url)
    with pytest.raises(MessengerError) as caught:
        await m.send_text("hi", "1")
    assert caught.value.code == 190 and caught.value.status_code == 401
    assert not isinstance(caught.value, MessengerTransientError)
    assert graph.requests == 1  # a 4xx is not retried
    await m.aclose()


async def test_server_errors_are_retried(graph: FakeGraphAPI) -> None:
    m = messenger(graph)
    graph.fail_next(2, status=500)
    await m.send_text("hi", "1")
    assert graph.requests == 3 and len(graph.sent) == 1
    await m.aclose()


async def test_retry_after_is_honoured(graph: FakeGraphAPI) -> None:
    m = messenger(graph)
    graph.fail_next(1, status=429, retry_after=0.3)
    started = time.monotonic()
    await m.send_text("hi", "1")
    assert time.monotonic() - started >= 0.3
    assert graph.requests == 2
    await m.aclose()


async def test_retries_end_at_the_deadline(graph: FakeGraphAPI) -> None:
    m = messenger(graph, retry_deadline=0.3)
    graph.fail_next(1000, status=503)
    with pytest.raises(TransientFailure, match="PARLEY_TRANSIENT_DEADLINE") as caught:
        await m.send_text("hi", "1")
    cause = caught.value.__cause__
    assert isinstance(cause, MessengerTransientError) and cause.status_code == 503
    assert graph.requests > 1 and not graph.sent
    await m.aclose()


async def test_a_timeout_after_sending_is_not_retried(graph: FakeGraphAPI) -> None:
    """The request reached the Graph API: it may have sent the message, so a retry
    could send it twice."""
    m = messenger(graph, timeout=0.2)
    graph.fail_next(2, status=500, delay=0.5)
    with pytest.raises(MessengerTransientError, match="may have gone out") as caught:
        await m.send_text("hi", "1")
    assert not caught.value.retry_safe
    assert graph.requests == 1
    await m.aclose()


async def test_a_gateway_error_is_not_retried(graph: FakeGraphAPI) -> None:
    m = messenger(graph)
    graph.fail_next(1, status=502)
    with pytest.raises(MessengerTransientError, match="may have gone out"):
        await m.send_text("hi", "1")
    assert graph.requests == 1
    await m.aclose()


async def test_connection_refused_is_retried_until_the_deadline() -> None:
    m = WhatsAppMessenger(
        TOKEN, "1065", api_base=f"http://127.0.0.1:{free_port()}", retry_deadline=0.3
    )
    with pytest.raises(TransientFailure) as caught:
        await m.send_text("hi", "1")
    assert "unreachable" in str(caught.value) and "busy" not in str(caught.value)
    await m.aclose()


async def test_dns_failures_say_dns(caplog: pytest.LogCaptureFixture) -> None:
    m = WhatsAppMessenger(TOKEN, "1065", api_base="http://graph.invalid", retry_deadline=0.2)
    with pytest.raises(TransientFailure, match=r"not found \(DNS\)"):
        await m.send_text("hi", "1")
    assert "DNS" in caplog.text and "busy" not in caplog.text
    await m.aclose()


async def test_for_tenant_shares_the_client(graph: FakeGraphAPI) -> None:
    m = messenger(graph)
    other = m.for_tenant("2222")
    await other.send_text("from another number", "1")
    await m.send_text("from the first", "1")
    assert [s.phone_id for s in graph.wait_for(2)] == ["2222", "1065"]
    assert other._http() is m._http()
    await m.aclose()
