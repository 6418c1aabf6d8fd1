"""Stand-ins for what a Parley deployment talks to, shared by ``parley demo``, the
tests and the benchmarks: Meta's Graph API as a real HTTP server on loopback,
deliveries shaped and signed as Meta sends them, and a throwaway ``redis-server``."""

from __future__ import annotations

from parley.testing.deliveries import PHONE_ID, delivery, envelope, sign, text_message
from parley.testing.graph import FakeGraphAPI, SentMessage
from parley.testing.redis_server import RedisServer, free_port

__all__ = [
    "PHONE_ID",
    "FakeGraphAPI",
    "RedisServer",
    "SentMessage",
    "delivery",
    "envelope",
    "free_port",
    "sign",
    "text_message",
]
