"""Parley: conversational WhatsApp apps on partitioned, ordered Celery workers.

What app code imports::

    from parley import WappaEventHandler, WappaBuilder, Webhook
    from parley.cache import ICache, KeyFactory, create_cache_factory, CacheError

The names below are loaded on first use, so that importing any part of Parley
(``parley.wire.partition``, say) costs only that part: ``import parley`` itself
loads nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from parley.cache.results import WriteOutcome, WriteResult
    from parley.workers.builder import ParleyApp, WappaBuilder
    from parley.workers.handler import WappaEventHandler
    from parley.workers.webhook import Webhook

__version__ = "0.4.0"

_PUBLIC = {
    "ParleyApp": "parley.workers.builder",
    "WappaBuilder": "parley.workers.builder",
    "WappaEventHandler": "parley.workers.handler",
    "Webhook": "parley.workers.webhook",
    "WriteOutcome": "parley.cache.results",
    "WriteResult": "parley.cache.results",
}
__all__ = [
    "ParleyApp",
    "WappaBuilder",
    "WappaEventHandler",
    "Webhook",
    "WriteOutcome",
    "WriteResult",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'parley' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
