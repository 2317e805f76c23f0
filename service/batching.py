"""Inference off the event loop, with server-side dynamic batching.

:class:`DynamicBatcher` merges concurrent small requests for the same model version and graph into
one call, like Triton's dynamic batcher: a batch closes when it reaches ``max_batch_size`` rows or
its first request has waited ``max_delay_s`` (0: take only what is already queued, so an idle
server adds no latency), and at most ``max_inflight`` batches run at once, so under load requests
queue up and leave together. Requests at least ``max_batch_size`` rows long skip the queue, and so
does a lone request (``max_delay_s`` 0, nothing queued or running, no other request this loop
turn, the last batch not a burst): it runs as it would with batching off, instead of a task and
two loop turns later.

:class:`InferenceEngine` is what routes call: ``await engine.forward(model, x)``,
``await engine.log_prob(model, x)`` and ``await engine.inverse(model, z)``; every call runs in a
worker thread (``anyio.to_thread``) with a capacity limit, so the event loop never blocks on
inference. Two exceptions to the single thread
call: tiny calls (a request, or a merged batch, of at most ``inline_max_rows`` rows whose measured
cost is under ``inline_max_s``) run inline on the event loop, since a thread hop costs more than
they do; and large requests are split into parts that run in parallel
on the worker threads (ONNX Runtime releases the GIL while it computes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
from anyio import CapacityLimiter

from .runtime import CHUNK_ROWS, FlowModel

__all__ = ["DynamicBatcher", "InferenceEngine", "ModelStats"]

Outputs = tuple[np.ndarray, ...]
GraphCall = Callable[[FlowModel, np.ndarray], Outputs]

# Smallest part a large request is split into: below this a thread hop is not worth it.
MIN_PART_ROWS = 8192


def _forward(model: FlowModel, x: np.ndarray) -> Outputs:
    return model.forward(x)


def _log_prob(model: FlowModel, x: np.ndarray) -> Outputs:
    return (model.log_prob(x),)


def _inverse(model: FlowModel, z: np.ndarray) -> Outputs:
    return (model.decode(z),)


def _score(model: FlowModel, x: np.ndarray) -> Outputs:
    log_prob, folds = model.score_log_probs(x)
    assert folds is not None  # only models with a score graph take this role
    return log_prob, folds


@dataclass
class _Item:
    model: FlowModel
    rows: np.ndarray
    future: asyncio.Future[Outputs]
    arrived: float


class DynamicBatcher:
    """Merges concurrent row requests for one graph of one model version."""

    def __init__(
        self,
        call: GraphCall,
        *,
        limiter: CapacityLimiter,
        max_batch_size: int = 256,
        max_delay_s: float = 0.0,
        max_inflight: int = 2,
        on_batch: Callable[[int, int], None] | None = None,
        inline: Callable[[FlowModel, int], bool] | None = None,
    ) -> None:
        self._call = call
        self._inline = inline  # (model, rows) -> run this merged batch on the event loop?
        self._limiter = limiter
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._slots = asyncio.Semaphore(max_inflight)
        self._on_batch = on_batch  # (rows, requests) of every batch run
        self._pending: list[_Item] = []
        self._pending_rows = 0
        self._full = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._turn_mark = False  # a request took the idle fast path in this loop turn
        self._bursting = False  # the last merged batch held more than one request
        self._alone = 0  # idle-path requests in progress

    async def submit(self, model: FlowModel, rows: np.ndarray) -> Outputs:
        """The graph's outputs for ``rows`` (computed alone or within a merged batch)."""
        if len(rows) >= self.max_batch_size:
            return await self._run_alone(model, rows)
        loop = asyncio.get_running_loop()
        if self._idle():
            # A lone request: the queue would hand it back unmerged, a task and two loop turns
            # later. The mark (cleared on the next loop turn) sends requests that arrive in the
            # same turn, a burst under load, to the queue, where they merge.
            self._turn_mark = True
            loop.call_soon(self._clear_turn_mark)
            self._alone += 1
            try:  # inline: no await inside, so no loop turn either
                return await self._run_alone(model, rows, self._runs_inline_rows(model, len(rows)))
            finally:
                self._alone -= 1
        item = _Item(model, rows, loop.create_future(), loop.time())
        self._pending.append(item)
        self._pending_rows += len(rows)
        if self._pending_rows >= self.max_batch_size:
            self._full.set()
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())
        return await item.future

    def _idle(self) -> bool:
        """Nothing queued, running or arrived this loop turn, the last batch not a burst, and
        no delay asked for."""
        return (
            self.max_delay_s == 0
            and not self._turn_mark
            and not self._bursting
            and self._dispatcher is None  # (queued requests always have a dispatcher)
            and not self._running
            and self._alone == 0
        )

    def _clear_turn_mark(self) -> None:
        self._turn_mark = False

    async def _run_alone(self, model: FlowModel, rows: np.ndarray, inline: bool = False) -> Outputs:
        if self._on_batch is not None:
            self._on_batch(len(rows), 1)
        if inline:
            return self._call(model, rows)
        return await anyio.to_thread.run_sync(self._call, model, rows, limiter=self._limiter)

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = 0
        while self._pending and (
            not batch or rows + len(self._pending[0].rows) <= self.max_batch_size
        ):
            item = self._pending.pop(0)
            batch.append(item)
            rows += len(item.rows)
        self._pending_rows -= rows
        if self._pending_rows < self.max_batch_size:
            self._full.clear()
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if self.max_delay_s > 0 and self._pending_rows < self.max_batch_size:
                    wait = self._pending[0].arrived + self.max_delay_s - loop.time()
                    if wait > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(self._full.wait(), wait)
                await self._slots.acquire()
                batch = self._take()
                # Under load every turn brings a burst: let the next turn's first request queue
                # too (one graph call per turn, not two). A batch of one means the load is gone.
                self._bursting = len(batch) > 1
                if batch and self._runs_inline(batch):
                    await self._run(batch)  # no await inside: no task, no extra loop turn
                elif batch:
                    # Keep a reference: the loop holds tasks only weakly.
                    task = asyncio.create_task(self._run(batch))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
                else:
                    self._slots.release()
        finally:
            self._dispatcher = None

    def _runs_inline(self, batch: list[_Item]) -> bool:
        return self._runs_inline_rows(batch[0].model, sum(len(item.rows) for item in batch))

    def _runs_inline_rows(self, model: FlowModel, rows: int) -> bool:
        return self._inline is not None and self._inline(model, rows)

    async def _run(self, batch: list[_Item]) -> None:
        try:
            rows = batch[0].rows if len(batch) == 1 else np.concatenate([b.rows for b in batch])
            if self._on_batch is not None:
                self._on_batch(len(rows), len(batch))
            if self._runs_inline(batch):
                outputs = self._call(batch[0].model, rows)
            else:
                outputs = await anyio.to_thread.run_sync(
                    self._call, batch[0].model, rows, limiter=self._limiter
                )
        except Exception as e:  # every request of the batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(e)
            return
        finally:
            self._slots.release()
        start = 0
        for item in batch:
            stop = start + len(item.rows)
            if not item.future.done():  # a cancelled (disconnected) request is skipped
                item.future.set_result(tuple(o[start:stop] for o in outputs))
            start = stop


