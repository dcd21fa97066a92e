"""Training without Temporal: kill after the first checkpoint and resume, final model, config errors."""

import json
import threading

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker import checkpoints
from durabert.gpu_worker.events import CheckpointEvent, DoneEvent, TrainingStopped
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.gpu_worker.model_loading import load_model_and_tokenizer
from durabert.gpu_worker.supervisor import ChildExited, TrainingChild
from durabert.gpu_worker.training import run_training
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.settings import DurabertSettings

pytestmark = pytest.mark.slow

LONG = {"num_epochs": 3}  # 256 rows / batch 8 x 3 epochs = 96 steps: room to kill mid-run


async def drain(child: TrainingChild) -> None:
    while True:
        await child.next_event(timeout=30)


def settings_for(root, tmp_path) -> DurabertSettings:
    return DurabertSettings(artifact_root=root, data_dir=tmp_path / "data", log_format="json")


async def test_killed_run_resumes_from_complete_checkpoint_and_matches_uninterrupted(
    tmp_path, tiny_model_dir
):
    # Uninterrupted reference run, in this process.
    root_a = tmp_path / "a"
    snapshot = write_snapshot(root_a, train_rows=256, eval_rows=32)
    request = make_request(tiny_model_dir, snapshot, **LONG)
    reference = run_training(
        make_job(request, settings_for(root_a, tmp_path)), lambda e: None, threading.Event()
    )

    # Same run in a child process, SIGKILLed right after its first checkpoint event.
    root_b = tmp_path / "b"
    write_snapshot(root_b, train_rows=256, eval_rows=32)
    settings_b = settings_for(root_b, tmp_path)
    child = TrainingChild(make_job(request, settings_b))
    await child.start()
    first = None
    try:
        while first is None:
            event = await child.next_event(timeout=120)
            assert not isinstance(event, DoneEvent), "training finished before it could be killed"
            if isinstance(event, CheckpointEvent):
                first = event
                child.process.kill()
        with pytest.raises(ChildExited):
            await drain(child)
    finally:
        child.close()
    assert first.step == 4
    store = ArtifactStore(root_b)
    killed_at = [c.step for c in checkpoints.list_checkpoints(store.checkpoints_dir("run-1"))]
    assert killed_at, "the killed attempt left no checkpoint"
    assert not store.model_dir("run-1").exists()

    # Second attempt resumes from the newest complete checkpoint and ends where the reference did.
    resumed = run_training(make_job(request, settings_b, attempt=2), lambda e: None, threading.Event())
    newest_complete = max(step for step in killed_at if step % 4 == 0)
    assert resumed.resumed_from_step is not None
    assert first.step <= resumed.resumed_from_step <= newest_complete
    assert resumed.global_step == reference.global_step == 96
    assert resumed.eval_metrics["eval_loss"] == pytest.approx(reference.eval_metrics["eval_loss"], abs=1e-4)
    assert reference.resumed_from_step is None

    model_dir = store.model_dir("run-1")
    manifest = json.loads((model_dir / MODEL_MANIFEST).read_text())
    assert manifest["resume_points"] == [resumed.resumed_from_step]
    assert [a["activity_attempt"] for a in manifest["attempts"]] == [1, 2]
    assert manifest["snapshot"]["snapshot_id"] == snapshot.snapshot_id
    assert (model_dir / "loss_curve.png").stat().st_size > 0
    assert not list(model_dir.parent.glob(".model-*"))
    # Rotation kept at most save_total_limit complete checkpoints.
    assert len(checkpoints.list_checkpoints(store.checkpoints_dir("run-1"))) <= 2

    from transformers import pipeline

    # The published folder is a working classifier that learnt the toy data.
    assert resumed.eval_metrics["eval_accuracy"] >= 0.9
    classify = pipeline("text-classification", model=str(model_dir), device="cpu")
    answers = classify(
        ["the film was wonderful and the cast felt superb", "the story was dull and the pacing felt awful"]
    )
    assert [answer["label"] for answer in answers] == ["positive", "negative"]


def test_stop_request_saves_a_checkpoint_and_returns_early(tmp_path, tiny_model_dir):
    snapshot = write_snapshot(tmp_path, train_rows=256)
    request = make_request(tiny_model_dir, snapshot, checkpoint_steps=1000, max_steps=500)
    stop = threading.Event()

    def emit(event):
        if getattr(event, "kind", None) == "progress" and event.step >= 3:
            stop.set()

    with pytest.raises(TrainingStopped) as stopped:
        run_training(make_job(request, settings_for(tmp_path, tmp_path)), emit, stop)
    outcome = stopped.value
    assert outcome.checkpoint is not None
    saved = ArtifactStore(tmp_path).resolve(outcome.checkpoint)
    assert checkpoints.is_complete(saved)
    assert checkpoints.checkpoint_step(saved) == outcome.step < 500


def test_label_count_mismatch_is_a_configuration_error(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    three = tmp_path / "three-labels"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).save_pretrained(three)
    with pytest.raises(ApplicationError) as info:
        load_model_and_tokenizer(str(three), str(three), ["negative", "positive"])
    assert info.value.type == "ConfigurationError"
    assert info.value.non_retryable
    assert "3 labels" in info.value.message


def test_unknown_hub_model_offline_is_a_configuration_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ApplicationError) as info:
        load_model_and_tokenizer("nobody/no-such-model", "nobody/no-such-model", ["a", "b"])
    assert info.value.type == "ConfigurationError"
    assert "nobody/no-such-model" in info.value.message


