"""Project-level checks: lint, and the README's run command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from parley.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


CONVERSATION = """\
  15550001 > hi
  parley   < 🍕 What size pizza? (small/medium/large)
  15550002 > hello
  parley   < 🍕 What size pizza? (small/medium/large)
  15550003 > hey
  parley   < 🍕 What size pizza? (small/medium/large)
  15550001 > large
  parley   < 🧀 What toppings? (pepperoni/mushrooms/cheese)
"""


def demo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "parley", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
    )


def check_conversation(stdout: str, orders: int) -> None:
    assert CONVERSATION in stdout
    assert "  15550001 > yes\n  parley   < ✅ Order #" in stdout
    assert "  15550003 > no\n  parley   < ❌ Order cancelled." in stdout
    assert "12 webhooks accepted by the ingress, 12 replies sent" in stdout
    assert f"{orders} orders in the table cache" in stdout


def test_parley_demo_runs_the_whole_pipeline_with_no_service() -> None:
    """Nothing listens on the configured Redis: the demo must not need it."""
    result = demo(env={"PARLEY_REDIS_URL": "redis://127.0.0.1:1"})
    assert result.returncode == 0, result.stderr
    assert "on memory: no external service" in result.stdout
    check_conversation(result.stdout, orders=2)


def test_parley_demo_on_redis(redis_url: str, redis_server: RedisServer) -> None:
    result = demo("--redis", redis_url, env={})
    assert result.returncode == 0, result.stderr
    check_conversation(result.stdout, orders=2)
    pipeline = redis_server.client(3)
    assert pipeline.xlen("parley:log") == 12  # through the real ingress
    assert len(pipeline.keys("parley:done:*")) == 12  # and a real worker
