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


def _without_waiting(coro):
    """Run ``coro`` to its end if it never suspends; None if it waits (on a queue, say)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    return None


def test_lone_request_skips_the_queue_and_a_burst_still_merges():
    model = CountingModel()
    batches: list[tuple[int, int]] = []

    async def main() -> None:
        batcher = DynamicBatcher(
            _call,
            limiter=anyio.CapacityLimiter(1),
            max_batch_size=64,
            on_batch=lambda rows, requests: batches.append((rows, requests)),
            inline=lambda m, rows: True,
        )
        x = np.arange(6, dtype=np.float32).reshape(3, 2)
        for _ in range(3):  # one at a time: each runs at once, none waits on the dispatcher
            z, _ = _without_waiting(batcher.submit(model, x))
            np.testing.assert_array_equal(z, 2 * x)
            await asyncio.sleep(0)  # the next request comes on a later loop turn
        assert model.calls == [3, 3, 3] and batches == [(3, 1)] * 3
        # Ten requests in one loop turn (as a loaded server parses them): the first runs alone,
        # the other nine arrive in the same turn and leave as one merged batch.
        model.calls.clear()
        xs = [np.full((1, 2), float(i), dtype=np.float32) for i in range(10)]
        results = await asyncio.gather(*(batcher.submit(model, x) for x in xs))
        for i, (z, _) in enumerate(results):
            np.testing.assert_array_equal(z, np.full((1, 2), 2.0 * i))
        assert model.calls == [1, 9]
        # Right after a burst the load is likely to go on: the next turn's requests all queue
        # and leave together (one graph call for the turn).
        await asyncio.sleep(0)
        model.calls.clear()
        await asyncio.gather(*(batcher.submit(model, x) for x in xs[:4]))
        assert model.calls == [4]
        # A batch of one says the burst is over; after it, lone requests go straight through.
        model.calls.clear()
        assert _without_waiting(batcher.submit(model, xs[0])) is None  # still queues, alone
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for x in xs[:2]:
            assert _without_waiting(batcher.submit(model, x)) is not None  # straight through
            await asyncio.sleep(0)
        assert model.calls == [1, 1, 1]

    asyncio.run(main())


def test_lone_threaded_request_runs_alone_and_later_ones_queue_behind_it():
    model = CountingModel()

    async def main() -> None:
        # Not inline: the lone request goes straight to a worker thread; requests arriving
        # while it runs queue and merge instead of each taking a thread of their own.
        batcher = DynamicBatcher(_call, limiter=anyio.CapacityLimiter(1), max_batch_size=64)
        first = asyncio.ensure_future(batcher.submit(model, np.ones((2, 2), dtype=np.float32)))
        await asyncio.sleep(0)  # the first is now in its thread
        rest = [batcher.submit(model, np.ones((1, 2), dtype=np.float32)) for _ in range(5)]
        await asyncio.gather(first, *rest)
        assert model.calls[0] == 2 and sum(model.calls) == 7 and len(model.calls) <= 3

    asyncio.run(main())
