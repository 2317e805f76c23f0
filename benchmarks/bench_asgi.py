"""Server CPU per single-row request, without network or load generator: the ASGI apps are called
directly (one request at a time on one event loop), so the client's cost and the other tenants'
scheduling noise mostly drop out.

Compares the service's /log_prob (defaults; ``--no-batching``; ``--no-fast-lane``, FastAPI's
routing; ``--inline-max-rows 0``; and the model's ONNX Runtime call alone) with the bare FastAPI
endpoint of bench_service.py, in microseconds per request (median of interleaved repeats).

Usage: ``python benchmarks/bench_asgi.py [--requests 3000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import BARE_APP

from flowserve.service.app import create_app
from flowserve.service.settings import ServiceSettings

BODY = b'{"inputs": [[0.1, -0.2, 0.3, 0.4]]}'
App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def post(app: App, path: str = "/log_prob") -> None:
    """One POST through the whole ASGI stack (middleware, routing, endpoint, response)."""
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert status == [200], status


async def per_request_us(app: App, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await post(app)
        # A server reads the next request on another loop turn: let this one end, too (the
        # batcher tells a lone request from a burst by the loop turn it arrives in).
        await asyncio.sleep(0)
    return (time.perf_counter() - start) / n * 1e6


async def main(requests: int, repeats: int) -> None:
    bare_mod = types.ModuleType("bare_app")
    exec(compile(BARE_APP, "bare_app", "exec"), bare_mod.__dict__)
    apps: dict[str, Any] = {
        "bare FastAPI (pydantic body)": bare_mod.app,
        "service, defaults": create_app(ServiceSettings()),
        "service, --no-batching": create_app(ServiceSettings(batching=False)),
        "service, --no-fast-lane": create_app(ServiceSettings(fast_lane=False)),
        "service, --inline-max-rows 0": create_app(ServiceSettings(inline_max_rows=0)),
    }
    times: dict[str, list[float]] = {name: [] for name in apps}
    ort_us: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            if hasattr(app, "router"):
                await stack.enter_async_context(app.router.lifespan_context(app))
            for _ in range(200):  # warm up
                await post(app)
        model = apps["service, defaults"].state.flowserve.repository.snapshot.resolve().model
        x = np.array([[0.1, -0.2, 0.3, 0.4]], dtype=np.float32)
        for _ in range(repeats):
            for name, app in apps.items():
                times[name].append(await per_request_us(app, requests))
            start = time.perf_counter()
            for _ in range(requests):
                model.log_prob(x)
            ort_us.append((time.perf_counter() - start) / requests * 1e6)
    bare = statistics.median(times["bare FastAPI (pydantic body)"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:32s} {med:7.1f} us/request  ({bare / med:.2f} of bare's rate)")
    print(f"{'ONNX Runtime call, 1 row':32s} {statistics.median(ort_us):7.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.repeats))
