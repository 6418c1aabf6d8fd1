"""``WappaBuilder``: the spec's way of putting an app together.

``build()`` gives a ``ParleyApp``; ``parley worker --app module:attr`` loads it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Self

from parley.cache import CacheFactory, create_cache_factory
from parley.cache.redis import redact
from parley.cache.settings import DEFAULT_DB, REDIS_SCHEMES, base_url_problem, with_db
from parley.workers.handler import WappaEventHandler
from parley.workers.settings import Settings

#: What stands in for a value in snippets and tutorials: it never overrides a real one
PLACEHOLDER = re.compile(r"\s*(\.\.\.|…|<[^<>]*>|\{[^{}]*\}|)\s*")


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
        """Cloud API access. A value given here overrides its ``WHATSAPP_*`` variable;
        one left out, or a placeholder (``"..."``, ``""``, ``"<token>"``, as in the
        spec's snippets), leaves the environment's in force. ``business_id`` is
        accepted for the spec's calls and not needed by Parley."""
        given = {
            "whatsapp_token": token,
            "whatsapp_phone_id": phone_id,
            "whatsapp_app_secret": app_secret,
            "whatsapp_verify_token": verify_token,
            "whatsapp_api_base": api_base,
            "whatsapp_api_version": api_version,
        }
        self._overrides.update(
            {k: v for k, v in given.items() if v is not None and not PLACEHOLDER.fullmatch(v)}
        )
        return self

    def with_memory_cache(self) -> Self:
        self._cache_backend = "memory"
        return self

    def with_json_cache(self, directory: str | Path | None = None) -> Self:
        self._cache_backend = "json"
        if directory is not None:
            self._overrides["json_cache_dir"] = Path(directory)
        return self

    def with_redis_cache(self, url: str | None = None, *, pipeline: bool = False) -> Self:
        """The caches on Redis: on ``url`` (DBs 0, 1, 2 there) when given, else where
        the environment says. Only the caches move: the broker and the pipeline stay
        on ``PARLEY_REDIS_URL`` (or their own variables), which the ingress reads too,
        unless ``pipeline=True`` moves them to ``url`` (DB 3) as well, for a worker and
        an ingress that both say so."""
        self._cache_backend = "redis"
        if url is None:
            return self
        if not url.startswith(REDIS_SCHEMES) or (problem := base_url_problem(url)):
            problem = "is not a Redis URL" if not url.startswith(REDIS_SCHEMES) else problem
            raise AppError(f"with_redis_cache({redact(url)!r}) {problem}")
        for kind, db in DEFAULT_DB.items():
            self._overrides[f"{kind}_cache_url"] = with_db(url, db)
        if pipeline:
            self._overrides["redis_url"] = url
            self._overrides["broker_url"] = self._overrides["pipeline_url"] = None
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


class AppError(ValueError):
    """``--app`` names nothing loadable: the message says what to fix."""


def load_app(path: str) -> ParleyApp:
    """``"myapp:app"`` → the ``ParleyApp`` there (or built by a callable there). The
    module is looked for from the current folder first, as uvicorn and celery do."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise AppError(f"--app takes MODULE:ATTR (e.g. myapp:app), got {path!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except AppError:  # the app's builder found a mistake: its message says which
        raise
    except ModuleNotFoundError as exc:
        where = "" if exc.name != module_name else f" (looked in {os.getcwd()} and sys.path)"
        raise AppError(f"--app {path}: cannot import {module_name}: {exc}{where}") from exc
    try:
        target = getattr(module, attr)
    except AttributeError:
        raise AppError(f"--app {path}: module {module_name} has no attribute {attr!r}") from None
    if callable(target) and not isinstance(target, ParleyApp):
        target = target()
    if not isinstance(target, ParleyApp):
        raise AppError(
            f"--app {path} is a {type(target).__name__}, not a ParleyApp "
            "(give the result of WappaBuilder()...build())"
        )
    return target
