"""``WappaEventHandler``: what app code subclasses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from parley.cache import ICache, TableCache

if TYPE_CHECKING:
    from datetime import datetime, timedelta

    from parley.workers.messenger import WhatsAppMessenger
    from parley.workers.timers import Timers
    from parley.workers.webhook import Webhook


class WappaEventHandler:
    """Override ``handle_message`` (and optionally ``handle_status``, ``handle_error``).

    Before each call the worker gives the handler ``self.state_cache``,
    ``self.user_cache``, ``self.table_cache`` (scoped to the webhook's tenant and user),
    ``self.messenger`` (sending from the webhook's phone number) and ``self.logger``.
    Each webhook runs on a shallow copy of the handler, so whatever one dispatch sets
    on ``self`` is never seen by another; attributes set in ``on_startup`` (clients,
    models) are built once per worker process and shared.
    """

    state_cache: ICache
    user_cache: ICache
    table_cache: TableCache
    messenger: WhatsAppMessenger
    logger: logging.Logger | logging.LoggerAdapter[Any]
    timers: Timers

    async def on_startup(self) -> None:
        """Called once per worker process, before the first webhook."""

    async def on_shutdown(self) -> None:
        """Called once when the worker process stops."""

    async def handle_message(self, webhook: Webhook) -> None:
        self.logger.info("message %s (%s) not handled", webhook.message_id, webhook.message_type)

    async def handle_status(self, webhook: Webhook) -> None:
        self.logger.debug("status %s of %s", webhook.message_type, webhook.message_id)

    async def handle_error(self, webhook: Webhook) -> None:
        self.logger.warning("webhook errors for tenant %s: %s", webhook.tenant_id, webhook.errors)

    async def handle_timer(self, webhook: Webhook) -> None:
        """A timer this app scheduled fell due: ``webhook.timer.action``, ``.data``,
        ``.due_at`` (late if every node was down then). Runs in the user's lane."""
        timer = webhook.timer
        self.logger.info("timer %s not handled", timer.action if timer else None)

    async def schedule(
        self,
        action: str,
        *,
        after: float | timedelta | None = None,
        at: datetime | float | None = None,
        data: dict[str, Any] | None = None,
        key: str = "",
    ) -> datetime:
        """Run ``handle_timer`` for this webhook's user ``after`` seconds (or a
        timedelta) from now, or ``at`` an aware datetime; once, however many nodes
        run. The same (user, ``action``, ``key``) scheduled again moves the timer.
        Returns the due time."""
        return await self.timers.schedule(action, after=after, at=at, data=data, key=key)

    async def cancel(self, action: str, *, key: str = "") -> bool:
        """Cancel this user's timer (``action``, ``key``): it will not run, even if it is
        due already. False when there was none."""
        return await self.timers.cancel(action, key=key)
