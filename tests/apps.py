"""Apps the worker tests load with ``parley worker --app tests.apps:NAME``.

They record what they did in the caches (atomically), so a test can prove order,
exactly-once and who ran what, from outside the worker processes.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

from parley import WappaBuilder, WappaEventHandler, Webhook
from parley.wire.partition import partition_for


class RecordingHandler(WappaEventHandler):
    """Messages are ``"<seq>"`` or ``"<seq> <command>"``; each run appends
    ``[seq, node, partition-less start, end]`` to the user's ``runs`` list."""

    async def handle_message(self, webhook: Webhook) -> None:
        seq_text, _, command = webhook.get_message_text().partition(" ")
        seq = int(seq_text)
        started = time.time()
        if command == "fail":
            raise RuntimeError(f"handler bug on message {seq}")
        if command == "block":  # announce, then wait for the test to release us
            await self.table_cache.set_field("control", "started", seq)
            while not await self.table_cache.get_field("control", "release"):
                await asyncio.sleep(0.02)
        if command == "slow":  # one slow user: an LLM call
            await asyncio.sleep(5)
        if command == "blocking":  # sync code on the loop: the watchdog must name this line
            time.sleep(0.6)
        if command == "flaky-cache":  # one cache write that the test makes fail for a while
            await self.table_cache.set_field("control", "flaky_reached", seq)
        await self.state_cache.append_to_list("seen", "seqs", seq)
        await self.table_cache.append_to_list(
            "runs", "log", [webhook.user.user_id, seq, os.getpid(), started, time.time()]
        )


recording = WappaBuilder().with_redis_cache().with_event_handler(RecordingHandler()).build()


class Echo(WappaEventHandler):
    """The README's first app, as written there: a counter, then a reply."""

    async def handle_message(self, webhook: Webhook) -> None:
        count = await self.user_cache.increment_field("profile", "message_count")
        await self.messenger.send_text(
            f"#{count}: {webhook.get_message_text()}", webhook.user.user_id
        )


echo = WappaBuilder().with_redis_cache().with_event_handler(Echo()).build()


class LedgerHandler(WappaEventHandler):
    """Deterministic: the caches end up the same whenever the same webhooks replay in
    the same order."""

    async def handle_message(self, webhook: Webhook) -> None:
        text = webhook.get_message_text()
        count = await self.user_cache.increment_field("profile", "messages")
        await self.user_cache.set_field("profile", "last", text)
        await self.state_cache.append_to_list("ledger", "texts", text)
        await self.table_cache.increment_field("totals", "messages")
        await self.table_cache.set("last_by_user", webhook.user.user_id, {"n": count})


ledger = WappaBuilder().with_redis_cache().with_event_handler(LedgerHandler()).build()


class PoisonHandler(WappaEventHandler):
    """Fails on "poison …" until the table flag ``fixed`` is set, and always on "always …"."""

    async def handle_message(self, webhook: Webhook) -> None:
        text = webhook.get_message_text()
        fixed = await self.table_cache.get_field("control", "fixed")
        if text.startswith("always") or (text.startswith("poison") and not fixed):
            raise ValueError(f"cannot digest {webhook.message_id}")
        await self.state_cache.append_to_list("seen", "texts", text)


poison = WappaBuilder().with_redis_cache().with_event_handler(PoisonHandler()).build()


class ChaosHandler(WappaEventHandler):
    """Each run appends ``[seq, worker pid, partition, start, end]`` to the user's state
    in ONE atomic operation, after 5-50 ms of waiting (as on the network), so a node has
    many users in flight: overlapping runs of one partition on two nodes would show up as
    overlapping intervals."""

    async def handle_message(self, webhook: Webhook) -> None:
        started = time.time()
        await asyncio.sleep(random.uniform(0.005, 0.05))
        partition = partition_for(
            webhook.tenant_id, webhook.user.user_id, chaos.settings.partitions
        )
        await self.state_cache.append_to_list(
            "chaos",
            "runs",
            [int(webhook.get_message_text()), os.getpid(), partition, started, time.time()],
        )


chaos = WappaBuilder().with_redis_cache().with_event_handler(ChaosHandler()).build()


class TimerHandler(WappaEventHandler):
    """Messages: ``"schedule <action> <key> <seconds>"``, ``"cancel <action> <key>"`` or
    ``"<seq>"``. Every message and every timer run appends one event to the user's
    ``events`` list (one atomic operation): ``["message", text]`` or ``["timer",
    action, key, due_at, nonce, pid]``, so the user's order and each firing show."""

    async def handle_message(self, webhook: Webhook) -> None:
        text = webhook.get_message_text()
        command, *args = text.split()
        if command == "schedule":
            action, key, seconds = args
            await self.schedule(action, after=float(seconds), key=key, data={"text": text})
        elif command == "cancel":
            await self.cancel(args[0], key=args[1])
        elif command == "sleep":  # a slow handler (an LLM call): the lane waits for it
            await asyncio.sleep(float(args[0]))
        await self.state_cache.append_to_list("events", "list", ["message", text])

    async def handle_timer(self, webhook: Webhook) -> None:
        timer = webhook.timer
        assert timer is not None
        await self.state_cache.append_to_list(
            "events",
            "list",
            [
                "timer",
                timer.action,
                timer.key,
                timer.due_at.timestamp(),
                webhook.message_id,
                os.getpid(),
                time.time(),
            ],
        )


timers = WappaBuilder().with_redis_cache().with_event_handler(TimerHandler()).build()