def test_missing_snapshot_and_model_folder_fail_before_training(tmp_path, tiny_model_dir):
    snapshot = write_snapshot(tmp_path)
    settings = settings_for(tmp_path, tmp_path)
    missing_model = make_request(tmp_path / "no-such-model", snapshot)
    with pytest.raises(ApplicationError) as info:
        run_training(make_job(missing_model, settings), lambda e: None, threading.Event())
    assert info.value.type == "ConfigurationError"
    assert "config.model_name" in info.value.message
    (tmp_path / "snapshots" / snapshot.snapshot_id / "eval.parquet").unlink()
    with pytest.raises(ApplicationError) as info:
        run_training(
            make_job(make_request(tiny_model_dir, snapshot), settings), lambda e: None, threading.Event()
        )
    assert info.value.type == "ArtifactNotFoundError"
    assert "eval.parquet" in info.value.message


# 8 steps end on an epoch boundary (64 rows, batch 8); 12 end mid-epoch, where resuming the
# Trainer from its final checkpoint would take a 13th step.
@pytest.mark.parametrize("max_steps", [8, 12])
def test_training_a_finished_run_again_republishes_from_its_final_checkpoint(
    tmp_path, tiny_model_dir, max_steps
):
    snapshot = write_snapshot(tmp_path)
    settings = settings_for(tmp_path, tmp_path)
    request = make_request(tiny_model_dir, snapshot, max_steps=max_steps, checkpoint_steps=4)
    first = run_training(make_job(request, settings), lambda e: None, threading.Event())
    again = run_training(make_job(request, settings), lambda e: None, threading.Event())
    assert first.resumed_from_step is None
    assert again.resumed_from_step == again.global_step == max_steps
    assert again.eval_metrics["eval_loss"] == pytest.approx(first.eval_metrics["eval_loss"], abs=1e-6)
    manifest = json.loads((ArtifactStore(tmp_path).model_dir("run-1") / MODEL_MANIFEST).read_text())
    assert manifest["resume_points"] == [max_steps]


def test_continuing_a_finished_run_to_more_steps_trains_on_from_its_final_checkpoint(
    tmp_path, tiny_model_dir
):
    snapshot = write_snapshot(tmp_path)
    settings = settings_for(tmp_path, tmp_path)
    first = run_training(
        make_job(make_request(tiny_model_dir, snapshot, max_steps=8), settings),
        lambda e: None,
        threading.Event(),
    )
    # The config names its source with a credential: it must not reach the model manifest.
    source = "https://reader:s3cr3t-token@data.example/train.jsonl?sig=abc123"
    longer = make_request(tiny_model_dir, snapshot, max_steps=12, continue_run=True, data_files=source)
    extended = run_training(make_job(longer, settings), lambda e: None, threading.Event())
    assert first.global_step == 8
    assert extended.resumed_from_step == 8
    assert extended.global_step == 12
    assert extended.training_time_seconds > 0
    manifest = json.loads((ArtifactStore(tmp_path).model_dir("run-1") / MODEL_MANIFEST).read_text())
    assert manifest["config"]["max_steps"] == 12
    assert manifest["max_steps"] == 12
    written = (ArtifactStore(tmp_path).model_dir("run-1") / MODEL_MANIFEST).read_text()
    assert "s3cr3t-token" not in written
    assert "abc123" not in written
    assert "data.example/train.jsonl" in written


def _train_in_rungs(tmp_path, tiny_model_dir, name: str, rungs: list[int], **config: object):
    """Train one run to each rung's steps in turn (continuing from its own checkpoint); its weights."""
    root = tmp_path / name
    snapshot = write_snapshot(root)
    settings = settings_for(root, tmp_path)
    for rung, steps in enumerate(rungs):
        request = make_request(
            tiny_model_dir, snapshot, max_steps=steps, checkpoint_steps=4, continue_run=rung > 0, **config
        )
        result = run_training(make_job(request, settings), lambda e: None, threading.Event())
        assert result.global_step == steps
    from safetensors.torch import load_file

    return load_file(ArtifactStore(root).model_dir("run-1") / "model.safetensors")


def test_a_run_trained_in_rungs_on_the_full_schedule_ends_as_the_full_run(tmp_path, tiny_model_dir):
    # Successive halving trains a trial to 4 steps, then on to 8: told the whole schedule
    # (lr_schedule_steps), the rungs train exactly as one 8-step run would.
    whole = _train_in_rungs(tmp_path, tiny_model_dir, "whole", [8])
    rungs = _train_in_rungs(tmp_path, tiny_model_dir, "rungs", [4, 8], lr_schedule_steps=8)
    # Without it each rung decays the rate to zero at its own end, a different training.
    squeezed = _train_in_rungs(tmp_path, tiny_model_dir, "squeezed", [4, 8])
    import torch

    assert rungs.keys() == whole.keys() == squeezed.keys()
    assert all(torch.allclose(rungs[name], whole[name], atol=1e-5) for name in whole)
    assert not all(torch.allclose(squeezed[name], whole[name], atol=1e-4) for name in whole)


def test_a_schedule_shorter_than_the_run_is_refused(tmp_path, tiny_model_dir):
    snapshot = write_snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"lr_schedule_steps \(8\) must be at least max_steps \(12\)"):
        make_request(tiny_model_dir, snapshot, max_steps=12, lr_schedule_steps=8)


# Out-of-memory retries (half the per-device batch, twice the accumulation): test_gpu_resources.py.
