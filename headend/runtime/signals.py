"""Turn Ctrl-C and SIGTERM into a stop event, so long-running commands end cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """An event set by Ctrl-C or SIGTERM while the block runs; the previous handlers come back after it."""
    event = stop or threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing the work in hand", signum)
        event.set()

    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
