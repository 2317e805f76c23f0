"""Keep serving through every fault: failed reloads keep the loaded model, reload scans survive
vanishing files, bad or huge bodies get a 4xx before they cost memory, admission control answers
503 with Retry-After, SIGTERM drains, slow request heads are cut off, bulk output is atomic."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flowserve.artifact import FORWARD_GRAPH, MANIFEST_FILE
from flowserve.service import bulk_cli
from flowserve.service.app import create_app
from flowserve.service.repository import ModelRepository, _fingerprint, scan_root
from flowserve.service.settings import ServiceSettings
from tests.live_server import live_server, live_server_process
from tests.service_fixtures import affine_flow, build_affine_artifact, service_client

ADMIN = {"x-api-key": "admin-key"}
X = np.array([[0.5, -0.5, 1.0], [1.5, 0.0, -2.0]])


def _client(root: Path, **kw: object) -> TestClient:
    return service_client(root, admin_keys="admin-key", **kw)


def _log_prob(c: TestClient, path: str = "/log_prob") -> dict:
    r = c.post(path, json={"inputs": X.tolist()})
    assert r.status_code == 200, r.text
    return r.json()


# --- transactional reload -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["truncated_manifest", "half_copied_graph"])
def test_failed_reload_of_a_serving_version_keeps_it(tmp_path: Path, fault: str) -> None:
    directory, f1 = build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=0))
    with _client(tmp_path) as c:
        np.testing.assert_allclose(_log_prob(c)["log_prob"], f1.log_prob(X), atol=1e-4)
        if fault == "truncated_manifest":
            path = directory / MANIFEST_FILE
            path.write_bytes(path.read_bytes()[:100])  # truncated in place
        else:
            path = directory / FORWARD_GRAPH
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # mid-copy
        assert c.post("/admin/reload", headers=ADMIN).status_code == 200
        body = _log_prob(c)  # still the loaded version 1, same answers
        assert body["version"] == 1
        np.testing.assert_allclose(body["log_prob"], f1.log_prob(X), atol=1e-4)
        info = c.get("/models/toy/versions/1").json()
        assert info["status"] == "ready" and info["reload_error"] and info["reload_failed_at"]
        assert c.get("/readyz").status_code == 200
        # the fixed files (here: a different flow) are picked up by the next reload
        _, f2 = build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=7))
        assert c.post("/admin/reload", headers=ADMIN).status_code == 200
        np.testing.assert_allclose(_log_prob(c)["log_prob"], f2.log_prob(X), atol=1e-4)
        assert c.get("/models/toy/versions/1").json()["reload_error"] is None


def test_failed_reload_is_logged_and_not_retried_until_files_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory, _ = build_affine_artifact(tmp_path, "toy", 1)
    repo = ModelRepository(tmp_path)
    repo.reload()
    (directory / MANIFEST_FILE).write_text("{")
    with caplog.at_level("ERROR"):
        snap = repo.reload()
    assert "keeping the loaded version serving" in caplog.text
    assert snap.models["toy"][1].ready and not repo.changed()  # no reload loop under --watch
    caplog.clear()
    repo.reload()
    assert "keeping the loaded version" not in caplog.text


def test_reload_scans_survive_vanishing_files(tmp_path: Path) -> None:
    assert _fingerprint(tmp_path / "missing") is None
    assert scan_root(tmp_path / "missing") == {}
    build_affine_artifact(tmp_path, "toy", 1)
    template, _ = build_affine_artifact(tmp_path / "template", "toy", 2)
    repo = ModelRepository(tmp_path)
    stop = threading.Event()

    def churn() -> None:  # a version that keeps appearing and disappearing, file by file
        target = tmp_path / "toy" / "2"
        while not stop.is_set():
            shutil.copytree(template, target, dirs_exist_ok=True)
            for p in sorted(target.iterdir()):
                p.unlink()
            target.rmdir()

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        for _ in range(60):
            snap = repo.reload()  # never raises
            assert snap.models["toy"][1].ready
    finally:
        stop.set()
        worker.join()


def test_concurrent_reloads_share_scans(tmp_path: Path) -> None:
    build_affine_artifact(tmp_path, "toy", 1)
    repo = ModelRepository(tmp_path)
    barrier = threading.Barrier(16)
    generations: list[int] = []

    def call() -> None:
        barrier.wait()
        generations.append(repo.reload().generation)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(generations) == 16 and all(g >= 1 for g in generations)
    assert repo.snapshot.generation <= 16


# --- bounded bodies -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_affine_artifact(root, "toy", 1, affine_flow(3, seed=0))
    return root


@pytest.fixture(scope="module")
def client(root: Path):
    with _client(root, max_rows=1000) as c:
        yield c


def test_empty_rows_are_counted_before_parsing(client: TestClient) -> None:
    body = b'{"inputs": [' + b"[]," * 2_000_000 + b"[]]}"  # 6 MB, two million rows
    r = client.post("/log_prob", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows"
    ok = client.post("/log_prob", json={"inputs": [[0.0, 0.0, 0.0]] * 1000})
    assert ok.status_code == 200


@pytest.mark.parametrize("path", ["/log_prob", "/sample", "/score", "/models/toy/decode"])
@pytest.mark.parametrize("depth", [5000, 100_000])
def test_deep_nesting_is_a_4xx(client: TestClient, path: str, depth: int) -> None:
    for body in (
        b"[" * depth + b"]" * depth,
        b'{"inputs": ' + b"[" * depth + b"NaN" + b"]" * depth + b"}",
    ):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, r.text
        assert r.json()["error"]["code"] in {"invalid_input", "too_many_rows"}


def test_sample_seed_out_of_range_names_the_field(client: TestClient) -> None:
    for seed in (-1, -57848594, 2**63):
        r = client.post("/sample", json={"n": 2, "seed": seed})
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "out_of_range" and r.json()["error"]["field"] == "seed"
    assert client.post("/sample", json={"n": 2, "seed": 2**63 - 1}).status_code == 200


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_peak_memory_of_a_huge_json_body_stays_bounded(root: Path) -> None:
    limit = 16 * 1024 * 1024
    env = {"FLOWSERVE_MAX_BODY_BYTES": str(limit)}
    with (
        live_server_process(root, env=env) as (url, proc),
        httpx.Client(base_url=url, timeout=60) as c,
    ):
        c.post("/log_prob", json={"inputs": X.tolist()})
        before = _vm_hwm_kib(proc.pid)
        body = b'{"inputs": [' + b"[]," * ((limit - 20) // 3) + b"[]]}"
        assert len(body) <= limit
        r = c.post("/log_prob", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_rows"
        numbers = b'{"inputs": [' + b"[0,0,0]," * 99_998 + b"[0,0,0]]}"
        assert c.post("/log_prob", content=numbers).status_code == 200
        grew = _vm_hwm_kib(proc.pid) - before
    # Documented bound: at most 4x max_body_bytes per request (two copies of the body while it
    # is received, plus the parse of what the value budget admits).
    assert grew * 1024 <= 4 * limit, f"peak RSS grew {grew} KiB for a {limit >> 20} MiB limit"


# --- admission control ----------------------------------------------------------------------


def test_in_flight_limit_answers_503_with_retry_after(root: Path) -> None:
    app = create_app(ServiceSettings(model_root=root, max_in_flight=1))

    async def scenario() -> None:
        entered, release = asyncio.Event(), asyncio.Event()

        async def slow_body():
            yield b'{"inputs": '
            entered.set()
            await release.wait()
            yield json.dumps(X.tolist()).encode() + b"}"

        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = asyncio.create_task(
                    c.post(
                        "/log_prob",
                        content=slow_body(),
                        headers={"content-type": "application/json"},
                    )
                )
                await entered.wait()
                r = await c.post("/log_prob", json={"inputs": X.tolist()})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "overloaded"
                assert (await c.get("/readyz")).status_code == 200  # probes are exempt
                release.set()
                assert (await first).status_code == 200
                assert (await c.post("/log_prob", json={"inputs": X.tolist()})).status_code == 200

    asyncio.run(scenario())


# --- shutdown and connections ---------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_then_exits_0(root: Path, workers: int) -> None:
    args = ["--drain-s", "120", "--workers", str(workers)]
    with live_server_process(root, args=args) as (url, proc), httpx.Client(base_url=url) as c:
        proc.send_signal(signal.SIGTERM)
        for _ in range(600):  # workers see the signal within the supervisor's 0.5 s poll
            ready = c.get("/readyz")
            if ready.status_code == 503:
                break
            time.sleep(0.05)  # a fast machine must not run out of polls before the signal lands
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "draining"
        # still serving while draining
        assert c.post("/log_prob", json={"inputs": X.tolist()}).status_code == 200
        proc.send_signal(signal.SIGTERM)  # a second signal ends the drain now
        assert proc.wait(timeout=60) == 0


def test_slow_request_heads_are_cut_off(root: Path) -> None:
    env = {"FLOWSERVE_HEADER_TIMEOUT_S": "1"}
    with live_server(root, env=env) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /log_prob HTTP/1.1\r\nHost: x\r\n")  # and never the rest
            assert s.recv(1024) == b""  # the server closed the connection
        with socket.create_connection((host, int(port)), timeout=30) as s:
            assert s.recv(1024) == b""  # a connection that sends nothing at all
        assert httpx.get(f"{url}/healthz").status_code == 200


# --- bulk output ----------------------------------------------------------------------------


def test_batch_score_leaves_no_output_on_failure(tmp_path: Path) -> None:
    directory, flow = build_affine_artifact(tmp_path / "models", "toy", 1)
    frame = pd.DataFrame(flow.sample(20, seed=1), columns=flow.feature_names)
    frame.loc[12, "f0"] = np.inf
    src = tmp_path / "in.csv"
    frame.to_csv(src, index=False)
    parser = argparse.ArgumentParser()
    bulk_cli.configure(parser)
    for name in ("out.parquet", "out.csv"):
        dst = tmp_path / name
        args = parser.parse_args(
            [str(src), str(dst), "--model-dir", str(directory), "--chunk-size", "5"]
        )
        assert bulk_cli.run(args) == 2
        assert not dst.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "models"]
    dst = tmp_path / "out.parquet"
    args = parser.parse_args(
        [
            str(src),
            str(dst),
            "--model-dir",
            str(directory),
            "--chunk-size",
            "5",
            "--errors",
            "coerce",
        ]
    )
    assert bulk_cli.run(args) == 0 and len(pd.read_parquet(dst)) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "models", "out.parquet"]


# --- load with injected faults --------------------------------------------------------------


def test_load_with_reloads_and_faults_loses_nothing(tmp_path: Path) -> None:
    """Concurrent clients while versions are corrupted in place, truncated, fixed, added,
    deleted and refused, each fault followed by a reload: every answer is checked against the
    closed form of the version that says it answered."""
    flows = {v: affine_flow(3, seed=10 + v) for v in (1, 2, 3, 4)}
    directories = {v: build_affine_artifact(tmp_path, "toy", v, flows[v])[0] for v in (1, 2)}
    stash = tmp_path.parent / f"{tmp_path.name}-stash"
    for v in (3, 4):
        build_affine_artifact(stash, "toy", v, flows[v])
    x = flows[1].sample(4, seed=3)
    body = {"inputs": x.tolist()}
    expected = {v: f.log_prob(x) for v, f in flows.items()}
    tally = {"requests": 0, "failed": 0, "wrong": 0, "faults": 0}
    lock = threading.Lock()
    done = threading.Event()

    def faults(url: str) -> None:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as admin:
            steps = [
                lambda: _truncate(directories[2] / FORWARD_GRAPH),  # half-copied graph
                lambda: _truncate(directories[2] / MANIFEST_FILE),  # manifest truncated
                lambda: build_affine_artifact(tmp_path, "toy", 2, flows[2]),  # fixed
                lambda: shutil.copytree(stash / "toy" / "3", tmp_path / "toy" / "3"),  # new
                lambda: _truncate(tmp_path / "toy" / "3" / MANIFEST_FILE),  # new one corrupted
                lambda: shutil.rmtree(tmp_path / "toy" / "3"),  # deleted
                lambda: _add_broken(stash / "toy" / "4", tmp_path / "toy" / "4"),  # refused
                lambda: shutil.rmtree(tmp_path / "toy" / "4"),
            ]
            while not done.is_set():
                for step in steps:
                    step()
                    assert admin.post("/admin/reload").status_code == 200
                    tally["faults"] += 1

    def client(url: str, seed: int) -> None:
        # version 2 is corrupted in place while serving: it must keep answering
        versioned = ["/models/toy/versions/1/log_prob", "/models/toy/versions/2/log_prob"]
        paths = ["/log_prob", "/models/toy/log_prob", *versioned]
        with httpx.Client(base_url=url, timeout=60) as c:
            for i in range(60):
                r = c.post(paths[(i + seed) % len(paths)], json=body)
                ok = r.status_code == 200
                right = ok and np.allclose(
                    r.json()["log_prob"], expected[r.json()["version"]], atol=1e-3
                )
                with lock:
                    tally["requests"] += 1
                    tally["failed"] += not ok
                    tally["wrong"] += ok and not right

    env = {"FLOWSERVE_ADMIN_KEYS": ADMIN["x-api-key"]}
    with live_server(tmp_path, env=env) as url:
        fault_thread = threading.Thread(target=faults, args=(url,))
        fault_thread.start()
        clients = [threading.Thread(target=client, args=(url, s)) for s in range(8)]
        for t in clients:
            t.start()
        for t in clients:
            t.join()
        done.set()
        fault_thread.join()
    print(f"load with faults: {tally}")
    assert tally["requests"] == 480 and tally["faults"] >= 8
    assert tally["failed"] == 0 and tally["wrong"] == 0, tally


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _add_broken(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    graph = target / FORWARD_GRAPH
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # checksum mismatch
    graph.write_bytes(bytes(data))