@dataclass
class ModelStats:
    """Counters of one loaded model version in this process, in the terms of the Open Inference
    Protocol's statistics extension: requests (success/fail, with their total time), rows
    (``inference_count``) and graph calls (``execution_count``, with their compute time).

    No lock: requests are counted on the event loop; graph calls, which finish on worker
    threads, are appended to a deque (atomic) and summed when read. A lock shared with the
    worker threads had halved throughput under load (the event loop waited on it for the GIL).
    """

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    inference_count: int = 0
    last_inference_ms: int = 0
    _execution_count: int = 0
    _compute_ns: int = 0
    _executions: collections.deque[int] = field(default_factory=collections.deque, repr=False)

    def request(self, rows: int, ok: bool, ns: int) -> None:
        if ok:
            self.success_count += 1
            self.success_ns += ns
            self.inference_count += rows
        else:
            self.fail_count += 1
            self.fail_ns += ns
        self.last_inference_ms = time.time_ns() // 1_000_000

    def execution(self, ns: int) -> None:
        self._executions.append(ns)

    def _fold(self) -> None:
        while self._executions:
            self._compute_ns += self._executions.popleft()
            self._execution_count += 1

    @property
    def execution_count(self) -> int:
        self._fold()
        return self._execution_count

    @property
    def compute_ns(self) -> int:
        self._fold()
        return self._compute_ns


def _call_cost_s(model: FlowModel, rows: int, role: str) -> float:
    # Stand-ins for models (tests) may not measure themselves: never inline those.
    cost = getattr(model, "call_cost_s", None)
    if cost is None:
        return math.inf
    return cost(rows, role) if role in ("inverse", "score") else cost(rows)


