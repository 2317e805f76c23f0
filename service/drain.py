"""Graceful shutdown: on SIGTERM, readiness goes first, then the listener.

uvicorn closes its listener as soon as it sees SIGTERM, before a load balancer has noticed that
the pod is going away. :func:`draining_on_sigterm` wraps uvicorn's own signal handler, from
inside the app's lifespan (so it works the same in every worker process): the first SIGTERM sets
:attr:`ServiceState.draining` (``/readyz`` answers 503 ``draining``) and hands the signal on to
uvicorn only ``drain_s`` seconds later; requests keep being served meanwhile. uvicorn then stops
accepting, lets in-flight requests finish (``shutdown_timeout_s``) and exits 0. A second SIGTERM
or SIGINT during the drain ends it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from .state import ServiceState

__all__ = ["draining_on_sigterm"]

log = logging.getLogger("flowserve.service")


@contextlib.contextmanager
def draining_on_sigterm(state: ServiceState, drain_s: float) -> Iterator[None]:
    """Install the drain in front of the current SIGTERM/SIGINT handlers while the app runs.

    Signals can only be handled in the main thread; elsewhere (an in-process test client) this
    does nothing.
    """
    if drain_s <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def hand_on(sig: int, frame: FrameType | None) -> None:
        handler: Any = previous[sig]
        if callable(handler):
            handler(sig, frame)
        elif handler == signal.SIG_DFL:  # nothing but the default: end as the default would
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        if state.draining or sig == signal.SIGINT:
            hand_on(sig, frame)  # a second signal, or Ctrl-C: stop draining now
            return
        state.draining = True
        loop.call_soon_threadsafe(start_drain, sig)

    def start_drain(sig: int) -> None:
        log.info("SIGTERM: /readyz answers 503 for %.1f s, then the listener closes", drain_s)
        loop.call_later(drain_s, hand_on, sig, None)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if signal.getsignal(sig) is on_signal:
                signal.signal(sig, handler)
