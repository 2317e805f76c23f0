"""Prometheus metrics of one app (its own registry, so several apps can live in one process).

With several uvicorn workers (``flowserve serve --workers N``) the CLI runs the workers in
prometheus-client's multiprocess mode (:func:`multiprocess_metrics_dir`): every worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them over all workers,
whichever worker answers. Gauges report the largest value among live workers.

Names: ``flowserve_requests_total{endpoint,model,version,status}``,
``flowserve_request_duration_seconds{endpoint,model}``, ``flowserve_rows_total{endpoint,model}``,
``flowserve_errors_total{code}``, ``flowserve_model_load_failures_total{model}``,
``flowserve_batch_rows`` / ``flowserve_batch_requests`` (server-side batching),
``flowserve_models_ready`` and ``flowserve_models_failed``; served-score drift per model version
(:mod:`flowserve.service.drift`): ``flowserve_drift_ks``, ``flowserve_drift_ks_critical``,
``flowserve_drift_psi``, ``flowserve_drift_flag_rate``, ``flowserve_drift_expected_flag_rate``,
``flowserve_drift_window_rows`` and ``flowserve_drift_alert`` (1 when the status is ``drift``),
labelled ``{model,version}`` (with several workers: the largest over live workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .drift import DriftSummary

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "ServiceMetrics",
    "active_multiprocess_dir",
    "mark_dead_workers",
    "multiprocess_metrics_dir",
]

log = logging.getLogger("flowserve.service.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files of gauges in a "live*" mode, one per process: ``gauge_<mode>_<pid>.db``.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")

_DRIFT_GAUGES = {
    "ks": "KS statistic, served vs calibration scores (sliding window)",
    "ks_critical": "5% critical value of the drift KS statistic for the window",
    "psi": "Population stability index of served p-values (sliding window)",
    "flag_rate": "Share of served rows flagged (sliding window)",
    "expected_flag_rate": "Flag rate the requested false-positive rates imply (sliding window)",
    "window_rows": "Rows in the drift window",
    "alert": "1 when the drift window shows drift (KS above critical or PSI above 0.25)",
}
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 65536)


def active_multiprocess_dir() -> Path | None:
    """The multiprocess directory this process writes its metric values to, or None.

    prometheus-client picks file-backed values when it is first imported with
    ``PROMETHEUS_MULTIPROC_DIR`` set; a variable set later does not change this process.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path or values.ValueClass is values.MutexValue:
        return None
    return Path(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def mark_dead_workers(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that no longer run (a worker that crashed and was
    restarted by uvicorn); counters keep their values. Returns the pids marked dead."""
    dead = set()
    for file in path.glob("gauge_live*_*.db"):
        m = _LIVE_GAUGE_FILE.fullmatch(file.name)
        if m and not _pid_alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in dead:
        mark_process_dead(pid, str(path))
    return sorted(dead)


@contextlib.contextmanager
def multiprocess_metrics_dir() -> Iterator[Path]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for worker processes started inside the block.

    An operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used (its stale ``*.db`` files removed at
    start, the directory kept); otherwise a fresh temporary directory is made and removed at exit.
    Must be entered before the workers start, so that they import prometheus-client with it set.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's counts must not leak into this one
            stale.unlink()
        yield path
        return
    path = Path(tempfile.mkdtemp(prefix="flowserve-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    log.debug("multiprocess metrics in %s", path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


class ServiceMetrics:
    """The service's counters, histograms and gauges.

    In multiprocess mode (see :func:`active_multiprocess_dir`) :meth:`render` aggregates every
    worker's values; otherwise it renders this app's own registry.
    """

    def __init__(self) -> None:
        self.multiprocess_dir = active_multiprocess_dir()
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "flowserve_requests",
            "Model requests answered",
            ["endpoint", "model", "version", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "flowserve_request_duration_seconds",
            "Time to answer a model request",
            ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.rows = Counter(
            "flowserve_rows",
            "Rows scored, encoded, decoded or sampled",
            ["endpoint", "model"],
            registry=r,
        )
        self.errors = Counter("flowserve_errors", "Error responses by code", ["code"], registry=r)
        self.load_failures = Counter(
            "flowserve_model_load_failures", "Artifacts refused at load", ["model"], registry=r
        )
        self.batch_rows = Histogram(
            "flowserve_batch_rows", "Rows per inference call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "flowserve_batch_requests",
            "Requests merged into one inference call",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        # Labelled children by label values, filled on first use (per-request hot path).
        self._requests: dict[tuple[str, str, int, str], Any] = {}
        self._latency: dict[tuple[str, str], Any] = {}
        self._rows: dict[tuple[str, str], Any] = {}
        # Every worker loads the same root; "livemax" shows one number, from live workers only.
        self.models_ready = Gauge(
            "flowserve_models_ready",
            "Model versions ready",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.models_failed = Gauge(
            "flowserve_models_failed",
            "Model versions that failed to load",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift = {
            field: Gauge(
                f"flowserve_drift_{field}",
                text,
                ["model", "version"],
                registry=r,
                multiprocess_mode="livemax",
            )
            for field, text in _DRIFT_GAUGES.items()
        }
        self._drift_children: dict[tuple[str, int], dict[str, Any]] = {}

    def observe_drift(self, model: str, version: int, summary: DriftSummary) -> None:
        """Publish a model version's drift window (see :mod:`flowserve.service.drift`)."""
        children = self._drift_children.get((model, version))
        if children is None:
            children = self._drift_children[model, version] = {
                field: gauge.labels(model, str(version)) for field, gauge in self.drift.items()
            }
        values = summary.to_dict()
        values["alert"] = float(summary.status == "drift")
        for field, child in children.items():
            child.set(values[field])

    def request(self, endpoint: str, model: str, version: int, status: str, seconds: float) -> None:
        """Count one answered model request and its latency."""
        key = (endpoint, model, version, status)
        counter = self._requests.get(key)
        if counter is None:  # ``labels()`` locks and validates: look each child up once
            counter = self._requests[key] = self.requests.labels(
                endpoint, model, str(version), status
            )
        counter.inc()
        hist = self._latency.get((endpoint, model))
        if hist is None:
            hist = self._latency[endpoint, model] = self.latency.labels(endpoint, model)
        hist.observe(seconds)

    def rows_done(self, endpoint: str, model: str, rows: int) -> None:
        """Count rows scored, encoded, decoded or sampled."""
        counter = self._rows.get((endpoint, model))
        if counter is None:
            counter = self._rows[endpoint, model] = self.rows.labels(endpoint, model)
        counter.inc(rows)

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)

    def error(self, code: str) -> None:
        self.errors.labels(code).inc()

    def load_failure(self, name: str, version: int, reason: str) -> None:
        self.load_failures.labels(name).inc()

    def set_models(self, ready: int, failed: int) -> None:
        """Record how many model versions are ready and failed in this process."""
        self.models_ready.set(ready)
        self.models_failed.set(failed)

    def render(self) -> bytes:
        """The Prometheus text exposition: all workers' values summed in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        mark_dead_workers(self.multiprocess_dir)
        # A fresh registry per scrape, as prometheus-client documents for multiprocess mode.
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        return generate_latest(registry)

    def close(self) -> None:
        """This worker is stopping: its live gauges no longer count (counters keep theirs)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), str(self.multiprocess_dir))
