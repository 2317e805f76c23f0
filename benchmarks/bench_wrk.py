"""HTTP throughput and latency with wrk: flowserve vs a bare FastAPI endpoint vs a naive ONNX
Runtime endpoint, single-row JSON, 1 uvicorn worker each, at 1, 32 and 64 connections.

wrk (``apt-get install wrk``) is the load generator: written in C, it is not the bottleneck that
an in-process Python client is. Every server runs under the same uvicorn settings (one worker,
loop and http "auto", no uvicorn access log) in a working directory outside the repository, so
the installed package is what runs. The servers:

- ``bare``: FastAPI parsing the same body (``{"inputs": list[list[float]]}`` through pydantic)
  and answering a JSON object of the same shape, no model;
- ``naive-ort``: the same, plus an ONNX Runtime call on the model's forward graph, inline;
- ``flowserve``: ``flowserve serve`` with its defaults (batching on, access log on); and
  ``flowserve --no-batching``, and ``/sample`` with n=1 on the default server.

Rounds are interleaved (every server at every connection count, then again), each run bounded
by ``--duration``. Printed: per configuration, the median requests/s and range over rounds, the
median p50 and p99 latency, and the ratio to ``bare`` measured in the same round (median and
range of the per-round ratios).

    python benchmarks/bench_wrk.py                       # 3 rounds x 5 s: about 6 minutes
    python benchmarks/bench_wrk.py --rounds 5 --duration 5 --connections 1,32,64
    python benchmarks/bench_wrk.py --optimize-graphs     # serve a copy with optimised graphs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROW = [2184.4, 51.9, 2.14, 4.13]  # one row of the default model (sensors, dim 4)

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

NAIVE_APP = """
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
session = ort.InferenceSession(GRAPH, opts, providers=["CPUExecutionProvider"])
app = FastAPI()
class Rows(BaseModel):
    inputs: list[list[float]]
@app.post("/log_prob")
async def log_prob(body: Rows) -> dict:
    x = np.asarray(body.inputs, dtype=np.float32)
    lp = session.run(["log_prob"], {"x": x})[0]
    return {"model": "naive", "version": 1, "log_prob": lp.tolist()}
@app.get("/readyz")
async def ready() -> dict:
    return {"status": "ready"}
"""

LUA = """
wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def start(
    cmd: list[str], cwd: Path, port: int, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def uvicorn_app(module: str, cwd: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--loop", "auto", "--http", "auto"]
    return start(cmd, cwd, port)


def flowserve(
    root: Path, cwd: Path, *extra: str, code: Path | None = None
) -> tuple[subprocess.Popen, str]:
    """``flowserve serve``; ``code``: run another checkout's code instead (see --baseline)."""
    port = free_port()
    cmd = [sys.executable, "-m", "flowserve.cli", "serve", "--models", str(root)]
    cmd += ["--port", str(port), "--log-level", "warning", *extra]
    env = None if code is None else {**os.environ, "PYTHONPATH": str(_importable(code))}
    return start(cmd, cwd, port, env)


def _importable(checkout: Path) -> Path:
    """A folder from which ``import flowserve`` finds ``checkout``'s code: the repository keeps
    ``service/`` and ``models/`` beside ``flowserve/``, so link them in under a copy's name."""
    tree = Path(tempfile.mkdtemp(prefix="flowserve-baseline-")) / "flowserve"
    shutil.copytree(checkout / "flowserve", tree, symlinks=True)
    for sub in ("service", "models"):
        if not (tree / sub).exists():
            (tree / sub).symlink_to(checkout / sub)
    return tree.parent


def optimized_copy(src: Path, dst: Path) -> Path:
    """A copy of the default model whose graphs went through export's optimisation pass."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from flowserve.artifact import load_manifest, sha256_file, write_manifest
    from flowserve.models.optimize import optimize_graph

    version = dst / "sensors" / "1"
    shutil.copytree(src / "sensors" / "1", version)
    manifest = load_manifest(version)
    x = np.asarray([ROW] * 8, dtype=np.float32)
    counts = {"forward": optimize_graph(version / manifest.graphs["forward"], x)}
    import onnxruntime as ort

    z = ort.InferenceSession(str(version / manifest.graphs["forward"])).run(["z"], {"x": x})[0]
    counts["inverse"] = optimize_graph(version / manifest.graphs["inverse"], z)
    files = {f: sha256_file(version / f) for f in manifest.files}
    write_manifest(version, manifest.model_copy(update={"files": files, "graph_nodes": counts}))
    print(f"optimised graphs: {counts}")
    return dst


def wrk(url: str, path: str, body: str, connections: int, duration_s: int, lua: Path) -> dict:
    lua.write_text(LUA.format(body=body))
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", str(lua), f"{url}{path}"], capture_output=True, text=True, check=True
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}{path}: {non2xx.group(1)} error responses\n{out}")

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m is not None, out
        return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]

    return {"rps": rps, "p50_ms": pct("50"), "p99_ms": pct("99")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", default="1,32,64")
    parser.add_argument("--optimize-graphs", action="store_true")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. `git worktree add /tmp/before <commit>`): its flowserve "
        "is measured too, in the same rounds, on its own bundled default model",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    conns = [int(c) for c in args.connections.split(",")]
    body = json.dumps({"inputs": [ROW]})
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root = REPO / "flowserve" / "default_model"
        if args.optimize_graphs:
            root = optimized_copy(root, tmp / "models")
        graph = root / "sensors" / "1" / "forward.onnx"
        (tmp / "bare_app.py").write_text(BARE_APP)
        (tmp / "naive_app.py").write_text(f"GRAPH = {str(graph)!r}\n" + NAIVE_APP)
        servers = {
            "bare": uvicorn_app("bare_app", tmp),
            "naive-ort": uvicorn_app("naive_app", tmp),
            "flowserve": flowserve(root, tmp),
            "flowserve --no-batching": flowserve(root, tmp, "--no-batching"),
        }
        if args.baseline is not None:
            base_root = args.baseline / "flowserve" / "default_model"
            servers["baseline flowserve"] = flowserve(base_root, tmp, code=args.baseline)
            servers["baseline flowserve --no-batching"] = flowserve(
                base_root, tmp, "--no-batching", code=args.baseline
            )
        runs = [(name, "/log_prob", body) for name in servers]
        sample = json.dumps({"n": 1, "seed": 0})
        runs += [(name, "/sample", sample) for name in servers if name.endswith("flowserve")]
        results: dict[tuple[str, str, int], list[dict]] = {}
        try:
            for r in range(args.rounds):
                for c in conns:
                    for name, path, payload in runs:
                        res = wrk(servers[name][1], path, payload, c, args.duration, tmp / "p.lua")
                        results.setdefault((name, path, c), []).append(res)
                        print(f"round {r + 1} c={c} {name} {path}: {res}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(10)
    print("\n| connections | server | path | req/s median (range) | p50 ms | p99 ms | "
          "ratio to bare, median (range) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for c in conns:
        bare = [x["rps"] for x in results[("bare", "/log_prob", c)]]
        for name, path, _ in runs:
            got = results[(name, path, c)]
            rps = [x["rps"] for x in got]
            ratios = [a / b for a, b in zip(rps, bare, strict=True)]
            print(
                f"| {c} | {name} | {path} | {statistics.median(rps):.0f} "
                f"({min(rps):.0f}-{max(rps):.0f}) | "
                f"{statistics.median(x['p50_ms'] for x in got):.2f} | "
                f"{statistics.median(x['p99_ms'] for x in got):.2f} | "
                f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
            )


if __name__ == "__main__":
    main()
