"""The machine's RabbitMQ, for the tests that run the pipeline on an AMQP broker.

Each test gets a virtual host of its own (a unique name, ``guest`` granted on it),
deleted afterwards: queues, messages and consumers of one test never meet another's,
and nothing is left on the shared server. Vhosts are made through the management API
when the plugin answers, else with ``rabbitmqctl`` (on the server's own machine).
Where no RabbitMQ answers on 127.0.0.1:5672, the tests that need it skip with one
reason (``.ci/run`` installs and starts ``rabbitmq-server``, so CI always runs them).
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import httpx
import pytest

HOST = "127.0.0.1"
PORT = 5672
USER = "guest"
PASSWORD = "guest"
MANAGEMENT = f"http://{HOST}:15672/api"

#: Why RabbitMQ tests skip: the one reason pytest prints
UNAVAILABLE = f"no RabbitMQ answers on {HOST}:{PORT} (guest/guest): start rabbitmq-server"


#: The brokers a test parametrised over both runs on (``broker_env``)
BROKERS = ("redis", "amqp")


class RabbitMQUnavailable(RuntimeError):
    pass


def answers(timeout: float = 1.0) -> bool:
    """Whether an AMQP server accepts connections on 127.0.0.1:5672."""
    try:
        with socket.create_connection((HOST, PORT), timeout=timeout):
            return True
    except OSError:
        return False


def amqp_url(vhost: str) -> str:
    return f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{quote(vhost, safe='')}"


class Admin:
    """Creates and deletes vhosts: the management API if it answers, else rabbitmqctl."""

    def __init__(self) -> None:
        self.http: httpx.Client | None = httpx.Client(
            base_url=MANAGEMENT, auth=(USER, PASSWORD), timeout=10
        )
        try:
            self.http.get("/overview").raise_for_status()
        except httpx.HTTPError:
            self.http.close()
            self.http = None
        self.ctl = shutil.which("rabbitmqctl")
        if self.http is None and self.ctl is None:
            raise RabbitMQUnavailable(
                f"RabbitMQ answers on {HOST}:{PORT}, but neither its management API "
                f"({MANAGEMENT}) nor rabbitmqctl is available to create a vhost"
            )

    def _ctl(self, *args: str) -> None:
        assert self.ctl is not None
        result = subprocess.run(
            [self.ctl, *args], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise RabbitMQUnavailable(
                f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}"
            )

    def add_vhost(self, vhost: str) -> None:
        if self.http is not None:
            name = quote(vhost, safe="")
            self.http.put(f"/vhosts/{name}").raise_for_status()
            self.http.put(
                f"/permissions/{name}/{USER}",
                json={"configure": ".*", "write": ".*", "read": ".*"},
            ).raise_for_status()
            return
        self._ctl("add_vhost", vhost)
        self._ctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")

    def delete_vhost(self, vhost: str) -> None:
        if self.http is not None:
            self.http.delete(f"/vhosts/{quote(vhost, safe='')}")
            return
        self._ctl("delete_vhost", vhost)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()


@contextmanager
def private_vhost(admin: Admin, prefix: str = "parley-test") -> Iterator[str]:
    """A fresh vhost with ``guest`` granted on it; yields its ``amqp://`` URL and
    deletes it (queues, messages, bindings) after."""
    vhost = f"{prefix}-{uuid.uuid4().hex[:12]}"
    admin.add_vhost(vhost)
    try:
        yield amqp_url(vhost)
    finally:
        admin.delete_vhost(vhost)


def queue_depths(url: str, queues: list[str]) -> dict[str, tuple[int, int]]:
    """Each existing queue's (ready messages, consumers), by a passive declare."""
    from kombu import Connection

    found: dict[str, tuple[int, int]] = {}
    with Connection(url) as connection:
        for queue in queues:
            channel = connection.channel()
            try:
                _, ready, consumers = channel.queue_declare(queue, passive=True)
            except Exception:  # not declared (yet): passive declare closes the channel
                continue
            finally:
                with suppress(Exception):
                    channel.close()
            found[queue] = (ready, consumers)
    return found


@functools.cache
def shared_admin() -> Admin:
    """One ``Admin`` for the whole test run (skips the test where no RabbitMQ answers)."""
    if not answers():
        pytest.skip(UNAVAILABLE)
    return Admin()


def broker_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a test parametrised over ``BROKERS`` (``request.param``):
    nothing for Redis (the pipeline DB is the broker), ``PARLEY_BROKER_URL`` of a fresh
    vhost for ``amqp``, deleted after the test."""
    if request.param == "redis":
        return {}
    admin = shared_admin()
    vhost = f"parley-test-{uuid.uuid4().hex[:12]}"
    admin.add_vhost(vhost)
    request.addfinalizer(lambda: admin.delete_vhost(vhost))
    return {"PARLEY_BROKER_URL": amqp_url(vhost)}


def vhost_of(url: str) -> str:
    return unquote(urlsplit(url).path.removeprefix("/"))


def list_queues(url: str) -> dict[str, dict[str, Any]]:
    """Every queue of the URL's vhost, by name: its ``type``, ``durable``,
    ``messages_ready`` and ``messages_unacknowledged`` (rabbitmqctl: the management API
    is off on this machine; a second or so per call)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.skip("rabbitmqctl is not installed: cannot list a vhost's queues")
    columns = ["name", "type", "durable", "messages_ready", "messages_unacknowledged"]
    result = subprocess.run(
        [ctl, "list_queues", "-q", "--formatter", "json", "-p", vhost_of(url), *columns],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {queue["name"]: queue for queue in json.loads(result.stdout or "[]")}
