"""Resources of a training attempt: memory-mapped data, out-of-memory retries, precision across devices."""

import json
import threading
from pathlib import Path

import pytest
from gpu_helpers import make_job, make_request, write_snapshot
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker import preparation
from durabert.gpu_worker.data import load_tokenized, locate_snapshot
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.gpu_worker.preparation import TrainingPlan, checkpoint_plan
from durabert.gpu_worker.training import run_training
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.models import BertFineTuneResult
from durabert.shared.settings import DurabertSettings


def settings_for(root: Path, tmp_path: Path, **extra: object) -> DurabertSettings:
    return DurabertSettings(artifact_root=root, data_dir=tmp_path / "data", log_format="json", **extra)


def manifest_of(root: Path, run_id: str = "run-1") -> dict:
    return json.loads((ArtifactStore(root).model_dir(run_id) / MODEL_MANIFEST).read_text())


@pytest.fixture(scope="module")
def dropout_free_model(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model without dropout: a batch split in two then gives the same gradients."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    config = BertConfig.from_pretrained(
        tiny_model_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    BertModel.from_pretrained(tiny_model_dir, config=config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


# -- memory-mapped splits and tokens -------------------------------------------------------------


def test_splits_and_tokens_are_memory_mapped_files_in_the_attempts_cache(tmp_path, tiny_model_dir):
    from datasets import Dataset
    from datasets.table import MemoryMappedTable
    from transformers import AutoTokenizer

    snapshot = write_snapshot(tmp_path, train_rows=300, eval_rows=20)
    files = locate_snapshot(ArtifactStore(tmp_path), snapshot)
    cache = tmp_path / "cache"
    cache.mkdir()
    train, evaluation = load_tokenized(
        files,
        snapshot,
        AutoTokenizer.from_pretrained(tiny_model_dir),
        max_seq_length=16,
        max_train_samples=100,
        seed=7,
        cache_dir=cache,
    )
    for split in (train, evaluation):
        # Backed by Arrow files that the kernel pages in and out, not by the process's heap.
        assert isinstance(split.data, MemoryMappedTable)
        assert split.cache_files
        assert all(Path(entry["filename"]).parent == cache for entry in split.cache_files)
        assert set(split.column_names) >= {"input_ids", "attention_mask", "labels"}
    # Same sample as the in-memory reading took: seeded shuffle of the whole split, then the first N.
    import pyarrow.parquet as pq

    expected = Dataset(pq.read_table(files.train)).shuffle(seed=7).select(range(100))
    assert len(train) == 100
    assert train["labels"] == expected["label"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (
        train[0]["input_ids"]
        == tokenizer(expected[0]["sentence"], truncation=True, max_length=16)["input_ids"]
    )


def test_a_label_outside_the_label_names_is_refused_without_reading_rows(tmp_path, tiny_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    snapshot = write_snapshot(tmp_path)
    files = locate_snapshot(ArtifactStore(tmp_path), snapshot)
    pq.write_table(pa.table({"sentence": ["a", "b"], "label": pa.array([1, 2], pa.int64())}), files.eval)
    with pytest.raises(ApplicationError) as info:
        load_tokenized(
            files,
            snapshot,
            AutoTokenizer.from_pretrained(tiny_model_dir),
            max_seq_length=16,
            cache_dir=tmp_path,
        )
    assert info.value.type == "ConfigurationError"
    assert "has label 2, not an id in 0..1" in info.value.message


def test_the_cache_goes_where_the_setting_says_and_is_removed_after_the_attempt(tmp_path, tiny_model_dir):
    cache_root = tmp_path / "local-disk"
    seen: list[list[Path]] = []

    def emit(event: object) -> None:
        if getattr(event, "kind", None) == "started":
            seen.append(sorted(cache_root.rglob("*.arrow")))

    settings = settings_for(tmp_path, tmp_path, gpu={"cache_dir": cache_root})
    request = make_request(tiny_model_dir, write_snapshot(tmp_path), max_steps=2)
    run_training(make_job(request, settings), emit, threading.Event())
    names = {path.name for path in seen[0]}
    assert {"train.arrow", "train-tokens.arrow", "eval.arrow", "eval-tokens.arrow"} <= names
    assert all(path.parent == cache_root / "run-1" for path in seen[0])
    assert not (cache_root / "run-1").exists()
    assert not list((ArtifactStore(tmp_path).run_dir("run-1")).rglob("*.arrow"))


# -- out of device memory ----------------------------------------------------------------------------


def test_a_smaller_plan_halves_the_device_batch_and_keeps_the_batch_size():
    assert TrainingPlan("fp16", 8).smaller() == TrainingPlan("fp16", 4, 2)
    assert TrainingPlan("fp16", 4, 2).smaller() == TrainingPlan("fp16", 2, 4)
    # Not a power of two: the largest divisor at most half, so the batch size stays exact.
    assert TrainingPlan("bf16", 6).smaller() == TrainingPlan("bf16", 3, 2)
    assert TrainingPlan("bf16", 5).smaller() == TrainingPlan("bf16", 1, 5)
    assert TrainingPlan("fp32", 1, 8).smaller() is None


def _out_of_memory_above(
    monkeypatch: pytest.MonkeyPatch, fits: int, after_step: int
) -> list[tuple[int, int]]:
    """Make every forward pass of more than ``fits`` examples run out of memory after ``after_step``."""
    import torch
    import transformers

    plans: list[tuple[int, int]] = []
    original_train, original_step = transformers.Trainer.train, transformers.Trainer.training_step

    def train(self, *args, **kwargs):
        plans.append((self.args.per_device_train_batch_size, self.args.gradient_accumulation_steps))
        return original_train(self, *args, **kwargs)

    def training_step(self, *args, **kwargs):
        if self.args.per_device_train_batch_size > fits and self.state.global_step >= after_step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train)
    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    return plans


def test_out_of_memory_trains_on_with_half_the_batch_and_twice_the_accumulation(
    tmp_path, dropout_free_model, monkeypatch
):
    options = {"max_steps": 8, "checkpoint_steps": 2, "batch_size": 8}
    reference_root = tmp_path / "reference"
    reference = run_training(
        make_job(
            make_request(dropout_free_model, write_snapshot(reference_root), **options),
            settings_for(reference_root, tmp_path),
        ),
        lambda e: None,
        threading.Event(),
    )

    # Forward passes of 8 or 4 run out of memory once step 3 is reached (checkpoint-2 is saved).
    plans = _out_of_memory_above(monkeypatch, fits=2, after_step=3)
    root = tmp_path / "oom"
    result = run_training(
        make_job(
            make_request(dropout_free_model, write_snapshot(root), **options), settings_for(root, tmp_path)
        ),
        lambda e: None,
        threading.Event(),
    )
    assert plans == [(8, 1), (4, 2), (2, 4)]
    assert result.global_step == 8
    assert result.resumed_from_step == 2  # the newest complete checkpoint, saved before the first failure
    assert (result.per_device_batch_size, result.gradient_accumulation_steps) == (2, 4)
    # Same batches per optimizer step: the same model as the run that never ran out of memory.
    assert result.eval_metrics["eval_loss"] == pytest.approx(reference.eval_metrics["eval_loss"], abs=1e-4)
    assert reference.per_device_batch_size is None
    assert "per_device_batch_size" not in reference.model_dump_json()  # older builds can read it

    manifest = manifest_of(root)
    final = manifest["attempts"][-1]
    assert (final["per_device_batch_size"], final["gradient_accumulation_steps"]) == (2, 4)
    assert final["out_of_memory_retries"] == 2
    assert manifest["resume_points"] == [2, 2]
    # The checkpoints written after the retry carry the plan that fitted, for the next attempt.
    newest = ArtifactStore(root).checkpoints_dir("run-1") / "checkpoint-8"
    assert checkpoint_plan(newest) == TrainingPlan("fp32", 2, 4)


def test_an_attempt_resuming_a_checkpoint_starts_with_the_batch_split_that_fitted(
    tmp_path, tiny_model_dir, monkeypatch
):
    plans = _out_of_memory_above(monkeypatch, fits=4, after_step=0)
    snapshot = write_snapshot(tmp_path)
    settings = settings_for(tmp_path, tmp_path)
    stop = threading.Event()

    def stop_after_step_two(event: object) -> None:
        if getattr(event, "kind", None) == "progress" and getattr(event, "step", 0) >= 2:
            stop.set()

    request = make_request(tiny_model_dir, snapshot, max_steps=6, checkpoint_steps=5, batch_size=8)
    with pytest.raises(Exception, match="stopped at step"):
        run_training(make_job(request, settings), stop_after_step_two, stop)
    resumed = run_training(make_job(request, settings, attempt=2), lambda e: None, threading.Event())
    assert plans == [(8, 1), (4, 2), (4, 2)]  # the second attempt did not run out of memory again
    assert (resumed.per_device_batch_size, resumed.gradient_accumulation_steps) == (4, 2)


@pytest.mark.parametrize(("batch_size", "tried"), [(1, [(1, 1)]), (8, [(8, 1), (4, 2), (2, 4), (1, 8)])])
def test_out_of_memory_at_one_example_per_pass_is_a_configuration_error(
    tmp_path, tiny_model_dir, monkeypatch, batch_size, tried
):
    plans = _out_of_memory_above(monkeypatch, fits=0, after_step=0)
    request = make_request(tiny_model_dir, write_snapshot(tmp_path), batch_size=batch_size, max_steps=4)
    with pytest.raises(ApplicationError) as info:
        run_training(make_job(request, settings_for(tmp_path, tmp_path)), lambda e: None, threading.Event())
    assert plans == tried
    assert info.value.type == "ConfigurationError"
    assert info.value.non_retryable
    assert f"batch size 1 per device (batch size {batch_size})" in info.value.message


# -- precision across devices ------------------------------------------------------------------------


def test_a_resume_in_another_precision_is_recorded_in_the_manifest_and_the_result(
    tmp_path, tiny_model_dir, monkeypatch
):
    snapshot = write_snapshot(tmp_path)
    settings = settings_for(tmp_path, tmp_path)
    request = make_request(tiny_model_dir, snapshot, max_steps=6, checkpoint_steps=5)
    stop = threading.Event()

    def stop_after_step_two(event: object) -> None:
        if getattr(event, "kind", None) == "progress" and getattr(event, "step", 0) >= 2:
            stop.set()

    # The first attempt trains in bf16 (as on an Ampere GPU; the CPU autocasts bf16 too) ...
    monkeypatch.setattr(preparation, "select_precision", lambda device: "bf16")
    with pytest.raises(Exception, match="stopped at step"):
        run_training(make_job(request, settings), stop_after_step_two, stop)
    # ... the retry lands on a device without it.
    monkeypatch.setattr(preparation, "select_precision", lambda device: "fp32")
    result = run_training(make_job(request, settings, attempt=2), lambda e: None, threading.Event())
    assert result.resumed_from_step is not None
    assert (result.resumed_precision, result.precision) == ("bf16", "fp32")
    manifest = manifest_of(tmp_path)
    assert manifest["precision"] == "fp32"
    assert manifest["attempts"][-1]["resumed_precision"] == "bf16"
    assert manifest["attempts"][-1]["precision"] == "fp32"
    again = BertFineTuneResult.model_validate_json(result.model_dump_json())
    assert again.resumed_precision == "bf16"
