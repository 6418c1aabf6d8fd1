"""The ``parley`` command as an operator meets it: run from their own folder, one
``Error:`` line for a mistake, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley import __version__
from parley.testing import free_port

MYAPP = """\
from parley import WappaBuilder, WappaEventHandler


class Echo(WappaEventHandler):
    async def handle_message(self, webhook):
        count = await self.user_cache.increment_field("profile", "message_count")
        await self.messenger.send_text(
            f"#{count}: {webhook.get_message_text()}", webhook.user.user_id
        )


app = WappaBuilder().with_redis_cache().with_event_handler(Echo()).build()
"""


def parley(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run(
        [sys.executable, "-m", "parley", *args],
        cwd=cwd,
        env={**inherited, "PARLEY_REDIS_URL": f"redis://127.0.0.1:{free_port()}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user's own folder holding their app, away from this checkout."""
    (tmp_path / "myapp.py").write_text(MYAPP)
    return tmp_path


def test_the_app_is_found_from_the_current_folder(folder: Path) -> None:
    # the module imports (an attribute error, not ModuleNotFoundError) from its folder
    one_error(parley("worker", "--app", "myapp:nope", cwd=folder), 2, "myapp", "'nope'")


def test_parley_app_names_the_app(folder: Path) -> None:
    one_error(parley("worker", cwd=folder, PARLEY_APP="myapp:nope"), 2, "'nope'")


@pytest.mark.parametrize(
    ("app", "words"),
    [
        ("nosuchmod:app", ("cannot import nosuchmod",)),
        ("parley.examples.pizza:nope", ("no attribute 'nope'",)),
        ("parley.examples.pizza", ("MODULE:ATTR",)),
        ("parley.examples.pizza:SIZES", ("not a ParleyApp",)),
    ],
)
def test_a_bad_app_is_one_line(folder: Path, app: str, words: tuple[str, ...]) -> None:
    one_error(parley("worker", "--app", app, cwd=folder), 2, *words)


def test_version_and_short_help(folder: Path) -> None:
    version = parley("--version", cwd=folder)
    assert version.returncode == 0 and version.stdout.strip() == f"parley, version {__version__}"
    short = parley("worker", "-h", cwd=folder)
    assert short.returncode == 0 and "PARLEY_APP" in short.stdout


@pytest.mark.parametrize("command", [("status",), ("dead", "list"), ("replay", "--dry-run")])
def test_redis_down_is_one_line(folder: Path, command: tuple[str, ...]) -> None:
    port = free_port()  # nothing listens there
    result = parley(*command, cwd=folder, PARLEY_REDIS_URL=f"redis://127.0.0.1:{port}")
    one_error(result, 1, f"pipeline Redis at redis://127.0.0.1:{port}/3")


def test_a_bad_redis_url_is_one_line(folder: Path) -> None:
    one_error(parley("status", cwd=folder, PARLEY_REDIS_URL="notaurl"), 2, "redis_url")


def test_an_unknown_dead_letter_id_is_one_line(folder: Path) -> None:
    one_error(parley("dead", "show", "nope", cwd=folder), 2, "no dead letter nope")
