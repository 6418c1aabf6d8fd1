"""Serve an ASGI app with uvicorn on a free loopback port, in a thread of the test."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from parley.testing import free_port
from parley.testing.redis_server import PORT_ATTEMPTS


class ServedApp:
    """uvicorn binds the port itself (a socket handed to it would serve without
    TCP_NODELAY, ten times slower); a port taken between ``free_port()`` and that bind
    makes the server exit at once, and the next attempt takes another free port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = 0
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _start(self) -> bool:
        self.port = free_port()
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            access_log=False,
        )
        self.server = server = uvicorn.Server(config)
        self.thread = thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive():
                return False  # it could not bind: the port was taken meanwhile
            if time.monotonic() > deadline:
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return True

    def __enter__(self) -> ServedApp:
        for _ in range(PORT_ATTEMPTS):
            if self._start():
                return self
        raise RuntimeError(f"the app did not start on any of {PORT_ATTEMPTS} free ports")

    def __exit__(self, *exc: object) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
