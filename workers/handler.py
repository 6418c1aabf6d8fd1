"""``WappaEventHandler``: what app code subclasses."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from parley.cache import ICache, TableCache

if TYPE_CHECKING:
    from parley.workers.messenger import WhatsAppMessenger
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
