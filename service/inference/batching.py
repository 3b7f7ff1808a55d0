"""Micro-batching: photos of concurrent requests share one ONNX Runtime call.

Requests decode and preprocess their photos in a thread pool, then :meth:`MicroBatcher.submit` each
tensor. One dedicated inference thread collects up to ``max_batch`` tensors, waiting at most
``max_wait_ms`` after the first one arrived, stacks them and calls ``session.run`` once. The event loop
never runs inference or waits on it: results come back as asyncio futures.

Waiting only pays when more photos are on their way, so by default (``eager=True``) the thread waits only
while some photo announced with :meth:`MicroBatcher.expect` is still being decoded; a lone request runs
at once. Every item carries the classifier it was preprocessed for, and a batch only mixes items of one
classifier, so a model swap never feeds a tensor to the wrong network. A failing batch is retried item
by item, so one bad tensor fails only its own request, and the thread survives every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.errors import PollinidError
from service.inference.classifier import Classifier

logger = logging.getLogger(__name__)


class InferenceError(PollinidError):
    """The network failed on a photo (never expected for a validated model)."""

    status_code = 503
    code = "inference_failed"


class BatcherStopped(PollinidError):
    status_code = 503
    code = "shutting_down"


@dataclass(frozen=True)
class InferenceResult:
    """Logits of one photo and how its batch went."""

    logits: np.ndarray
    batch_size: int
    queue_ms: float  # from submit to the start of its batch's session.run
    run_ms: float  # duration of the batch's session.run


@dataclass
class _Item:
    clf: Classifier
    x: np.ndarray
    future: asyncio.Future[InferenceResult]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


_STOP = object()


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if fut.done():  # the request was cancelled (client went away)
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


class MicroBatcher:
    """Groups concurrent inference requests into batches run by one dedicated thread.

    Args:
        max_batch: most tensors in one ``session.run``.
        max_wait_ms: longest time the first tensor of a batch waits for companions.
        eager: run a batch at once when no announced photo is still being decoded.
        on_batch: called with (batch size, run seconds) after each batch (metrics).
    """

    def __init__(self, *, max_batch: int = 16, max_wait_ms: float = 5.0, eager: bool = True,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.max_batch = int(max_batch)
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.eager = eager
        self.on_batch = on_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending = 0  # photos announced by expect() and not yet submitted
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.batches = 0
        self.items = 0

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="pollinid-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches already queued, then stop the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producers (event loop) -------------------------------------------------------------------------
    def expect(self, n: int) -> None:
        """Announce ``n`` photos now being decoded, so the thread waits for them (up to max wait)."""
        with self._pending_lock:
            self._pending += n

    def release(self, n: int) -> None:
        """Withdraw ``n`` announced photos that will not be submitted (e.g. they failed to decode)."""
        if n > 0:
            with self._pending_lock:
                self._pending = max(0, self._pending - n)

    def submit(self, clf: Classifier, x: np.ndarray, *, announced: bool = False
               ) -> asyncio.Future[InferenceResult]:
        """Queue one preprocessed photo (float32, 3 x size x size) for ``clf``; call from the event loop.

        Args:
            clf: the classifier the photo was preprocessed for (its batch runs on that session).
            x: the network input of one photo.
            announced: the photo was counted by :meth:`expect`; submitting it withdraws that count.
        """
        if self._stopping or not self.running:
            raise BatcherStopped("the service is shutting down; try again")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[InferenceResult] = loop.create_future()
        self._queue.put(_Item(clf, x, fut, loop))
        if announced:
            self.release(1)
        return fut

    async def infer(self, clf: Classifier, x: np.ndarray) -> InferenceResult:
        """Submit one photo and wait for its logits."""
        return await self.submit(clf, x)

    # -- the inference thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        carry: deque[_Item] = deque()  # items of another classifier than the batch being built
        while True:
            try:
                first = carry.popleft() if carry else self._queue.get()
                if first is _STOP:
                    break
                batch, stop = self._collect(first, carry)
                self._execute(batch)
                if stop:
                    break
            except Exception:  # never let the thread die
                logger.exception("inference loop error (continuing)")
        # Anything left is answered, never dropped.
        leftovers = list(carry)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append(item)
        for item in leftovers:
            self._resolve(item, BatcherStopped("the service is shutting down; try again"))

    def _collect(self, first: _Item, carry: deque[_Item]) -> tuple[list[_Item], bool]:
        batch = [first]
        deadline = first.enqueued + self.max_wait
        if carry:  # items set aside earlier for this classifier join first, in arrival order
            keep: deque[_Item] = deque()
            while carry:
                item = carry.popleft()
                (batch if item.clf is first.clf and len(batch) < self.max_batch else keep).append(item)
            carry.extend(keep)
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                if self.eager and self._pending <= 0:
                    break
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return batch, True
            if item.clf is not first.clf:
                carry.append(item)
                continue
            batch.append(item)
        return batch, False

    def _execute(self, batch: list[_Item]) -> None:
        clf = batch[0].clf
        t0 = time.perf_counter()
        try:
            x = batch[0].x[None] if len(batch) == 1 else np.stack([it.x for it in batch])
            logits = clf.run(x)
            if logits.ndim != 2 or logits.shape[0] != len(batch):
                raise ValueError(f"the network returned shape {logits.shape} for a batch of {len(batch)}")
        except Exception as exc:
            if len(batch) > 1:  # isolate the bad item: the others still get their answers
                logger.warning("batch of %d failed (%s); retrying one by one", len(batch), exc)
                for item in batch:
                    self._execute([item])
                return
            logger.error("inference failed on %s/%s for an input of shape %s: %s", clf.name, clf.version,
                         getattr(batch[0].x, "shape", None), exc)
            self._resolve(batch[0], InferenceError(f"inference failed: {exc}"))
            return
        run_s = time.perf_counter() - t0
        self.batches += 1
        self.items += len(batch)
        for i, item in enumerate(batch):
            result = InferenceResult(logits=logits[i].copy(), batch_size=len(batch),
                                     queue_ms=(t0 - item.enqueued) * 1000.0, run_ms=run_s * 1000.0)
            self._resolve(item, result)
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), run_s)
            except Exception:
                logger.exception("on_batch hook failed")

    @staticmethod
    def _resolve(item: _Item, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            item.loop.call_soon_threadsafe(_settle, item.future, value)
