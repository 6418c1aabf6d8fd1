"""The loop-lag monitor: names the handler that blocks the worker's event loop.

Every handler of a node shares one event loop, so a handler that calls blocking code
(``time.sleep``, ``requests``, a CPU-heavy loop) stalls every other user on the node.
A timer on the loop marks each turn; a thread beside it notices when the marks stop,
looks at what the loop's thread is executing right then (``sys._current_frames``), and
once the loop runs again logs one warning: how long it was blocked and by which line of
which handler, with the fix (``await asyncio.to_thread(...)``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
import threading
import time
from types import FrameType

log = logging.getLogger("parley.worker")

#: How often the loop marks a turn, and the watchdog looks
TICK = 0.05
#: A loop silent this long (seconds) is reported as blocked
BLOCKED_AFTER = 0.25


class LoopWatchdog:
    def __init__(
        self, loop: asyncio.AbstractEventLoop, handler: type, blocked_after: float = BLOCKED_AFTER
    ) -> None:
        self.loop = loop
        self.blocked_after = blocked_after
        try:
            self.handler_file = inspect.getsourcefile(handler) or ""
        except TypeError:  # a class defined in __main__ or a REPL
            self.handler_file = ""
        self._last_turn = time.monotonic()
        self._loop_thread: int | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="parley-watchdog", daemon=True)

    def start(self) -> None:
        self._last_turn = time.monotonic()
        self.loop.call_soon_threadsafe(self._turn)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _turn(self) -> None:
        self._last_turn = time.monotonic()
        self._loop_thread = threading.get_ident()
        if not self._stopped.is_set():
            self.loop.call_later(TICK, self._turn)

    def _watch(self) -> None:
        culprit: str | None = None
        longest = 0.0
        while not self._stopped.wait(TICK):
            silent = time.monotonic() - self._last_turn
            if silent > self.blocked_after:
                culprit = culprit or self._culprit()
                longest = max(longest, silent)
            elif culprit is not None:
                log.warning(
                    "the event loop was blocked for %.2fs by %s: every handler on this node "
                    "waited; run blocking calls with `await asyncio.to_thread(...)`",
                    longest,
                    culprit,
                )
                culprit, longest = None, 0.0

    def _culprit(self) -> str:
        """The innermost line of the app's handler module that the loop's thread is in,
        else the innermost line it is in."""
        frame = sys._current_frames().get(self._loop_thread or -1)
        innermost: FrameType | None = frame
        while frame is not None:
            if self.handler_file and frame.f_code.co_filename == self.handler_file:
                return _where(frame)
            frame = frame.f_back
        return _where(innermost) if innermost is not None else "unknown code"


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
