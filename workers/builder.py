"""``WappaBuilder``: the spec's way of putting an app together.

``build()`` gives a ``ParleyApp``; ``parley worker --app module:attr`` loads it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from parley.cache import CacheFactory, create_cache_factory
from parley.workers.handler import WappaEventHandler
from parley.workers.settings import Settings


@dataclass
class ParleyApp:
    handler: WappaEventHandler
    settings: Settings
    cache_backend: str = "redis"

    @cached_property
    def cache_factory(self) -> type[CacheFactory]:
        return create_cache_factory(self.cache_backend, self.settings)


class WappaBuilder:
    def __init__(self) -> None:
        self._overrides: dict[str, Any] = {}
        self._cache_backend = "redis"
        self._handler: WappaEventHandler | None = None

    def with_whatsapp(
        self,
        token: str | None = None,
        phone_id: str | None = None,
        app_secret: str | None = None,
        verify_token: str | None = None,
        business_id: str | None = None,
        api_base: str | None = None,
        api_version: str | None = None,
    ) -> Self:
        """Cloud API access; unset values come from ``WHATSAPP_*``. ``business_id`` is
        accepted for the spec's calls and not needed by Parley."""
        given = {
            "whatsapp_token": token,
            "whatsapp_phone_id": phone_id,
            "whatsapp_app_secret": app_secret,
            "whatsapp_verify_token": verify_token,
            "whatsapp_api_base": api_base,
            "whatsapp_api_version": api_version,
        }
        self._overrides.update({k: v for k, v in given.items() if v is not None})
        return self

    def with_memory_cache(self) -> Self:
        self._cache_backend = "memory"
        return self

    def with_json_cache(self, directory: str | Path | None = None) -> Self:
        self._cache_backend = "json"
        if directory is not None:
            self._overrides["json_cache_dir"] = Path(directory)
        return self

    def with_redis_cache(self, url: str | None = None) -> Self:
        self._cache_backend = "redis"
        if url is not None:
            self._overrides["redis_url"] = url
        return self

    def with_event_handler(self, handler: WappaEventHandler | type[WappaEventHandler]) -> Self:
        self._handler = handler() if isinstance(handler, type) else handler
        return self

    def with_settings(self, **overrides: Any) -> Self:
        """Any other setting by its field name, e.g. ``partitions=32``."""
        self._overrides.update(overrides)
        return self

    def build(self) -> ParleyApp:
        handler = self._handler or WappaEventHandler()
        if not isinstance(handler, WappaEventHandler):
            raise TypeError(f"the event handler must be a WappaEventHandler, got {handler!r}")
        return ParleyApp(handler, Settings(**self._overrides), self._cache_backend)


def load_app(path: str) -> ParleyApp:
    """``"parley.examples.pizza:app"`` → the ``ParleyApp`` there (or built by a callable there)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app takes MODULE:ATTR, got {path!r}")
    target = getattr(importlib.import_module(module_name), attr)
    if callable(target) and not isinstance(target, ParleyApp):
        target = target()
    if not isinstance(target, ParleyApp):
        raise TypeError(
            f"{path} is {type(target).__name__}, not a ParleyApp (WappaBuilder().build())"
        )
    return target
