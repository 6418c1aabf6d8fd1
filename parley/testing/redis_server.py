"""A throwaway ``redis-server`` on a free loopback port, owned by the tests.

Tests never touch a server they did not start; this one keeps nothing on disk
(except where a test asks for an append-only file) and can be stopped and
restarted on the same port to test outages.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis

T = TypeVar("T")

#: Tries of a server on a fresh free port, when the one chosen was taken meanwhile
PORT_ATTEMPTS = 5


def free_port() -> int:
    """A loopback port nothing listens on now; something may take it before the server
    that is to listen there does (see ``on_free_port``)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PortTaken(RuntimeError):
    """A server could not listen on its port: something took it after it was chosen."""


def port_taken(output: str) -> bool:
    """Whether a server's output says its port was in use (EADDRINUSE): redis-server's,
    uvicorn's and tornado's (Flower's) words for it."""
    return "address already in use" in output.lower()


def on_free_port(start: Callable[[int], T], attempts: int = PORT_ATTEMPTS) -> T:
    """``start(port)`` on a free port; while it raises PortTaken (the port was taken
    between ``free_port()`` and the server's bind), again on another one."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("attempts must be at least 1")


class RedisServer:
    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server")
        self.binary = binary
        self._port = port or free_port()
        #: Once given, read (``port``, ``url``...) or started on, the port stays: a restart
        #: uses it again, and whoever has the URL can rely on it. Until then a start
        #: finding it taken moves to another free port.
        self._pinned = port is not None
        self.extra_args = extra_args
        self.dir = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        self._pinned = True
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def db_url(self, db: int) -> str:
        return f"{self.url}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start and wait until this server (not another on the port) answers. On a port
        not pinned yet, one taken meanwhile is replaced by another free one."""
        attempts = 1 if self._pinned else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._start(timeout)
            except PortTaken:
                if attempt == attempts:
                    raise
                self._port = free_port()
                continue
            self._pinned = True
            return self
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> None:
        log_path = self.dir / "redis-server.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self._port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--databases",
                    "16",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = self.process
        deadline = time.monotonic() + timeout

        def exited() -> RuntimeError:
            self.process = None
            output = log_path.read_text(errors="replace")
            error = PortTaken if port_taken(output) else RuntimeError
            return error(
                f"redis-server on port {self._port} exited with {process.returncode}:\n"
                f"{output[-2000:]}"
            )

        client = redis.Redis(port=self._port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            while True:
                if process.poll() is not None:
                    raise exited()
                try:
                    pid = client.info("server")["process_id"]
                except redis.RedisError:  # not up yet, or what took the port is no Redis
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
                    continue
                if pid == process.pid:
                    return
                # another server answered on the port: ours cannot bind it, and exits
                try:
                    process.wait(timeout=max(deadline - time.monotonic(), 1.0))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    self.process = None
                    raise RuntimeError(
                        f"redis-server {pid} answers on port {self._port}, not ours"
                    ) from None
                raise exited()
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.port, db=db)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
