"""``self.messenger``: the WhatsApp Cloud API client handlers reply with.

One keep-alive ``httpx.AsyncClient`` per worker process; ``for_tenant`` gives a view
that sends from the webhook's phone number over the same client, with that webhook's
retry policy (``parley.workers.calls``). A request is retried only where that cannot
send a message twice: the connection failed (nothing was sent), or Meta answered 429,
500 or 503 (it did not do it). A timeout or a dropped connection after sending, a 502
or 504 from a gateway: the message may have gone out, so the error is raised at once
and says so. Other 4xx raise ``MessengerError`` at once, with Meta's error code.
"""

from __future__ import annotations

import socket
from typing import Any, Self, cast
from urllib.parse import quote

import httpx

from parley.workers.calls import Calls

#: Answers that say Meta did not do it: retrying cannot send twice
NOT_DONE = frozenset({429, 500, 503})


class MessengerError(Exception):
    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: int | None = None,
        subcode: int | None = None,
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.subcode = subcode
        self.fbtrace_id = fbtrace_id

    @classmethod
    def from_response(cls, response: httpx.Response) -> Self:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        return cls(
            f"Graph API {response.status_code}: {error.get('message') or response.reason_phrase}"
            + (f" (code {error['code']})" if "code" in error else ""),
            status_code=response.status_code,
            code=error.get("code"),
            subcode=error.get("error_subcode"),
            fbtrace_id=error.get("fbtrace_id"),
        )


class MessengerTransientError(MessengerError):
    """Rate limited, a server error or network trouble. ``retry_safe``: the request
    certainly did not send anything, so it may be sent again."""

    retry_safe = False
    retry_after: float | None = None

    @classmethod
    def not_sent(cls, reason: str | httpx.Response) -> Self:
        """Nothing was sent (the connection failed), or Meta answered that it did not
        do it (429, 500, 503; with its ``Retry-After``)."""
        if isinstance(reason, str):
            error = cls(reason)
        else:
            error = cls.from_response(reason)
            retry_after = reason.headers.get("Retry-After")
            error.retry_after = float(retry_after) if _is_number(retry_after) else None
        error.retry_safe = True
        return error


def _is_number(text: str | None) -> bool:
    try:
        return text is not None and float(text) >= 0
    except ValueError:
        return False


