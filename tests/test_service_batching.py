"""The dynamic batcher merges concurrent requests and splits results back, in order."""

from __future__ import annotations

import asyncio

import anyio
import numpy as np

from flowserve.service.batching import DynamicBatcher


class CountingModel:
    """Stands in for a FlowModel: forward doubles rows and records each call's batch size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(x))
        return 2 * x, x.sum(axis=1)


def _call(model, x):
    return model.forward(x)


def test_concurrent_requests_are_merged_and_split():
    model = CountingModel()

    async def main() -> list[tuple[np.ndarray, ...]]:
        batcher = DynamicBatcher(
            _call, limiter=anyio.CapacityLimiter(1), max_batch_size=64, max_delay_s=0.05
        )
        xs = [np.full((i + 1, 2), float(i), dtype=np.float32) for i in range(10)]
        return await asyncio.gather(*(batcher.submit(model, x) for x in xs))

    results = asyncio.run(main())
    for i, (z, s) in enumerate(results):
        np.testing.assert_array_equal(z, np.full((i + 1, 2), 2.0 * i))
        np.testing.assert_array_equal(s, np.full(i + 1, 2.0 * i))
    assert sum(model.calls) == sum(range(1, 11)) and len(model.calls) < 10


def test_large_requests_bypass_and_errors_propagate():
    model = CountingModel()

    async def main() -> None:
        batcher = DynamicBatcher(_call, limiter=anyio.CapacityLimiter(2), max_batch_size=4)
        z, _ = await batcher.submit(model, np.ones((10, 2), dtype=np.float32))
        assert z.shape == (10, 2) and model.calls == [10]

        def boom(m, x):
            raise RuntimeError("graph failed")

        failing = DynamicBatcher(boom, limiter=anyio.CapacityLimiter(1), max_batch_size=4)
        results = await asyncio.gather(
            *(failing.submit(model, np.ones((1, 2))) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(main())
