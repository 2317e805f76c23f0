"""The batcher's idle fast path (a lone request skips the queue, no slower than no batching),
and /sample's inverse graph run through the engine like /log_prob."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import anyio
import numpy as np
from fastapi.testclient import TestClient

from flowserve.service.app import create_app
from flowserve.service.batching import DynamicBatcher
from flowserve.service.settings import ServiceSettings
from tests.service_fixtures import affine_flow, build_affine_artifact


class RecordingModel:
    """Stands in for a FlowModel: forward doubles rows; records each call's size and thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((len(x), threading.get_ident()))
        return 2 * x, x.sum(axis=1)


def _call(model: RecordingModel, x: np.ndarray) -> tuple[np.ndarray, ...]:
    return model.forward(x)


def _batcher(inline: bool, **kwargs: object) -> tuple[DynamicBatcher, list[tuple[int, int]]]:
    batches: list[tuple[int, int]] = []
    batcher = DynamicBatcher(
        _call,  # type: ignore[arg-type]
        limiter=anyio.CapacityLimiter(1),
        max_batch_size=64,
        on_batch=lambda rows, requests: batches.append((rows, requests)),
        inline=lambda model, rows: inline,
        **kwargs,  # type: ignore[arg-type]
    )
    return batcher, batches


def test_a_lone_request_skips_the_queue() -> None:
    loop_thread = threading.get_ident()
    for inline in (True, False):
        model = RecordingModel()

        async def main(inline: bool = inline, model: RecordingModel = model) -> None:
            batcher, batches = _batcher(inline)
            z, _ = await batcher.submit(model, np.ones((3, 2), dtype=np.float32))  # type: ignore[arg-type]
            np.testing.assert_array_equal(z, 2 * np.ones((3, 2)))
            assert batcher._dispatcher is None and not batcher._pending  # no task, no queue
            assert batches == [(3, 1)]

        asyncio.run(main())
        [(rows, thread)] = model.calls
        assert rows == 3 and (thread == loop_thread) is inline


def test_requests_arriving_while_one_computes_are_merged() -> None:
    model = RecordingModel()

    async def main() -> list[tuple[np.ndarray, ...]]:
        batcher, _ = _batcher(inline=False)
        xs = [np.full((i + 1, 2), float(i), dtype=np.float32) for i in range(10)]
        return await asyncio.gather(*(batcher.submit(model, x) for x in xs))  # type: ignore[arg-type]

    results = asyncio.run(main())
    for i, (z, s) in enumerate(results):
        np.testing.assert_array_equal(z, np.full((i + 1, 2), 2.0 * i))
        np.testing.assert_array_equal(s, np.full(i + 1, 2.0 * i))
    # The first ran at once; the nine that came while it computed left together.
    assert sorted(rows for rows, _ in model.calls) == [1, 54]


def test_with_a_batching_delay_a_lone_request_still_waits_for_company() -> None:
    model = RecordingModel()

    async def main() -> None:
        batcher, batches = _batcher(inline=True, max_delay_s=0.001)
        await batcher.submit(model, np.ones((1, 2), dtype=np.float32))  # type: ignore[arg-type]
        assert batches == [(1, 1)]

    asyncio.run(main())
    assert [rows for rows, _ in model.calls] == [1]


def test_sample_runs_the_inverse_graph_through_the_engine(tmp_path: Path) -> None:
    build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=2))
    with TestClient(create_app(ServiceSettings(model_root=tmp_path))) as client:
        state = client.app.state.flowserve  # type: ignore[attr-defined]
        mv = state.repository.snapshot.resolve()
        stats = state.engine.stats(mv.model)
        for n in (3, 50):  # noise drawn on the event loop (n <= 8), then on a worker thread
            before = stats.inference_count
            got = client.post("/sample", json={"n": n, "seed": 11}).json()["samples"]
            np.testing.assert_allclose(got, mv.model.sample(n, seed=11), rtol=1e-6)
            assert stats.inference_count == before + n  # counted as the engine's graph call
            again = client.post("/sample", json={"n": n, "seed": 11}).json()["samples"]
            assert again == got


def test_inline_only_for_a_request_alone_on_the_server() -> None:
    """Under load (other HTTP requests in progress) even cheap calls go to worker threads, where
    ONNX Runtime computes while the event loop parses the next requests."""
    from flowserve.service.batching import InferenceEngine

    class Cheap(RecordingModel):
        def call_cost_s(self, rows: int, direction: str = "forward") -> float:
            return 1e-6

    loop_thread = threading.get_ident()
    for in_flight, inline in ((1, True), (5, False)):
        for batching in (True, False):
            model = Cheap()

            async def go(model: Cheap = model, n: int = in_flight, b: bool = batching) -> None:
                engine = InferenceEngine(
                    batching=b, inline_max_rows=8, inline_max_s=1e-3, in_flight=lambda: n
                )
                await engine.forward(model, np.ones((2, 3), dtype=np.float32))  # type: ignore[arg-type]

            asyncio.run(go())
            [(_, thread)] = model.calls
            assert (thread == loop_thread) is inline, (in_flight, batching)


def test_under_load_even_the_first_request_queues() -> None:
    """With other requests in progress the fast path is off: requests queue and merge."""
    for alone, calls in ((True, [1, 1]), (False, [2])):
        model = RecordingModel()

        async def main(alone: bool = alone, model: RecordingModel = model) -> None:
            batcher, _ = _batcher(inline=False, alone=lambda: alone)
            x = np.ones((1, 2), dtype=np.float32)
            await asyncio.gather(batcher.submit(model, x), batcher.submit(model, x))  # type: ignore[arg-type]

        asyncio.run(main())
        assert sorted(rows for rows, _ in model.calls) == calls
