"""Inference: the model loads once for repeated calls, predicts what ``transformers.pipeline`` predicts,
and concurrent requests share forward passes yet each gets what it would get alone."""

import asyncio
import os
import shutil
import threading

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.gpu_memory import InferenceMemoryPolicy
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.gpu_worker.training import run_training
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.models import BertInferenceRequest
from durabert.shared.settings import DurabertSettings

TEXTS = ["the film was wonderful", "the script felt dull", "a lovely score", "boring pacing", "superb cast"]


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory, tiny_model_dir):
    """An artifact store holding one finished run, ``served``."""
    root = tmp_path_factory.mktemp("served")
    snapshot = write_snapshot(root, train_rows=64)
    settings = DurabertSettings(artifact_root=root, data_dir=root / "data")
    request = make_request(tiny_model_dir, snapshot, run_id="served", max_steps=8, checkpoint_steps=8)
    run_training(make_job(request, settings), lambda e: None, threading.Event())
    return root


def activities_for(root, cache_size: int = 2) -> GpuActivities:
    return GpuActivities(
        DurabertSettings(artifact_root=root, data_dir=root / "data", gpu={"inference_cache_size": cache_size})
    )


async def infer(activities, run_id="served", texts=TEXTS, max_seq_length=128):
    request = BertInferenceRequest(run_id=run_id, texts=texts, max_seq_length=max_seq_length, use_gpu=False)
    return await ActivityEnvironment().run(activities.run_bert_inference, request)


async def test_model_loads_once_and_matches_pipeline(trained_root):
    from transformers import pipeline

    activities = activities_for(trained_root)
    first = await infer(activities)
    second = await infer(activities)
    assert activities.cache.loads == 1
    assert second.predicted_labels == first.predicted_labels
    assert second.confidences == first.confidences
    classify = pipeline(
        "text-classification", model=str(ArtifactStore(trained_root).model_dir("served")), device="cpu"
    )
    expected = classify(TEXTS)
    assert first.predicted_label_names == [item["label"] for item in expected]
    assert first.confidences == pytest.approx([item["score"] for item in expected], abs=1e-5)
    assert first.label_names == ["negative", "positive"]
    assert first.device == "cpu"
    assert first.texts == TEXTS


async def test_retrained_model_is_reloaded_and_cache_evicts_least_recent(trained_root):
    activities = activities_for(trained_root, cache_size=1)
    store = ArtifactStore(trained_root)
    other = store.model_dir("other")
    if not other.exists():
        shutil.copytree(store.model_dir("served"), other)
    await infer(activities)
    await infer(activities, run_id="other")
    await infer(activities)  # evicted by "other" with a cache of one
    assert activities.cache.loads == 3
    manifest = store.model_dir("served") / MODEL_MANIFEST
    stat = manifest.stat()
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a new model version
    await infer(activities)
    assert activities.cache.loads == 4


async def test_run_without_a_finished_model_is_not_found(trained_root):
    with pytest.raises(ApplicationError) as info:
        await infer(activities_for(trained_root), run_id="never-trained")
    assert info.value.type == "ArtifactNotFoundError"
    assert info.value.non_retryable
    assert "never-trained" in info.value.message


async def test_concurrent_requests_share_passes_and_each_gets_its_own_answer(trained_root):
    settings = DurabertSettings(
        artifact_root=trained_root,
        data_dir=trained_root / "data",
        inference={"max_batch_size": 8, "max_wait_ms": 1000},
    )
    activities = GpuActivities(settings)
    requests = [TEXTS[index:] + TEXTS[:index] for index in range(5)] + [["a lovely, lovely score"] * 11]
    alone = [await infer(activities, texts=texts) for texts in requests]
    passes_alone = activities.batcher.stats.passes
    together = await asyncio.gather(*(infer(activities, texts=texts) for texts in requests))
    for single, shared in zip(alone, together, strict=True):
        assert shared.texts == single.texts
        assert shared.predicted_labels == single.predicted_labels
        assert shared.predicted_label_names == single.predicted_label_names
        # Other batch-mates pad to other lengths: the same class, probabilities equal to float noise.
        assert shared.confidences == pytest.approx(single.confidences, abs=1e-5)
    # 36 texts in passes of at most 8: 5 passes when shared, against 7 one request at a time.
    assert activities.batcher.stats.passes - passes_alone == 5
    assert activities.batcher.stats.largest_pass == 8


async def test_truncation_lengths_never_share_a_pass(trained_root):
    activities = activities_for(trained_root)
    short, full = await asyncio.gather(
        infer(activities, texts=["superb cast " * 20], max_seq_length=8),
        infer(activities, texts=["superb cast " * 20], max_seq_length=128),
    )
    assert activities.batcher.stats.passes == 2
    assert len(short.predicted_labels) == len(full.predicted_labels) == 1


class SpyPolicy(InferenceMemoryPolicy):
    """The real policy, recording which hooks inference calls with which device."""

    def __init__(self) -> None:
        super().__init__(0.25)
        self.calls: list[tuple[str, str]] = []

    def before_inference(self, device):
        self.calls.append(("before_inference", device))
        super().before_inference(device)

    def guarded(self, device, work):
        self.calls.append(("guarded", device))
        return super().guarded(device, work)

    def after_batch(self, device):
        self.calls.append(("after_batch", device))
        super().after_batch(device)


async def test_inference_goes_through_the_gpu_memory_policy(trained_root):
    activities = activities_for(trained_root)
    spy = SpyPolicy()
    activities.memory = activities.cache.memory = spy
    await infer(activities)
    await infer(activities)
    # Capped once before the model's first load; every pass guarded, then released if training runs.
    assert spy.calls == [("before_inference", "cpu")] + [("guarded", "cpu"), ("after_batch", "cpu")] * 2
