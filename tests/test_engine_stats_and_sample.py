"""Batching with no delay merges what is queued; the engine's per-model statistics (counted
without a lock); /sample's inverse graph runs through the engine like /log_prob."""

from __future__ import annotations

import asyncio
import threading

import anyio
import numpy as np
from fastapi.testclient import TestClient

from flowserve.service.batching import DynamicBatcher, ModelStats


class RecordingModel:
    """Stands in for a FlowModel: forward doubles rows; records each call's size and thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((len(x), threading.get_ident()))
        return 2 * x, x.sum(axis=1)


def _call(model: RecordingModel, x: np.ndarray) -> tuple[np.ndarray, ...]:
    return model.forward(x)


def test_requests_queued_in_one_loop_turn_leave_together() -> None:
    model = RecordingModel()

    async def main() -> list[tuple[np.ndarray, ...]]:
        batcher = DynamicBatcher(
            _call,  # type: ignore[arg-type]
            limiter=anyio.CapacityLimiter(1),
            max_batch_size=64,
        )
        xs = [np.full((i + 1, 2), float(i), dtype=np.float32) for i in range(10)]
        return await asyncio.gather(*(batcher.submit(model, x) for x in xs))  # type: ignore[arg-type]

    results = asyncio.run(main())
    for i, (z, s) in enumerate(results):
        np.testing.assert_array_equal(z, np.full((i + 1, 2), 2.0 * i))
        np.testing.assert_array_equal(s, np.full(i + 1, 2.0 * i))
    # The first finds the batcher idle and runs at once (as with batching off); the nine that
    # arrive in the same loop turn leave together.
    assert [rows for rows, _ in model.calls] == [1, 54]


def test_statistics_fold_executions_from_worker_threads() -> None:
    stats = ModelStats()
    threads = [
        threading.Thread(target=lambda: [stats.execution(10) for _ in range(1000)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.request(5, True, 100)
    stats.request(2, False, 50)
    assert (stats.execution_count, stats.compute_ns) == (4000, 40_000)
    assert (stats.success_count, stats.inference_count, stats.fail_count) == (1, 5, 1)
    assert stats.last_inference_ms > 0


def test_sample_runs_the_inverse_graph_through_the_engine(toy_client: TestClient) -> None:
    state = toy_client.app.state.flowserve  # type: ignore[attr-defined]
    mv = state.repository.snapshot.resolve()
    stats = state.engine.stats(mv.model)
    for n in (3, 50):  # noise drawn on the event loop (n <= 8), then on a worker thread
        before = stats.inference_count
        got = toy_client.post("/sample", json={"n": n, "seed": 11}).json()["samples"]
        np.testing.assert_allclose(got, mv.model.sample(n, seed=11), rtol=1e-6)
        assert stats.inference_count == before + n  # counted as the engine's graph call
        again = toy_client.post("/sample", json={"n": n, "seed": 11}).json()["samples"]
        assert again == got
