"""Nothing accepted is lost: a steady stream through the real ingress while worker nodes
are SIGKILLed over and over (the tests' own redis-server, real ``parley worker``
processes, signed HTTP deliveries)."""

from __future__ import annotations

import itertools
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from parley.testing import FakeGraphAPI, RedisServer
from parley.wire.keys import RECOVERED
from tests.helpers import RECONCILING, Pipeline, post_steadily, wait_for
from tests.test_ownership import chaos_runs

KILLS = 20
USERS = [f"5199{n:06d}" for n in range(100)]
RATE = 50  # webhooks per second


def test_twenty_sigkills_under_a_steady_stream_lose_nothing(
    ingress: httpx.Client, redis_server: RedisServer, tmp_path: Path, graph: FakeGraphAPI
) -> None:
    messages = [(user, seq) for seq in range(25) for user in USERS]  # 2,500: ~50 s
    pipeline = Pipeline(
        redis_server,
        tmp_path,
        graph,
        **RECONCILING,
    )
    names = (f"n{n}" for n in itertools.count())
    stop = threading.Event()
    try:
        for _ in range(3):
            pipeline.start_worker("tests.apps:chaos", "auto", next(names))
        publisher = post_steadily(ingress, messages, RATE, stop)
        pause = random.Random(7)
        for _ in range(KILLS):  # a node dies and a new one joins, every second or two
            alive = [w for w in pipeline.workers if w.process.poll() is None]
            random.choice(alive).kill()
            pipeline.start_worker("tests.apps:chaos", "auto", next(names))
            time.sleep(pause.uniform(0.2, 1.0))  # pacing the kills, not synchronisation
        publisher.join(timeout=120)
        assert not publisher.is_alive()
        done = redis_server.client(3)
        wait_for(
            lambda: sum(1 for _ in done.scan_iter("parley:done:*", count=1000)) == len(messages),
            timeout=180,
            what="every accepted webhook done (the lost ones after the reconciler's grace)",
        )
        logs = "".join(worker.log() for worker in pipeline.workers)
    finally:
        stop.set()
        pipeline.close()

    runs = chaos_runs(redis_server, USERS)
    recovered = set(re.findall(r"recovered .*message=wamid\.(\d+)\.(\d+)", logs))
    assert int(redis_server.client(3).get(RECOVERED) or 0) == len(recovered)
    recovered_runs = {(user, int(seq)) for user, seq in recovered}
    for user in USERS:
        seqs = [run[0] for run in runs[user]]
        assert set(seqs) == set(range(25)), user  # every one ran
        in_order = [seq for seq in seqs if (user, seq) not in recovered_runs]
        deduped = [seq for seq, _ in itertools.groupby(in_order)]  # a re-run follows its run
        assert deduped == sorted(set(deduped)), (user, seqs)
    repeats = sum(
        count - 1 for user in USERS for count in Counter(r[0] for r in runs[user]).values()
    )
    print(  # the note quotes these
        f"{KILLS} SIGKILLs, {len(messages)} webhooks: none lost, "
        f"{len(recovered)} recovered by the reconciler, {repeats} re-runs"
    )
