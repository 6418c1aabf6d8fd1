"""``parley ingress`` as an operator runs it: the real command in a subprocess on a free
port, the tests' redis-server, its output read as the operator reads it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from parley.asgi import prepare_processes
from parley.ingress.app import startup_warnings
from parley.testing import delivery, text_message
from tests.helpers import (
    PARTITIONS,
    ROOT,
    SECRET,
    make_settings,
    serve_on_free_port,
    sign,
    wait_for,
)

INSECURE = "WEBHOOK SIGNATURES ARE NOT CHECKED"
NO_VERIFY_TOKEN = "WHATSAPP_VERIFY_TOKEN is not set"


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run_ingress(log_path: Path, *options: str, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    """``parley ingress OPTIONS`` on loopback, once /healthz answers; with exactly this
    environment (and PATH: no WHATSAPP_* of the machine's)."""
    return serve_on_free_port(
        lambda port: [
            *(sys.executable, "-m", "parley", "ingress"),
            *("--host", "127.0.0.1", "--port", str(port), *options),
        ],
        healthy,
        log_path,
        env={"PATH": os.environ["PATH"], "PARLEY_PARTITIONS": str(PARTITIONS), **env},
        cwd=ROOT,
    )


def stop(process: subprocess.Popen[bytes]) -> bool:
    """SIGTERM; whether it stopped cleanly (one process: uvicorn re-raises the signal
    once it has shut down, to end as it was told)."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60) in (0, -signal.SIGTERM)


def lines_with(text: str, log: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


def test_insecure_mode_and_a_missing_verify_token_are_each_warned_once(
    redis_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "ingress.log"
    process, port = run_ingress(log_path, "--insecure-skip-signature", PARLEY_REDIS_URL=redis_url)
    try:
        body = orjson.dumps(delivery([text_message("51900000201", "hi")]))
        assert httpx.post(f"http://127.0.0.1:{port}/webhook", content=body).status_code == 200
    finally:
        assert stop(process)
    log = log_path.read_text()
    (insecure,) = lines_with(INSECURE, log)
    assert "WARNING" in insecure
    (missing,) = lines_with(NO_VERIFY_TOKEN, log)
    assert "WARNING" in missing and "403" in missing
    assert len(lines_with("delivery outcome=accepted status=200", log)) == 1
    assert "Traceback" not in log, log


def test_no_verify_token_warning_when_it_is_set(redis_url: str) -> None:
    assert startup_warnings(make_settings(redis_url)) == []
    unset = make_settings(redis_url, whatsapp_verify_token="")
    assert [w.split(":")[0] for w in startup_warnings(unset)] == [NO_VERIFY_TOKEN]


def accepted_total(port: int) -> tuple[float, float, float]:
    """One scrape of ``/metrics`` (a new connection: any worker process may answer):
    accepted deliveries, new envelopes, and ``parley_pipeline_up``."""
    page = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert page.status_code == 200, page.text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(page.text)
        for sample in family.samples
    }
    return (
        samples.get(("parley_deliveries_total", (("outcome", "accepted"), ("reason", ""))), 0),
        samples.get(("parley_envelopes_total", (("outcome", "new"),)), 0),
        samples[("parley_pipeline_up", ())],
    )


def test_two_worker_processes_scrape_as_one_sum(redis_url: str, tmp_path: Path) -> None:
    """Deliveries go to either process; every scrape, whichever process answers it,
    shows all of them. The counters' directory is the CLI's own, removed on exit."""
    log_path = tmp_path / "ingress.log"
    process, port = run_ingress(
        log_path, "--workers", "2", PARLEY_REDIS_URL=redis_url, WHATSAPP_APP_SECRET=SECRET
    )
    try:
        found = re.search(
            r"sums the counters of the 2 worker processes in (\S+)", log_path.read_text()
        )
        assert found, log_path.read_text()
        directory = Path(found.group(1))
        posted = 0

        def both_processes_answered() -> bool:
            """Post one more delivery (a new connection each); true once both worker
            processes have counted at least one."""
            nonlocal posted
            body = orjson.dumps(delivery([text_message(f"5190000{posted:04d}", "hi")]))
            answer = httpx.post(
                f"http://127.0.0.1:{port}/webhook", content=body, headers=sign(body)
            )
            assert answer.status_code == 200, answer.text
            posted += 1
            return len(list(directory.glob("counter_*.db"))) == 2

        wait_for(both_processes_answered, timeout=60, what="deliveries to both processes")
        for _ in range(8):
            assert accepted_total(port) == (posted, posted, 1)  # the pipeline's gauge once
    finally:
        assert stop(process)
    log = log_path.read_text()
    assert not directory.exists()  # made by the CLI: removed
    assert len(lines_with("delivery outcome=accepted status=200", log)) == posted
    assert len(lines_with(NO_VERIFY_TOKEN, log)) == 1  # not once per process
    assert "Traceback" not in log, log


def test_an_operators_multiprocess_dir_is_used_and_kept(tmp_path: Path) -> None:
    """``PROMETHEUS_MULTIPROC_DIR`` set by the operator is used as it is and never
    emptied; a missing one is refused."""
    theirs = tmp_path / "metrics"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("theirs")
    saved = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(theirs)
    try:
        clean_up = prepare_processes(2)
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(theirs)
        clean_up()
        assert (theirs / "keep.txt").read_text() == "theirs"
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(theirs)
    finally:
        if saved is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved
    result = subprocess.run(
        [sys.executable, "-m", "parley", "ingress", "--workers", "2", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "WHATSAPP_APP_SECRET": SECRET,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"),
        },
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "PROMETHEUS_MULTIPROC_DIR" in error and "not a directory" in error
