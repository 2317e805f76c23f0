"""Run the app under uvicorn with the service's timeouts, for one worker or several.

- :class:`HeaderTimeoutProtocol`: uvicorn's httptools protocol, plus a deadline for the request
  head: a connection that has not sent a complete request line and headers within
  ``header_timeout_s`` (from connecting, or from the first byte of a keep-alive request) is
  closed, so half-open and slow-header connections cannot pile up.
- :func:`serve`: one uvicorn ``Config`` for 1 or N workers (keep-alive and graceful-shutdown
  timeouts set), and the same exit status for both: 0 after a SIGTERM or SIGINT shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import ServiceSettings

__all__ = ["HeaderTimeoutProtocol", "serve"]

PROTOCOL = "flowserve.service.server:HeaderTimeoutProtocol"


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1 with a request-head deadline (``config.header_timeout_s``)."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.header_timeout_s: float = getattr(config, "header_timeout_s", 10.0)
        self._head_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _supervisor() -> type:
    from uvicorn.supervisors import Multiprocess

    class Supervisor(Multiprocess):
        """uvicorn's worker supervisor, passing a second SIGTERM or SIGINT on to the workers
        while they drain (uvicorn's own stops listening once it has sent the first)."""

        def join_all(self) -> None:
            for worker in self.processes:
                process = getattr(worker, "process", worker)
                while process.is_alive():
                    process.join(0.5)
                    if self.signal_queue:
                        self.signal_queue.clear()
                        self.terminate_all()

    return Supervisor


def serve(settings: ServiceSettings, app: Any) -> int:
    """Serve ``app`` (an app, or with several workers the import string of its factory)."""
    import uvicorn

    extra: dict[str, Any] = {}
    if settings.log_format == "json":
        extra["log_config"] = None  # uvicorn's loggers propagate to the JSON root handler
    config = uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,  # flowserve's own access log (request_log.py) replaces uvicorn's
        http=PROTOCOL,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(settings.shutdown_timeout_s)),
        **extra,
    )
    config.header_timeout_s = settings.header_timeout_s  # type: ignore[attr-defined]
    if settings.workers > 1:
        _supervisor()(config, sockets=[config.bind_socket()]).run()
        return 0
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in
    # place that ends in a normal return and exit status 0, as with several workers.
    server = uvicorn.Server(config)
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 3
