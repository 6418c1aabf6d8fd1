"""One import namespace, layers that import only downward, nothing done at import.

Each check runs in a fresh interpreter, so what one import loads cannot hide behind
what the test process loaded before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import orjson

from parley.testing import PHONE_ID, FakeGraphAPI, RedisServer, envelope
from parley.workers.celery import create_celery, publish
from parley.workers.settings import Settings
from tests.helpers import ROOT, wait_for
from tests.worker_process import WorkerProcess

HEAVY = ("celery", "kombu", "httpx", "fastapi", "uvicorn", "flower")


def loaded_after(code: str, cwd: Path = ROOT, **env: str) -> list[str]:
    """The top-level packages among HEAVY that ``code`` leaves in ``sys.modules``."""
    probe = code + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
    """)
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_the_public_api_loads_no_celery_kombu_or_http() -> None:
    code = textwrap.dedent("""
        from parley import WappaEventHandler, WappaBuilder, Webhook
        from parley.cache import ICache, KeyFactory, create_cache_factory, CacheError
        from parley.cache.redis import RedisCacheFactory
        from parley.cache.json_files import JSONCacheFactory
        from parley.cache.memory import MemoryCacheFactory
    """)
    assert loaded_after(code) == []


def test_the_wire_and_the_ingress_load_no_celery() -> None:
    code = textwrap.dedent("""
        import parley.wire.envelope, parley.wire.keys, parley.wire.messages
        import parley.wire.partition
        import parley.ingress.app, parley.ingress.accept
    """)
    assert set(loaded_after(code)) <= {"fastapi"}  # the ingress is an ASGI app


def test_nothing_reads_settings_at_import() -> None:
    """An invalid setting in the environment breaks only what builds settings."""
    code = textwrap.dedent("""
        import parley.cli, parley.asgi, parley.demo, parley.replay, parley.status
        import parley.workers.celery, parley.workers.runtime, parley.workers.ownership
        import parley.wire.partition
    """)
    loaded_after(code, PARLEY_HANDLER_TIMEOUT="5000", PARLEY_PARTITIONS="not-a-number")


def test_celery_finds_the_app_the_readme_names() -> None:
    """``celery -A parley.workers`` (Flower) gets an app built from the environment."""
    code = textwrap.dedent("""
        from celery.app.utils import find_app
        app = find_app("parley.workers")
        assert app.conf.broker_url == "redis://127.0.0.1:1/3", app.conf.broker_url
        assert app.conf.accept_content == ["json"]
    """)
    assert "celery" in loaded_after(code, PARLEY_REDIS_URL="redis://127.0.0.1:1")


APP_FOLDER = {
    # an app's own modules with the generic names Parley once used for its packages
    "cache.py": "def remember(value: str) -> str:\n    return f'remembered {value}'\n",
    "workers.py": "COUNT = 3\n",
    "ingress.py": "raise ImportError('the app folder ingress.py must never be imported')\n",
    "myapp.py": textwrap.dedent("""
        from cache import remember
        from workers import COUNT

        from parley import WappaBuilder, WappaEventHandler, Webhook


        class Echo(WappaEventHandler):
            async def handle_message(self, webhook: Webhook) -> None:
                text = remember(webhook.get_message_text()) + f" x{COUNT}"
                await self.user_cache.set_field("profile", "last", text)
                await self.messenger.send_text(text, webhook.user.user_id)


        app = WappaBuilder().with_redis_cache().with_event_handler(Echo).build()
    """),
}


def test_an_app_folder_with_its_own_cache_workers_and_ingress_modules(
    redis_url: str, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    folder = tmp_path / "myproject"
    folder.mkdir()
    for name, text in APP_FOLDER.items():
        (folder / name).write_text(text)
    env = {
        "PARLEY_REDIS_URL": redis_url,
        "PARLEY_PARTITIONS": "4",
        "WHATSAPP_TOKEN": "test-token",
        "WHATSAPP_API_BASE": graph.url,
        "PYTHONPATH": str(folder),
    }
    worker = WorkerProcess("myapp:app", "all", env, tmp_path, "own-modules", cwd=folder)
    try:
        worker.wait_ready()
        publish(create_celery(Settings(redis_url=redis_url)), envelope("5191234", "hi"), 4)
        (sent,) = graph.wait_for(1, timeout=30)
        assert sent.text == "remembered hi x3" and sent.to == "5191234"
        users = redis_server.client(0)
        last = wait_for(lambda: users.hget(f"{PHONE_ID}:user:5191234", "last"), what="a write")
        assert orjson.loads(last) == "remembered hi x3"
    finally:
        worker.stop()


def test_the_wheel_holds_one_namespace_and_its_scripts(tmp_path: Path) -> None:
    """A wheel install (not only the editable one the tests run on) has every package
    under ``parley/`` with its Lua scripts, and nothing at the top level but it."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("parley-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("-info")}
    assert top == {"parley"}, top
    for needed in (
        "parley/__init__.py",
        "parley/py.typed",
        "parley/cache/redis.py",
        "parley/cache/scripts/_ttl.lua",
        "parley/cache/scripts/set.lua",
        "parley/wire/messages.py",
        "parley/workers/scripts/begin.lua",
        "parley/workers/scripts/restore_unacked.lua",
        "parley/ingress/scripts/accept.lua",
        "parley/examples/pizza.py",
        "parley/testing/graph.py",
    ):
        assert needed in names, needed

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what pip puts in site-packages
    code = textwrap.dedent("""
        import parley.cache, parley.workers.pipeline
        from parley.cache.lua import lua
        assert parley.cache.__file__.startswith(SITE), parley.cache.__file__
        for package, name in [("parley.cache", "set"), ("parley.workers", "begin"),
                              ("parley.ingress", "accept")]:
            assert "redis.call" in lua(package, name), (package, name)
        print("ok")
    """).replace("SITE", repr(str(site)))
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
