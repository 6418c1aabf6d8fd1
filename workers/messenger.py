"""``self.messenger``: the WhatsApp Cloud API client handlers reply with.

One keep-alive ``httpx.AsyncClient`` per worker process; ``for_tenant`` gives a view
that sends from the webhook's phone number over the same client. 429, 5xx, timeouts
and connection errors are retried with capped exponential backoff (honouring
``Retry-After``); once retries are exhausted they raise ``MessengerTransientError``,
which the worker retries in place. Other 4xx raise ``MessengerError`` at once, with
Meta's error code.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, cast
from urllib.parse import quote

import httpx

log = logging.getLogger("parley.messenger")


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
    def from_response(cls, response: httpx.Response) -> MessengerError:
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
    """Rate limited, server error or network trouble, retries exhausted: try again later."""


class WhatsAppMessenger:
    def __init__(
        self,
        token: str,
        phone_id: str,
        *,
        api_base: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        client: httpx.AsyncClient | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.2,
        backoff_max: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.token = token
        self.phone_id = phone_id
        self.api_base = api_base.rstrip("/")
        self.api_version = api_version
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.timeout = timeout
        self._client = client

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout, limits=httpx.Limits(max_keepalive_connections=20)
            )
        return self._client

    def for_tenant(self, phone_id: str) -> WhatsAppMessenger:
        view = object.__new__(WhatsAppMessenger)
        view.__dict__.update(self.__dict__)
        view.phone_id = phone_id
        view._client = self._http()
        return view

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- the wire --------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.backoff_max, max(0.0, float(retry_after)))
            except ValueError:
                pass
        delay: float = min(self.backoff_max, self.backoff_base * 2**attempt)  # int ** int: Any
        return delay * random.uniform(0.5, 1.0)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # the phone number id comes from a webhook: one path segment, whatever it holds
        url = f"{self.api_base}/{self.api_version}/{quote(self.phone_id, safe='')}/messages"
        headers = {"Authorization": f"Bearer {self.token}"}
        attempt = 0
        while True:
            try:
                response = await self._http().post(url, json=body, headers=headers)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.max_retries:
                    raise MessengerTransientError(f"Graph API unreachable: {exc!r}") from exc
                delay = self._backoff(attempt, None)
            else:
                if response.status_code < 400:
                    return cast("dict[str, Any]", response.json())
                if response.status_code != 429 and response.status_code < 500:
                    raise MessengerError.from_response(response)
                if attempt >= self.max_retries:
                    error = MessengerError.from_response(response)
                    raise MessengerTransientError(
                        str(error),
                        status_code=error.status_code,
                        code=error.code,
                        subcode=error.subcode,
                        fbtrace_id=error.fbtrace_id,
                    )
                delay = self._backoff(attempt, response.headers.get("Retry-After"))
            attempt += 1
            log.info("Graph API busy; retry %d in %.2fs", attempt, delay)
            await asyncio.sleep(delay)

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
