"""Partitioning, settings and the builder: the parts with no process to start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from parley import ParleyApp, WappaBuilder, WappaEventHandler
from parley.wire.keys import queue_name
from parley.wire.partition import parse_partitions, partition_for
from parley.workers.builder import AppError, load_app
from parley.workers.settings import Settings


def test_partition_is_stable_across_processes() -> None:
    here = [partition_for("106540352242922", f"5190000{n:04d}", 16) for n in range(50)]
    code = (
        "from parley.wire.partition import partition_for;"
        "print([partition_for('106540352242922', f'5190000{n:04d}', 16) for n in range(50)])"
    )
    there = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert str(here) == there.strip()
    assert len(set(here)) > 8  # spread over the partitions
    assert partition_for("t", "user", 16) == partition_for("t", "user", 16)
    assert partition_for("a:b", "c", 1024) != partition_for("a", "b:c", 1024)
    assert queue_name(3) == "parley.p3"


def test_parse_partitions() -> None:
    assert parse_partitions("0-3,7, 5", 8) == [0, 1, 2, 3, 5, 7]
    for bad in ("8", "3-1", "x", "", "0-8"):
        with pytest.raises(ValueError):
            parse_partitions(bad, 8)


def test_settings_nest_timeouts() -> None:
    with pytest.raises(ValueError, match="HANDLER_TIMEOUT"):
        Settings(handler_timeout=4000, visibility_timeout=3600)
    settings = Settings(redis_url="redis://cache:6380")
    assert settings.broker == "redis://cache:6380/3" == settings.pipeline
    assert settings.url_for("state") == "redis://cache:6380/1"


def test_builder_as_in_the_spec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    memory = (
        WappaBuilder()
        .with_whatsapp(token="...", phone_id="...", business_id="...")
        .with_memory_cache()
        .build()
    )
    json_app = (
        WappaBuilder()
        .with_whatsapp(token="...", phone_id="...", business_id="...")
        .with_json_cache(tmp_path)
        .build()
    )
    redis_app = (
        WappaBuilder()
        .with_whatsapp(token="t", phone_id="p", app_secret="s", verify_token="v")
        .with_redis_cache("redis://localhost:6390")
        .with_event_handler(WappaEventHandler)
        .build()
    )
    assert isinstance(memory, ParleyApp) and memory.cache_factory.backend == "memory"
    assert json_app.cache_factory.backend == "json"
    assert json_app.settings.json_cache_dir == tmp_path
    assert redis_app.settings.whatsapp_app_secret.get_secret_value() == "s"
    assert redis_app.cache_factory.settings.url_for("user") == "redis://localhost:6390/0"
    assert isinstance(redis_app.handler, WappaEventHandler)


def test_code_overrides_the_environment_only_where_it_gives_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WHATSAPP_TOKEN", "token-from-the-environment")
    monkeypatch.setenv("WHATSAPP_PHONE_ID", "1065")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://pipeline-host:6379")
    app = (
        WappaBuilder()
        .with_whatsapp(token="...", phone_id="", app_secret="<app secret>", verify_token="v" * 16)
        .with_redis_cache("redis://cache-host:6379")
        .build()
    )
    settings = app.settings
    assert settings.whatsapp_token.get_secret_value() == "token-from-the-environment"
    assert settings.whatsapp_phone_id == "1065"
    assert settings.whatsapp_app_secret.get_secret_value() == ""  # neither gave one
    assert settings.whatsapp_verify_token.get_secret_value() == "v" * 16
    # the caches moved; the broker and the pipeline, which the ingress shares, did not
    assert [settings.url_for(k) for k in ("user", "state", "table")] == [
        "redis://cache-host:6379/0",
        "redis://cache-host:6379/1",
        "redis://cache-host:6379/2",
    ]
    assert settings.pipeline == settings.broker == "redis://pipeline-host:6379/3"
    moved = WappaBuilder().with_redis_cache("redis://cache-host:6379", pipeline=True).build()
    assert moved.settings.pipeline == moved.settings.broker == "redis://cache-host:6379/3"


def test_a_db_number_in_the_base_url_is_refused_not_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(AppError, match=r"names DB 12.*remove the DB number"):
        WappaBuilder().with_redis_cache("redis://h:6379/12")
    with pytest.raises(AppError, match="is not a Redis URL"):
        WappaBuilder().with_redis_cache("localhost:6379")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://h:6379/12")
    with pytest.raises(ValueError, match=r"(?s)redis_url.*names DB 12.*PARLEY_PIPELINE_URL"):
        Settings()
    for kind in ("USER_CACHE", "PIPELINE"):  # a URL of one DB keeps its number
        monkeypatch.setenv(f"PARLEY_{kind}_URL", "redis://h:6379/12")
    monkeypatch.setenv("PARLEY_REDIS_URL", "redis://h:6379")
    settings = Settings()
    assert settings.url_for("user") == settings.pipeline == "redis://h:6379/12"


def test_settings_read_the_current_folders_env_file_under_the_environment(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text(
        "# a comment\nPARLEY_PARTITIONS=8\nWHATSAPP_PHONE_ID=1065\nPARLEY_CONCURRENCY=3\n"
        "UNRELATED=1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PARLEY_CONCURRENCY", "5")
    settings = Settings()
    assert (settings.partitions, settings.whatsapp_phone_id) == (8, "1065")
    assert settings.concurrency == 5  # the environment wins over .env


def test_load_app_errors() -> None:
    assert isinstance(load_app("parley.examples.pizza:app"), ParleyApp)
    with pytest.raises(ValueError, match="MODULE:ATTR"):
        load_app("parley.examples.pizza")
    with pytest.raises(AppError, match="not a ParleyApp"):
        load_app("parley.examples.pizza:SIZES")
    with pytest.raises(AppError, match="no attribute 'nope'"):
        load_app("parley.examples.pizza:nope")
    with pytest.raises(AppError, match="cannot import nosuchmod"):
        load_app("nosuchmod:app")


def test_calls_check_the_fence_before_every_call_and_retry_only_what_is_safe() -> None:
    import asyncio

    from parley.cache import CacheUnavailableError
    from parley.workers.calls import Calls, LeaseLost, TransientFailure

    ran: list[str] = []
    held = True

    def fence() -> None:
        if not held:
            raise LeaseLost("partition 3: lease ran out")

    async def op(name: str, fail: int = 0, safe: bool = True) -> str:
        ran.append(name)
        if ran.count(name) <= fail:
            raise CacheUnavailableError(f"{name} failed", retry_safe=safe)
        return name

    async def scenario() -> None:
        nonlocal held
        calls = Calls(deadline=5, backoff=0.001, fence=fence)
        assert await calls.call("a", lambda: op("a", fail=2)) == "a"  # retried twice
        with pytest.raises(CacheUnavailableError):  # not retry-safe: raised at once
            await calls.call("b", lambda: op("b", fail=1, safe=False))
        held = False
        with pytest.raises(LeaseLost):  # a BaseException: `except Exception` can't eat it
            try:
                await calls.call("c", lambda: op("c"))
            except Exception:
                pytest.fail("LeaseLost was caught as an Exception")
        brief = Calls(deadline=0.05, backoff=0.001)
        with pytest.raises(TransientFailure, match="PARLEY_TRANSIENT_DEADLINE"):
            await brief.call("d", lambda: op("d", fail=10**6))

    asyncio.run(scenario())
    assert ran[:4] == ["a", "a", "a", "b"] and "c" not in ran