class InferenceEngine:
    """Runs model graphs in worker threads, through a per-model :class:`DynamicBatcher` when
    batching is on. Batchers are keyed weakly by model, so unloaded versions are forgotten."""

    def __init__(
        self,
        *,
        batching: bool = True,
        max_batch_size: int = 256,
        max_delay_s: float = 0.0,
        threads: int = 2,
        on_batch: Callable[[int, int], None] | None = None,
        inline_max_rows: int = 0,
        inline_max_s: float = 0.0,
    ) -> None:
        self.batching = batching
        self.inline_max_rows = inline_max_rows
        self.inline_max_s = inline_max_s
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.threads = threads
        self.on_batch = on_batch
        self._limiter: CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batchers: weakref.WeakKeyDictionary[FlowModel, dict[str, DynamicBatcher]] = (
            weakref.WeakKeyDictionary()
        )
        self._stats: weakref.WeakKeyDictionary[FlowModel, ModelStats] = weakref.WeakKeyDictionary()
        roles = {"forward": _forward, "log_prob": _log_prob, "inverse": _inverse, "score": _score}
        self._calls = {role: self._timed(call) for role, call in roles.items()}

    def stats(self, model: FlowModel) -> ModelStats:
        """The counters of ``model`` (created empty on first use)."""
        stats = self._stats.get(model)
        if stats is None:
            stats = self._stats.setdefault(model, ModelStats())
        return stats

    def _timed(self, call: GraphCall) -> GraphCall:
        def timed(model: FlowModel, rows: np.ndarray) -> Outputs:
            start = time.perf_counter_ns()
            outputs = call(model, rows)
            self.stats(model).execution(time.perf_counter_ns() - start)
            return outputs

        return timed

    @property
    def limiter(self) -> CapacityLimiter:
        # Limiters, queues and events belong to one event loop: start afresh on a new one (an
        # app served again, as test clients do).
        loop = asyncio.get_running_loop()
        if self._limiter is None or loop is not self._loop:
            self._loop = loop
            self._limiter = CapacityLimiter(self.threads)
            self._batchers = weakref.WeakKeyDictionary()
        return self._limiter

    def _batcher(self, model: FlowModel, role: str, call: GraphCall) -> DynamicBatcher:
        limiter = self.limiter
        per_model = self._batchers.setdefault(model, {})
        batcher = per_model.get(role)
        if batcher is None:
            batcher = per_model[role] = DynamicBatcher(
                call,
                limiter=limiter,
                max_batch_size=self.max_batch_size,
                max_delay_s=self.max_delay_s,
                max_inflight=self.threads,
                on_batch=self.on_batch,
                inline=functools.partial(self._inline_ok, role=role),
            )
        return batcher

    def _inline_ok(self, model: FlowModel, rows: int, role: str = "forward") -> bool:
        # For small models a thread hop (and the GIL hand-over) costs more than the inference.
        return rows <= self.inline_max_rows and _call_cost_s(model, rows, role) <= self.inline_max_s

    async def _graph(self, model: FlowModel, rows: np.ndarray, role: str) -> Outputs:
        start = time.perf_counter_ns()
        ok = False
        try:
            outputs = await self._route(model, rows, role, self._calls[role])
            ok = True
            return outputs
        finally:
            self.stats(model).request(len(rows), ok, time.perf_counter_ns() - start)

    async def _route(
        self, model: FlowModel, rows: np.ndarray, role: str, call: GraphCall
    ) -> Outputs:
        n = len(rows)
        if self.threads > 1 and n >= 2 * MIN_PART_ROWS:
            return await self._split(model, rows, call)
        if self.batching:  # merged batches run inline under the same rule as single requests
            return await self._batcher(model, role, call).submit(model, rows)
        if self._inline_ok(model, n, role):
            return call(model, rows)
        return await anyio.to_thread.run_sync(call, model, rows, limiter=self.limiter)

    async def _split(self, model: FlowModel, rows: np.ndarray, call: GraphCall) -> Outputs:
        """Run a large request as parts on all worker threads (at most ``threads`` at once,
        the limiter's order keeping other requests' calls interleaved), then join them."""
        part = min(CHUNK_ROWS, max(MIN_PART_ROWS, math.ceil(len(rows) / self.threads)))
        starts = range(0, len(rows), part)
        results: list[Outputs] = [()] * len(starts)
        limiter = self.limiter

        async def run_part(i: int, start: int) -> None:
            piece = rows[start : start + part]
            if self.on_batch is not None:
                self.on_batch(len(piece), 1)
            results[i] = await anyio.to_thread.run_sync(call, model, piece, limiter=limiter)

        async with anyio.create_task_group() as tg:
            for i, start in enumerate(starts):
                tg.start_soon(run_part, i, start)
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))

    async def forward(self, model: FlowModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(z, log_prob)`` for validated float32 rows."""
        z, lp = await self._graph(model, x, "forward")
        return z, lp

    async def log_prob(self, model: FlowModel, x: np.ndarray) -> np.ndarray:
        """``log_prob`` alone for validated float32 rows (/log_prob and /score)."""
        return (await self._graph(model, x, "log_prob"))[0]

    async def score_log_probs(
        self, model: FlowModel, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(log_prob, fold_log_prob)`` for validated float32 rows (/score, V2 infer): from
        the model's score graph when it has one, else ``(log_prob, None)``."""
        if not getattr(model, "has_score_graph", False):
            return await self.log_prob(model, x), None
        log_prob, folds = await self._graph(model, x, "score")
        return log_prob, folds

    async def inverse(self, model: FlowModel, z: np.ndarray) -> np.ndarray:
        """Raw rows for validated float32 latents."""
        return (await self._graph(model, z, "inverse"))[0]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Any other blocking call (sampling, reloads) in a worker thread."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self.limiter)
