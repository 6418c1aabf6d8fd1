"""A fake of Meta's Graph API messages endpoint: a real HTTP server on loopback.

It checks the bearer token, the path and the shape of each request as the Cloud API
would, records what was accepted, and can be told to fail the next requests.
Runs in a thread of the test process, so worker subprocesses reach it too.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = re.compile(r"^/(v\d+\.\d+)/([^/]+)/messages$")


@dataclass
class SentMessage:
    phone_id: str
    to: str | None
    type: str
    body: dict[str, Any]

    @property
    def text(self) -> str | None:
        return self.body.get("text", {}).get("body") if self.type == "text" else None


def _shape_error(body: dict[str, Any]) -> str | None:
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be whatsapp"
    if body.get("status") == "read":
        return None if body.get("message_id") else "message_id is required"
    kind = body.get("type")
    if not body.get("to"):
        return "to is required"
    content = body.get(kind) if isinstance(kind, str) else None
    if not isinstance(content, dict):
        return f"missing {kind} object"
    if kind == "text" and not content.get("body"):
        return "text.body is required"
    if kind == "interactive":
        buttons = content.get("action", {}).get("buttons")
        if content.get("type") == "button" and not (buttons and len(buttons) <= 3):
            return "1 to 3 buttons"
        if content.get("type") == "list" and not content.get("action", {}).get("sections"):
            return "sections are required"
    if kind == "image" and ("link" in content) == ("id" in content):
        return "image takes link or id"
    if kind == "reaction" and not ("message_id" in content and "emoji" in content):
        return "reaction takes message_id and emoji"
    return None


class _Server(ThreadingHTTPServer):
    """A client that hangs up before its answer is written (it timed out, as the
    messenger's retry tests make it) is counted, not printed: socketserver would print a
    BrokenPipeError traceback into the test output for each."""

    daemon_threads = True
    on_hangup: Callable[[], None] = staticmethod(lambda: None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # broken pipe, reset, aborted
            self.on_hangup()
            return
        super().handle_error(request, client_address)


class FakeGraphAPI:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.sent: list[SentMessage] = []
        self.requests = 0
        #: Requests whose client hung up before the answer was written (a client that
        #: timed out: what a retry test makes happen on purpose)
        self.hangups = 0
        self._failures: list[tuple[int, float | None, float]] = []
        self._outage: tuple[int, frozenset[str] | None] | None = None
        self._changed = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                fake.requests += 1
                with fake._changed:
                    failure = fake._failures.pop(0) if fake._failures else None
                    if failure is None and fake._outage is not None:
                        status, recipients = fake._outage
                        to = json.loads(raw or b"{}").get("to") if recipients else None
                        if recipients is None or to in recipients:
                            failure = (status, None, 0.0)
                if failure:
                    status, retry_after, delay = failure
                    if delay:
                        time.sleep(delay)
                    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    return self._answer(status, _error("Service unavailable", 2), headers)
                match = PATH.match(self.path)
                if not match:
                    return self._answer(404, _error("Unknown path", 803))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    return self._answer(401, _error("Invalid OAuth access token.", 190))
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._answer(400, _error("Invalid JSON", 100))
                problem = _shape_error(body)
                if problem:
                    return self._answer(400, _error(f"(#100) {problem}", 100))
                with fake._changed:
                    fake.sent.append(
                        SentMessage(match.group(2), body.get("to"), body.get("type", "read"), body)
                    )
                    fake._changed.notify_all()
                return self._answer(
                    200,
                    {
                        "messaging_product": "whatsapp",
                        "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                        "messages": [{"id": f"wamid.{uuid.uuid4().hex}"}],
                    },
                )

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.on_hangup = self._hung_up
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _hung_up(self) -> None:
        with self._changed:
            self.hangups += 1
            self._changed.notify_all()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeGraphAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(
        self, n: int, status: int = 500, retry_after: float | None = None, delay: float = 0.0
    ) -> None:
        with self._changed:
            self._failures += [(status, retry_after, delay)] * n

    def outage(self, status: int = 503, recipients: set[str] | None = None) -> None:
        """Answer every request (or those to ``recipients``) with ``status`` until
        ``recover()``."""
        with self._changed:
            self._outage = (status, frozenset(recipients) if recipients else None)

    def recover(self) -> None:
        with self._changed:
            self._outage = None

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SentMessage]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.sent) >= count, timeout):
                raise TimeoutError(f"{len(self.sent)} of {count} messages arrived")
            return list(self.sent)

    def texts_to(self, recipient: str) -> list[str]:
        with self._changed:
            return [m.text for m in self.sent if m.to == recipient and m.text is not None]

    def reset(self) -> None:
        with self._changed:
            self.sent.clear()
            self._failures.clear()
            self._outage = None


def _error(message: str, code: int) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AbCdEf",
        }
    }
