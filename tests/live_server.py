"""A real ``flowserve serve`` process on 127.0.0.1 and a free port, for end-to-end tests.

The process is always killed on exit (terminate, then kill), whatever the test did.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

__all__ = ["free_port", "live_server", "live_server_process"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def live_server(
    model_root: Path,
    env: dict[str, str] | None = None,
    startup_s: float = 60.0,
    args: Sequence[str] = (),
) -> Iterator[str]:
    """Serve ``model_root`` in a subprocess (``args``: more ``flowserve serve`` flags); yields
    its base URL once ``/readyz`` answers 200."""
    with live_server_process(model_root, env, startup_s, args) as (url, _):
        yield url


@contextlib.contextmanager
def live_server_process(
    model_root: Path,
    env: dict[str, str] | None = None,
    startup_s: float = 60.0,
    args: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """:func:`live_server`, also yielding the process (to signal it, or read its exit status)."""
    port = free_port()
    cmd = [sys.executable, "-m", "flowserve.cli", "serve", "--models", str(model_root)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args]
    # No readiness drain on exit (the service's default is 5 s of 503s after SIGTERM): the tests of
    # draining ask for one with --drain-s, which wins over the environment.
    full_env = {**os.environ, "FLOWSERVE_DRAIN_S": "0", **(env or {})}
    # A file, not a pipe: a chatty server can never block on a full pipe buffer.
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                out = log.read()
                raise RuntimeError(f"flowserve serve exited with {proc.returncode}:\n{out}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"flowserve serve not ready after {startup_s} s")
            time.sleep(0.2)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
