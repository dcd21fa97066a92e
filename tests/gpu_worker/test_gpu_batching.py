"""The cross-request batcher on its own, with a recording forward pass (no model, no Temporal)."""

import asyncio
import threading

import pytest

from durabert.gpu_worker.batching import InferenceBatcher, Prediction


class Recorder:
    """A forward pass that answers each text with its length and records every pass it ran."""

    def __init__(self, fail_on: str | None = None, gate: threading.Event | None = None) -> None:
        self.passes: list[list[str]] = []
        self.fail_on = fail_on
        self.gate = gate

    def __call__(self, texts: list[str]) -> list[Prediction]:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        self.passes.append(list(texts))
        if self.fail_on in texts:
            raise RuntimeError("CUDA out of memory")
        return [Prediction(len(text), 1.0) for text in texts]


def lengths(predictions: list[Prediction]) -> list[int]:
    return [prediction.label for prediction in predictions]


async def test_a_large_request_spans_passes_in_order():
    forward = Recorder()
    batcher = InferenceBatcher(max_batch_size=3, max_wait_seconds=0)
    texts = ["a" * size for size in range(1, 9)]
    assert lengths(await batcher.classify("model", texts, forward)) == list(range(1, 9))
    assert [len(texts) for texts in forward.passes] == [3, 3, 2]


async def test_requests_arriving_together_share_passes_and_get_their_own_slices():
    forward = Recorder()
    batcher = InferenceBatcher(max_batch_size=4, max_wait_seconds=5)
    first, second = await asyncio.gather(
        batcher.classify("model", ["x", "xx", "xxx"], forward),
        batcher.classify("model", ["yyyy", "yyyyy"], forward),
    )
    assert lengths(first) == [1, 2, 3]
    assert lengths(second) == [4, 5]
    # A full pass of 4 went at once (no waiting out the 5 s), then the rest.
    assert forward.passes == [["x", "xx", "xxx", "yyyy"], ["yyyyy"]]


async def test_requests_for_other_models_never_share_a_pass():
    forward = Recorder()
    batcher = InferenceBatcher(max_batch_size=8, max_wait_seconds=0.05)
    one, two = await asyncio.gather(
        batcher.classify("model-a", ["a"], forward), batcher.classify("model-b", ["bb"], forward)
    )
    assert (lengths(one), lengths(two)) == ([1], [2])
    assert sorted(forward.passes) == [["a"], ["bb"]]


async def test_texts_arriving_during_a_pass_go_into_the_next_one():
    gate = threading.Event()
    forward = Recorder(gate=gate)
    batcher = InferenceBatcher(max_batch_size=8, max_wait_seconds=0)
    first = asyncio.create_task(batcher.classify("model", ["a"], forward))
    await asyncio.sleep(0.05)  # the first pass is running (held at the gate)
    late = [asyncio.create_task(batcher.classify("model", [f"{i}"], forward)) for i in range(3)]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *late)
    assert forward.passes == [["a"], ["0", "1", "2"]]


async def test_a_failed_pass_fails_only_the_requests_in_it():
    forward = Recorder(fail_on="boom")
    batcher = InferenceBatcher(max_batch_size=2, max_wait_seconds=1)
    doomed, fine = await asyncio.gather(
        batcher.classify("model", ["ok", "boom", "never-run"], forward),
        batcher.classify("other", ["fine"], forward),
        return_exceptions=True,
    )
    assert isinstance(doomed, RuntimeError)
    assert lengths(fine) == [4]
    assert ["never-run"] not in forward.passes  # the failed request's other texts are dropped
    assert lengths(await batcher.classify("model", ["after"], forward)) == [5]


async def test_a_cancelled_request_is_skipped():
    gate = threading.Event()
    forward = Recorder(gate=gate)
    batcher = InferenceBatcher(max_batch_size=1, max_wait_seconds=0)
    running = asyncio.create_task(batcher.classify("model", ["a"], forward))
    await asyncio.sleep(0.05)
    cancelled = asyncio.create_task(batcher.classify("model", ["never"], forward))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    gate.set()
    assert lengths(await running) == [1]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert lengths(await batcher.classify("model", ["bb"], forward)) == [2]
    assert ["never"] not in forward.passes
