"""Cross-request batching for online inference: concurrent requests for one model share forward passes.

Each inference activity hands its texts to the batcher and awaits its own predictions. Requests
wait in one queue per model key (the warm model and the request's ``max_seq_length``). One loop on
the worker's event loop serves them, a forward pass at a time (one device, one pass: a second
concurrent pass would only split the same cores or the same GPU):

1. it picks the key whose oldest request has waited longest (no model starves another);
2. when fewer than ``max_batch_size`` texts wait for it, it waits up to ``max_wait`` after that
   oldest request arrived for more to come; texts that arrived while the previous pass ran are
   already late and go at once, so under load passes run back to back, full, with no added wait;
3. it takes up to ``max_batch_size`` texts in arrival order (a large request spans several passes),
   runs the pass in a thread so the event loop keeps polling and heartbeating, and hands each
   request its slice once all its texts are done.

A pass that raises fails every request that had texts in it (their remaining texts are dropped);
other requests go on. A request whose activity is cancelled is skipped. The loop ends when nothing
waits and starts again with the next request, so no task outlives its work.

No Temporal and no torch here: the pass itself is a callable the caller gives
(:func:`durabert.gpu_worker.inference.classify_texts`).
"""

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from durabert.shared.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The model's answer for one text."""

    label: int
    """Predicted class id."""
    confidence: float
    """Softmax probability of the predicted class."""


ForwardPass = Callable[[list[str]], list[Prediction]]
"""Classifies a list of texts in one pass (blocking; runs in a thread)."""


@dataclass(eq=False)
class _Waiting:
    """One request's texts, its progress through passes, and where its answer goes."""

    texts: list[str]
    forward: ForwardPass
    future: "asyncio.Future[list[Prediction]]"
    arrived: float
    taken: int = 0
    """Texts handed to passes so far."""
    results: list[Prediction] = field(default_factory=list)

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken


@dataclass
class BatchStats:
    """What the batcher has done so far (tests, benchmarks and logs read it)."""

    passes: int = 0
    """Forward passes run."""
    texts: int = 0
    """Texts classified."""
    largest_pass: int = 0
    """Most texts in one pass."""


class InferenceBatcher:
    """Gathers concurrent requests for the same model into shared forward passes."""

    def __init__(self, max_batch_size: int, max_wait_seconds: float) -> None:
        """Create an idle batcher.

        Args:
            max_batch_size: Most texts in one forward pass.
            max_wait_seconds: Longest the oldest waiting request waits for others to fill its pass.
        """
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max_wait_seconds
        self.stats = BatchStats()
        self._queues: dict[Hashable, deque[_Waiting]] = {}
        self._arrival = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    async def classify(self, key: Hashable, texts: list[str], forward: ForwardPass) -> list[Prediction]:
        """Classify texts in passes shared with other requests of the same key.

        Args:
            key: Requests with equal keys may share a pass (same model, same truncation).
            texts: The request's texts.
            forward: Runs one pass for this key (all requests of a key must give equivalent ones).

        Returns:
            One prediction per text, in order.

        Raises:
            Exception: Whatever the forward pass raised for a pass holding some of these texts.
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting(list(texts), forward, loop.create_future(), loop.time())
        self._queues.setdefault(key, deque()).append(waiting)
        self._arrival.set()
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._serve())
        return await waiting.future

    async def _serve(self) -> None:
        """Run passes until nothing waits."""
        while (key := self._oldest_key()) is not None:
            await self._fill(key)
            batch = self._take(key)
            if batch:
                await self._run_pass(batch)

    def _oldest_key(self) -> Hashable | None:
        """The key whose first live request arrived earliest; drops finished and cancelled requests."""
        oldest: tuple[float, Hashable] | None = None
        for key in list(self._queues):
            queue = self._queues[key]
            while queue and queue[0].future.done():
                queue.popleft()  # cancelled, or failed by an earlier pass
            if not queue:
                del self._queues[key]
            elif oldest is None or queue[0].arrived < oldest[0]:
                oldest = (queue[0].arrived, key)
        return None if oldest is None else oldest[1]

    async def _fill(self, key: Hashable) -> None:
        """Wait, up to the oldest request's deadline, until a full pass of texts waits for ``key``."""
        loop = asyncio.get_running_loop()
        deadline = self._queues[key][0].arrived + self.max_wait_seconds
        while self._waiting_texts(key) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            self._arrival.clear()
            try:
                await asyncio.wait_for(self._arrival.wait(), remaining)
            except TimeoutError:
                return

    def _waiting_texts(self, key: Hashable) -> int:
        return sum(waiting.left for waiting in self._queues.get(key, ()) if not waiting.future.done())

    def _take(self, key: Hashable) -> list[tuple[_Waiting, int, int]]:
        """Take up to a pass of texts for ``key`` in arrival order: (request, start, end) slices."""
        batch: list[tuple[_Waiting, int, int]] = []
        room = self.max_batch_size
        queue = self._queues.get(key, deque())
        for waiting in queue:
            if room == 0:
                break
            if waiting.future.done() or waiting.left == 0:
                continue
            count = min(room, waiting.left)
            batch.append((waiting, waiting.taken, waiting.taken + count))
            waiting.taken += count
            room -= count
        while queue and (queue[0].left == 0 or queue[0].future.done()):
            queue.popleft()  # fully taken: its answer comes from the pass(es) already holding it
        return batch

    async def _run_pass(self, batch: list[tuple[_Waiting, int, int]]) -> None:
        """Run one pass in a thread and hand each request its slice."""
        texts = [text for waiting, start, end in batch for text in waiting.texts[start:end]]
        try:
            predictions = await asyncio.to_thread(batch[0][0].forward, texts)
        except Exception as exc:
            log.warning("inference pass failed", texts=len(texts), error=str(exc))
            for waiting, _, _ in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            return
        self.stats.passes += 1
        self.stats.texts += len(texts)
        self.stats.largest_pass = max(self.stats.largest_pass, len(texts))
        # Per pass, at DEBUG: how full passes run under a given load (benchmarks read it).
        log.debug("inference pass", texts=len(texts), requests=len(batch), passes=self.stats.passes)
        offset = 0
        for waiting, start, end in batch:
            waiting.results.extend(predictions[offset : offset + end - start])
            offset += end - start
            if len(waiting.results) == len(waiting.texts) and not waiting.future.done():
                waiting.future.set_result(waiting.results)
