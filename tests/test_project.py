"""Project-level checks: lint, and the README's run command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency"
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parley_demo_runs_with_no_service() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PARLEY_REDIS_URL": "redis://127.0.0.1:1"},
    )
    assert result.returncode == 0, result.stderr
    assert "15550001 > large" in result.stdout
    assert "✅ Order #1 confirmed: $17.99" in result.stdout
    assert "❌ Order cancelled." in result.stdout and "2 orders stored" in result.stdout
