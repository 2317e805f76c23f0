"""InferenceEngine: tiny calls of cheap models run inline, others in worker threads; large
requests are split into parts run in parallel and joined back in order."""

from __future__ import annotations

import asyncio
import math
import threading

import numpy as np

from flowserve.service.batching import MIN_PART_ROWS, InferenceEngine
from flowserve.service.runtime import load_flow_model
from tests.service_fixtures import affine_flow, build_affine_artifact


class RecordingModel:
    """Stands in for a FlowModel: forward doubles rows; records call sizes and threads."""

    def __init__(self, cost_s: float | None = None) -> None:
        self.calls: list[int] = []
        self.threads: list[int] = []
        self._cost_s = cost_s
        if cost_s is not None:
            self.call_cost_s = lambda rows: self._cost_s

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(x))
        self.threads.append(threading.get_ident())
        return 2 * x, x.sum(axis=1)


def _forward_on(model: RecordingModel, x: np.ndarray, **kw: object) -> tuple[np.ndarray, ...]:
    async def go() -> tuple[np.ndarray, ...]:
        engine = InferenceEngine(**kw)  # type: ignore[arg-type]
        return await engine.forward(model, x)  # type: ignore[arg-type]

    return asyncio.run(go())


def test_cheap_tiny_requests_run_inline_others_in_a_thread():
    x = np.ones((2, 3), dtype=np.float32)
    main = threading.get_ident()
    for batching in (True, False):  # a merged batch follows the same rule
        cheap = RecordingModel(cost_s=1e-5)
        _forward_on(cheap, x, batching=batching, inline_max_rows=8, inline_max_s=1e-3)
        assert cheap.threads == [main]
    costly = RecordingModel(cost_s=1.0)
    _forward_on(costly, x, batching=False, inline_max_rows=8, inline_max_s=1e-3)
    assert costly.threads != [main]
    unmeasured = RecordingModel()
    _forward_on(unmeasured, x, batching=True, inline_max_rows=8, inline_max_s=1e-3)
    assert unmeasured.threads != [main]
    too_many = RecordingModel(cost_s=1e-5)
    _forward_on(too_many, np.ones((9, 3), np.float32), inline_max_rows=8, inline_max_s=1e-3)
    assert too_many.threads != [main]


def test_large_requests_are_split_and_joined_in_order():
    n = 3 * MIN_PART_ROWS + 5
    x = np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32)
    for batching in (True, False):
        model = RecordingModel()
        z, lp = _forward_on(model, x, batching=batching, threads=2)
        assert len(model.calls) > 1 and sum(model.calls) == n
        np.testing.assert_array_equal(z, 2 * x)
        np.testing.assert_array_equal(lp, x.sum(axis=1))
    single = RecordingModel()
    _forward_on(single, x, threads=1)
    assert single.calls == [n]


def test_warm_up_measures_the_call_cost(tmp_path):
    directory, _ = build_affine_artifact(tmp_path, "toy", 1, affine_flow(3, seed=0))
    model = load_flow_model(directory)
    cost = model.call_cost_s(1)
    assert math.isfinite(cost) and cost >= 0
    assert model.call_cost_s(8) >= cost
