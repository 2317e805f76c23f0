"""``flowserve serve --workers 2``: /metrics sums every worker's counts, whichever worker answers.

A real server process on 127.0.0.1 (free port, always stopped by ``live_server``). Its workers'
metric files live in a temporary directory the CLI makes under ``TMPDIR`` and removes at exit.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from flowserve.service.metrics import mark_dead_workers
from tests.live_server import live_server
from tests.service_fixtures import build_affine_artifact

REQUESTS_PER_ROUND = 30
MAX_ROUNDS = 10  # bounded: a round of fresh connections has reached both workers so far


def log_prob_count(samples: list[tuple[str, dict[str, str], float]]) -> float:
    return sum(
        value
        for name, labels, value in samples
        if name == "flowserve_requests_total"
        and labels.get("endpoint") == "log_prob"
        and labels.get("status") == "200"
    )


def scraped_count(text: str) -> float:
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    return log_prob_count(samples)


def counts_per_worker(metrics_dir: Path, scratch: Path) -> dict[int, float]:
    """Each worker's own /log_prob count, read from its counter file alone."""
    out = {}
    for file in sorted(metrics_dir.glob("counter_*.db")):
        pid = int(file.stem.split("_")[1])
        alone = scratch / str(pid)
        alone.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        out[pid] = log_prob_count(
            [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
        )
    return out


@pytest.mark.slow
def test_metrics_sum_over_workers(tmp_path: Path) -> None:
    _, flow = build_affine_artifact(tmp_path / "models", "toy", 1)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    x = flow.sample(2, 0).tolist()
    with live_server(tmp_path / "models", {"TMPDIR": str(tmp)}, args=["--workers", "2"]) as url:
        (metrics_dir,) = tmp.glob("flowserve-metrics-*")
        sent = 0
        per_worker: dict[int, float] = {}
        for _ in range(MAX_ROUNDS):
            for _ in range(REQUESTS_PER_ROUND):  # a new connection each: the kernel picks a worker
                r = httpx.post(f"{url}/log_prob", json={"inputs": x}, timeout=10)
                assert r.status_code == 200, r.text
                sent += 1
            per_worker = counts_per_worker(metrics_dir, tmp_path / "scratch")
            if sum(1 for n in per_worker.values() if n > 0) >= 2:
                break
        assert len(per_worker) == 2, per_worker
        assert sum(per_worker.values()) == sent
        # Both workers answered requests, so each one alone holds fewer than ``sent``: only an
        # aggregate over both can report ``sent``, whichever worker answers the scrape.
        assert all(0 < n < sent for n in per_worker.values()), per_worker
        for _ in range(8):
            text = httpx.get(f"{url}/metrics", timeout=10).text
            assert scraped_count(text) == sent
            assert "flowserve_models_ready 1.0" in text
        assert mark_dead_workers(metrics_dir) == []  # both workers are alive
    assert not metrics_dir.exists(), "the CLI removes its metrics directory at exit"


def test_mark_dead_workers_drops_live_gauges_only(tmp_path: Path) -> None:
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f"gauge_livemax_{dead_pid}.db", f"counter_{dead_pid}.db", "gauge_livemax_1.db"):
        (tmp_path / name).write_bytes(b"")
    assert mark_dead_workers(tmp_path) == [dead_pid]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"counter_{dead_pid}.db",  # counts of a dead worker still count
        "gauge_livemax_1.db",  # pid 1 is alive
    ]


@pytest.mark.slow
def test_every_worker_follows_a_new_version(tmp_path: Path) -> None:
    """With several workers, a new version on disk reaches all of them (they watch the root)."""
    root = tmp_path / "models"
    build_affine_artifact(root, "toy", 1)
    env = {"FLOWSERVE_WATCH_INTERVAL_S": "0.2"}
    with live_server(root, env, args=["--workers", "2"]) as url:
        build_affine_artifact(root, "toy", 2)
        deadline = time.monotonic() + 20
        versions: list[int] = []
        while time.monotonic() < deadline:
            # fresh connections, so the kernel spreads them over both workers
            versions = [
                httpx.get(f"{url}/models/toy", timeout=10).json()["default_version"]
                for _ in range(REQUESTS_PER_ROUND)
            ]
            if set(versions) == {2}:
                break
            time.sleep(0.2)
        assert set(versions) == {2}, versions
