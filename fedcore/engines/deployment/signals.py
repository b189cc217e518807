"""Signals during a deployment: SIGTERM/SIGHUP as KeyboardInterrupt, and cleanup that a second Ctrl-C cannot cut short."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = ["deferred_signals", "sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into :class:`KeyboardInterrupt` (like SIGINT) inside the block.

    So every ``finally`` that runs on Ctrl-C also runs when a supervisor or
    ``kill`` stops the process. No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)


@contextlib.contextmanager
def deferred_signals(*, reraise: bool = True) -> Iterator[None]:
    """Hold off SIGINT/SIGTERM/SIGHUP during cleanup so it cannot be cut short.

    Args:
        reraise: Raise :class:`KeyboardInterrupt` after the block if a signal came.

    No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, prev in previous.items():
            signal.signal(sig, prev)
    if received and reraise:
        raise KeyboardInterrupt(f"received {signal.Signals(received[0]).name}")


# --------------------------------------------------------------------------- processes
