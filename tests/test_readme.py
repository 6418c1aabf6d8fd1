"""The README, as a new user meets it: its first app and its commands, run as pasted
from the user's own folder (a temporary one holding ``myapp.py``, away from this
checkout), and every command line of it parsed by the program it names."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from parley.testing import FakeGraphAPI, RedisServer, free_port
from tests.helpers import ROOT, TOKEN, parse_parley, wait_for

README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
#: The first user's number in the README's try-it block (`--from`)
SENDER = "15551234567"


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split on ``&&``, ``||``, ``|``, ``;``
    and ``&``, comments dropped, leading ``VAR=value`` assignments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found: list[list[str]] = [[]]
    for token in lexer:
        if set(token) <= set(";&|"):
            found.append([])
        else:
            found[-1].append(token)
    stripped = []
    for words in found:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        if words:
            stripped.append(words)
    return stripped


def lines() -> list[str]:
    return [line for block in sh_blocks() for line in block.splitlines() if line.strip()]


@pytest.mark.parametrize("line", lines())
def test_every_readme_command_line_is_a_command_that_parses(line: str) -> None:
    """``parley …`` by the real CLI's parser; ``python -m M`` finds M (from a clone, as
    the README says for bench/ and tests/); anything else is a program on PATH."""
    if line.lstrip().startswith("#"):
        return  # a comment continuing the line above
    for program in re.findall(r"\$\((\w[\w.-]*)", line):  # $(openssl rand -hex 16)
        assert shutil.which(program), f"{program} is not installed: {line}"
    line = re.sub(r"\$\([^)]*\)", "VALUE", line)
    for words in commands(line):
        if words[0] == "export":
            assert all(re.fullmatch(r"[A-Z_]+=\S+", w) for w in words[1:]), line
        elif words[0] == "parley":
            parse_parley(words)
        elif words[0] == "python":
            if words[1:2] == ["-m"]:
                assert importlib.util.find_spec(words[2]) is not None, line
        else:
            assert shutil.which(words[0]) or (BIN / words[0]).exists(), line


def test_the_readme_commands_split_as_a_shell_splits_them() -> None:
    assert commands("A=1 B=2 parley ingress --port 8000 &") == [
        ["parley", "ingress", "--port", "8000"]
    ]
    assert commands("cp a b && honcho start  # or: honcho start web") == [
        ["cp", "a", "b"],
        ["honcho", "start"],
    ]
    assert len(commands("parley dead list | parley dead show ID")) == 2  # a pipeline


def test_the_readme_has_no_pipeline_of_parley_commands() -> None:
    """``parley dead list | parley dead show ID`` pastes as a pipeline (it once dropped
    every dead letter): one command per line."""
    for line in lines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars="|")
        lexer.commenters = "#"
        assert "|" not in list(lexer), line


def readme_app() -> str:
    (app,) = re.findall(r"```python\n(# myapp\.py\n.*?)```", README, re.S)
    return app


def test_the_readmes_first_app_is_the_one_compose_mounts() -> None:
    assert (ROOT / "app" / "myapp.py").read_text() == readme_app()


@pytest.mark.timeout(180)
def test_the_first_hour_as_pasted_from_the_users_folder(
    tmp_path: Path, graph: FakeGraphAPI
) -> None:
    """The README's Echo saved as ``myapp.py`` in the user's folder, and the README's
    try-it block run there line by line with bash: the ingress and the worker in the
    background, a signed webhook, and the Echo's reply at the (fake) Graph API. The
    machine provides what the README leaves to it: a Redis (a throwaway one here, on a
    free port), the Graph API token, and port 8000 (a free port here)."""
    (block,) = [b for b in sh_blocks() if "parley send-webhook" in b]
    folder = tmp_path / "myproject"
    folder.mkdir()
    (folder / "myapp.py").write_text(readme_app())
    server = RedisServer().start()
    port = str(free_port())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "WHATSAPP_"))},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PARLEY_REDIS_URL": server.url,
        "WHATSAPP_TOKEN": TOKEN,
        "WHATSAPP_API_BASE": graph.url,
    }
    background: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for number, line in enumerate(block.splitlines()):
            line = line.replace("8000", port)
            if line.startswith("export "):  # what bash exports, into the next lines' env
                shown = subprocess.run(
                    ["bash", "-c", f"{line}; env -0"], env=env, capture_output=True, check=True
                ).stdout.decode()
                env = dict(item.split("=", 1) for item in shown.split("\0") if "=" in item)
            elif line.rstrip().endswith("&"):
                logs.append(tmp_path / f"line{number}.log")
                with logs[-1].open("wb") as log:
                    background.append(
                        subprocess.Popen(
                            ["bash", "-c", "exec " + line.rstrip().rstrip("&")],
                            cwd=folder,
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        )
                    )
            else:  # the foreground line: once both are up, as a user would wait
                wait_for(
                    lambda: (
                        all(p.poll() is None for p in background)
                        and "holding 16 of 16 partitions" in logs[1].read_text()
                        and "Uvicorn running" in logs[0].read_text()
                    ),
                    what="the ingress and the worker:\n"
                    + "\n".join(log.read_text()[-2000:] for log in logs),
                )
                sent = subprocess.run(
                    ["bash", "-c", line], cwd=folder, env=env, capture_output=True, text=True
                )
                assert sent.returncode == 0, sent.stdout + sent.stderr
                assert "accepted" in sent.stdout
        wait_for(
            lambda: [m.text for m in graph.sent if m.to == SENDER] == ["#1: hello"],
            what="the Echo's reply:\n" + "\n".join(log.read_text()[-2000:] for log in logs),
        )
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
        for process in background:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()