def _unreachable(api_base: str, exc: httpx.TransportError) -> str:
    """Why nothing was sent: a name that does not resolve is a configuration problem
    (WHATSAPP_API_BASE, DNS), not a busy Graph API."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"Graph API host of {api_base} not found (DNS): {cause}"
        cause = cause.__cause__ or cause.__context__
    return f"Graph API at {api_base} unreachable: {exc!r}"


class WhatsAppMessenger:
    def __init__(
        self,
        token: str,
        phone_id: str,
        *,
        api_base: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        client: httpx.AsyncClient | None = None,
        retry_deadline: float = 30.0,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        """Used on its own, a request is retried for up to ``retry_deadline`` seconds;
        in a handler, the worker's per-envelope policy applies (``for_tenant``)."""
        self.token = token
        self.phone_id = phone_id
        self.api_base = api_base.rstrip("/")
        self.api_version = api_version
        self.retry_deadline = retry_deadline
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.calls: Calls | None = None
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=20)
            )
        return self._client

    def for_tenant(self, phone_id: str, calls: Calls | None = None) -> WhatsAppMessenger:
        """A view sending from ``phone_id`` over this client, its requests retried by
        ``calls`` (one webhook's policy and deadline)."""
        view = object.__new__(WhatsAppMessenger)
        view.__dict__.update(self.__dict__)
        view.phone_id = phone_id
        view.calls = calls
        view._client = self._http()
        return view

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the wire --------------------------------------------------------------------

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # the phone number id comes from a webhook: one path segment, whatever it holds
        url = f"{self.api_base}/{self.api_version}/{quote(self.phone_id, safe='')}/messages"
        headers = {"Authorization": f"Bearer {self.token}"}
        calls = self.calls or Calls(
            deadline=self.retry_deadline, backoff=self.backoff_base, backoff_max=self.backoff_max
        )
        return await calls.call("Graph API request", lambda: self._attempt(url, body, headers))

    async def _attempt(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        """One request; the error says whether sending it again is safe."""
        try:
            response = await self._http().post(url, json=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise MessengerTransientError.not_sent(_unreachable(self.api_base, exc)) from exc
        except httpx.TransportError as exc:  # a timeout or a dropped connection, after sending
            raise MessengerTransientError(
                f"Graph API request failed after it was sent ({exc!r}): the message may "
                "have gone out, so it is not sent again"
            ) from exc
        if response.status_code < 400:
            return cast("dict[str, Any]", response.json())
        if response.status_code in NOT_DONE:
            raise MessengerTransientError.not_sent(response)
        if response.status_code >= 500:  # a gateway lost Meta's answer: it may have sent it
            error = MessengerError.from_response(response)
            raise MessengerTransientError(
                f"{error} (the message may have gone out, so it is not sent again)",
                status_code=error.status_code,
                code=error.code,
                fbtrace_id=error.fbtrace_id,
            )
        raise MessengerError.from_response(response)

    async def _send(
        self, recipient: str, kind: str, content: dict[str, Any], reply_to: str | None = None
    ) -> str:
        body: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": recipient,
            "type": kind,
            kind: content,
        }
        if reply_to:
            body["context"] = {"message_id": reply_to}
        response = await self._post(body)
        return str(response["messages"][0]["id"])

    # -- the API handlers call ------------------------------------------------------------

    async def send_text(
        self, text: str, recipient: str, *, preview_url: bool = False, reply_to: str | None = None
    ) -> str:
        return await self._send(
            recipient, "text", {"body": text, "preview_url": preview_url}, reply_to
        )

    async def send_buttons(
        self,
        body: str,
        recipient: str,
        buttons: list[tuple[str, str]] | list[dict[str, str]],
        *,
        header: str | None = None,
        footer: str | None = None,
        reply_to: str | None = None,
    ) -> str:
        pairs = [(b["id"], b["title"]) if isinstance(b, dict) else b for b in buttons]
        if not 1 <= len(pairs) <= 3:
            raise ValueError(f"WhatsApp allows 1 to 3 reply buttons, got {len(pairs)}")
        for _, title in pairs:
            if len(title) > 20:
                raise ValueError(f"button title {title!r} is over 20 characters")
        interactive: dict[str, Any] = {
            "type": "button",
            "body": {"text": body},
            "action": {
                "buttons": [{"type": "reply", "reply": {"id": i, "title": t}} for i, t in pairs]
            },
        }
        if header:
            interactive["header"] = {"type": "text", "text": header}
        if footer:
            interactive["footer"] = {"text": footer}
        return await self._send(recipient, "interactive", interactive, reply_to)

    async def send_list(
        self,
        body: str,
        recipient: str,
        button_text: str,
        sections: list[dict[str, Any]],
        *,
        header: str | None = None,
        footer: str | None = None,
    ) -> str:
        if not sections:
            raise ValueError("a list message needs at least one section")
        interactive: dict[str, Any] = {
            "type": "list",
            "body": {"text": body},
            "action": {"button": button_text, "sections": sections},
        }
        if header:
            interactive["header"] = {"type": "text", "text": header}
        if footer:
            interactive["footer"] = {"text": footer}
        return await self._send(recipient, "interactive", interactive)

    async def send_image(
        self,
        recipient: str,
        *,
        link: str | None = None,
        media_id: str | None = None,
        caption: str | None = None,
    ) -> str:
        if (link is None) == (media_id is None):
            raise ValueError("send_image takes exactly one of link= or media_id=")
        image: dict[str, Any] = {"link": link} if link else {"id": media_id}
        if caption:
            image["caption"] = caption
        return await self._send(recipient, "image", image)

    async def send_reaction(self, recipient: str, message_id: str, emoji: str) -> str:
        return await self._send(recipient, "reaction", {"message_id": message_id, "emoji": emoji})

    async def mark_as_read(self, message_id: str) -> bool:
        await self._post(
            {
                "messaging_product": "whatsapp",
                "status": "read",
                "message_id": message_id,
            }
        )
        return True
