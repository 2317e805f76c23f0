"""Service benchmark: HTTP overhead, latency under concurrency, bulk scoring.

Starts the real server (``flowserve serve`` in uvicorn subprocesses: batching on and off, tiny
requests inline as by default or always in a worker thread) and a bare FastAPI endpoint that
parses the same JSON body under the same uvicorn settings, then prints medians and ratios:

- single-row JSON /log_prob requests/s vs the bare endpoint (target ratio >= 0.85), each
  interleaved repeat's ratio and the median;
- p50/p99 latency at 1, 16 and 64 concurrent clients, with and without server-side batching;
- bulk scoring of 1,000,000 rows through a binary .npy body vs in-process ONNX Runtime on the
  same rows with the same session settings, serial and split over the server's inference
  threads (target within 1.3x of the faster), and through JSON.

Usage: ``python benchmarks/bench_service.py [--quick]``. Uses the bundled default model when
present, else the affine test artifact from tests/service_fixtures.py. Numbers depend on the
machine; the load generator shares its CPUs, so compare ratios. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parent.parent
BARE_APP = """
from fastapi import FastAPI
from pydantic import BaseModel
app = FastAPI()
class Rows(BaseModel):
    inputs: list[list[float]]
@app.post("/log_prob")
async def log_prob(body: Rows) -> dict:
    return {"model": "bare", "version": 1, "log_prob": [0.0] * len(body.inputs)}
@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_root(tmp: Path) -> tuple[Path, str]:
    default = REPO / "flowserve" / "default_model"
    if (default / "sensors").is_dir():
        return default, "sensors"
    sys.path.insert(0, str(REPO))
    from tests.service_fixtures import affine_flow, build_affine_artifact

    build_affine_artifact(tmp, "toy", 1, affine_flow(4, seed=0))
    return tmp, "toy"


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready in time")


def start(cmd: list[str], port: int, cwd: Path | None = None) -> tuple[subprocess.Popen, str]:
    # Never the repository root: ``python -m`` puts the working directory first on sys.path,
    # where ./flowserve (without service/ and models/, which live beside it) would shadow the
    # installed package.
    cwd = cwd or Path(tempfile.gettempdir())
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc)
    return proc, base


def serve(root: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "flowserve.cli", "serve", "--models", str(root)]
    cmd += ["--port", str(port), "--log-level", "warning", "--max-rows", "2000000"]
    cmd += ["--max-body-bytes", str(1 << 30), *extra]
    return start(cmd, port)


