"""The fake Graph API (``parley.testing.graph``) itself: a client that hangs up leaves no
traceback in the test output."""

from __future__ import annotations

import json
import socket
import struct

import pytest

from parley.testing import FakeGraphAPI
from tests.helpers import wait_for


def hang_up_after_sending(url: str) -> None:
    """POST a message and close at once with a reset (SO_LINGER 0), as a client that
    timed out does; whatever the server writes next meets a dead connection."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"messaging_product": "whatsapp", "to": "519", "type": "text"}).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(
            b"POST /v21.0/106540352242922/messages HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer test-token\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )


def test_a_client_that_hangs_up_prints_no_traceback(
    graph: FakeGraphAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    graph.fail_next(3, status=503, delay=0.2)  # the answer comes after the hang-up
    for _ in range(3):
        hang_up_after_sending(graph.url)
    wait_for(lambda: graph.hangups == 3, timeout=30, what="three hang-ups seen by the fake")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
