"""The package type-checks: mypy with the configuration in pyproject.toml (every layer,
the pydantic plugin)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT


def test_mypy_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, "mypy failed:\n" + result.stdout + result.stderr
    assert "no issues found in" in result.stdout