def serve_bare(tmp: Path) -> tuple[subprocess.Popen, str]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    # The same uvicorn settings as ``flowserve serve``: loop and http "auto", one worker.
    cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--loop", "auto", "--http", "auto"]
    return start(cmd, port, cwd=tmp)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(url: str, body: bytes, concurrency: int, requests: int) -> tuple[float, list[float]]:
    """(requests/s, latencies in s) for ``requests`` POSTs spread over ``concurrency`` clients."""
    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(20, requests)):  # warm the connections
            await client.post(url, content=body, headers=headers)
        per_client = max(1, requests // concurrency)

        async def worker() -> None:
            for _ in range(per_client):
                t = time.perf_counter()
                r = await client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text

        start_t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start_t
    return len(latencies) / elapsed, latencies


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000.0


def inprocess_parallel(model, x: np.ndarray, threads: int) -> np.ndarray:
    """log_prob in-process, split into parts on ``threads`` threads as the server splits a
    large request (parts of ceil(N / threads) rows, at most CHUNK_ROWS)."""
    from concurrent.futures import ThreadPoolExecutor

    from flowserve.service.batching import MIN_PART_ROWS
    from flowserve.service.runtime import CHUNK_ROWS

    part = min(CHUNK_ROWS, max(MIN_PART_ROWS, -(-len(x) // threads)))
    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(model.log_prob, [x[i : i + part] for i in range(0, len(x), part)]))
    return np.concatenate(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats")
    args = parser.parse_args()
    repeats = 3
    n_single = 1000 if args.quick else 3000
    bulk_rows = 1_000_000
    json_rows = 100_000 if args.quick else 1_000_000
    threads = 2  # the server's default --inference-threads

    tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
    procs: list[subprocess.Popen] = []
    try:
        root, name = model_root(tmp)
        from flowserve.service.runtime import OnnxFlowModel

        # The server's defaults: --ort-intra-op-threads 1 --ort-inter-op-threads 1.
        model = OnnxFlowModel(
            root / name / str(max(int(p.name) for p in (root / name).iterdir() if p.name.isdigit()))
        )
        model.warm_up()
        dim = model.dim
        print(f"model {name} (dim {dim}, {model.manifest.family}); cores: {os.cpu_count()}")
        print(
            "uvicorn for both servers: 1 worker, loop/http 'auto' (uvloop + httptools here), "
            "no access log"
        )
        row = np.random.default_rng(0).normal(size=(1, dim)).round(4).tolist()
        body = ('{"inputs": ' + str(row) + "}").encode()

        on, base_on = serve(root, "--batching")
        procs.append(on)
        off, base_off = serve(root, "--no-batching")
        procs.append(off)
        bare, base_bare = serve_bare(tmp)
        procs.append(bare)
        on_thr, base_on_thr = serve(root, "--batching", "--inline-max-rows", "0")
        procs.append(on_thr)
        off_thr, base_off_thr = serve(root, "--no-batching", "--inline-max-rows", "0")
        procs.append(off_thr)

        # 1. single-row JSON requests/s vs a bare FastAPI endpoint (8 clients)
        print("\n== single-row JSON /log_prob, 8 clients (3 interleaved repeats, median)")
        for label, base in (
            ("defaults (batching on, tiny calls inline)", base_on),
            ("--no-batching (tiny calls inline)", base_off),
            ("--no-batching --inline-max-rows 0", base_off_thr),
        ):
            svc, raw = [], []
            for _ in range(repeats):
                svc.append(asyncio.run(load(f"{base}/log_prob", body, 8, n_single))[0])
                raw.append(asyncio.run(load(f"{base_bare}/log_prob", body, 8, n_single))[0])
            s, b = statistics.median(svc), statistics.median(raw)
            each = " ".join(f"{a / c:.2f}" for a, c in zip(svc, raw, strict=True))
            print(
                f"service, {label}: {s:6.0f} req/s   bare FastAPI {b:6.0f} req/s   "
                f"ratio {s / b:.2f}  (per repeat: {each}; target >= 0.85)"
            )

        # 2. latency under concurrency, batching on/off
        print("\n== latency (ms), single-row JSON /log_prob")
        print(f"{'clients':>8} {'batching':>9} {'inline':>7} {'p50':>8} {'p99':>8} {'req/s':>8}")
        for conc in (1, 16, 64):
            for label, inl, base in (
                ("on", "auto", base_on),
                ("off", "auto", base_off),
                ("on", "no", base_on_thr),
                ("off", "no", base_off_thr),
            ):
                rps, lat = asyncio.run(
                    load(f"{base}/log_prob", body, conc, max(n_single, conc * 10))
                )
                print(
                    f"{conc:>8} {label:>9} {inl:>7} {pct(lat, 50):8.2f} {pct(lat, 99):8.2f} "
                    f"{rps:8.0f}"
                )

        # 3. bulk scoring: binary .npy over HTTP vs in-process ONNX Runtime, and JSON
        x = np.random.default_rng(1).normal(size=(bulk_rows, dim)).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, x)
        payload = buf.getvalue()  # prepared once; one keep-alive connection below
        inproc, inpar, http_bin = [], [], []
        with httpx.Client(timeout=600) as client:
            for _ in range(repeats):
                t = time.perf_counter()
                ref = model.log_prob(x)
                inproc.append(time.perf_counter() - t)
                t = time.perf_counter()
                par = inprocess_parallel(model, x, threads)
                inpar.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = client.post(
                    f"{base_off}/log_prob",
                    content=payload,
                    headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
                )
                got = np.load(io.BytesIO(r.content))
                http_bin.append(time.perf_counter() - t)
            np.testing.assert_allclose(got, ref, atol=1e-5)
            np.testing.assert_allclose(par, ref, atol=1e-5)
            xj = x[:json_rows]
            t = time.perf_counter()
            jbody = json.dumps({"inputs": xj.round(6).tolist()}).encode()
            encode_s = time.perf_counter() - t
            t = time.perf_counter()
            r = client.post(
                f"{base_off}/log_prob", content=jbody, headers={"content-type": "application/json"}
            )
            json_s = time.perf_counter() - t
            assert r.status_code == 200, r.text[:200]
        i, p, h = statistics.median(inproc), statistics.median(inpar), statistics.median(http_bin)
        best = min(i, p)
        print(f"\n== bulk scoring, {bulk_rows:,} rows (median of 3)")
        print("sessions: intra_op_threads=1, inter_op_threads=1, ORT_ENABLE_ALL, CPU provider")
        print(f"in-process, 1 thread       {i:7.3f} s  ({bulk_rows / i:,.0f} rows/s)")
        print(f"in-process, {threads} threads      {p:7.3f} s  ({bulk_rows / p:,.0f} rows/s)")
        each = " ".join(
            f"{a / min(b, c):.2f}" for a, b, c in zip(http_bin, inproc, inpar, strict=True)
        )
        print(
            f"HTTP binary .npy           {h:7.3f} s  ({bulk_rows / h:,.0f} rows/s; server: "
            f"--inference-threads {threads})  ratio {h / best:.2f}x vs the faster in-process "
            f"(per repeat: {each}; target <= 1.3x)"
        )
        print(
            f"HTTP JSON ({json_rows:,} rows)  {json_s:7.3f} s  ({json_rows / json_s:,.0f} rows/s; "
            f"body {len(jbody) / 1e6:.0f} MB; client-side encoding {encode_s:.2f} s not counted)"
        )
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
