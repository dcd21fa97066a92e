"""The contract: every model survives the data converter and every rule names its field."""

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.shared.errors import describe_validation_error
from durabert.shared.models import (
    MAX_INFERENCE_TEXTS,
    MAX_INFERENCE_TEXTS_BYTES,
    BertFineTuneConfig,
    BertFineTuneRequest,
    BertFineTuneResult,
    BertInferenceRequest,
    BertInferenceResult,
    CheckpointInfo,
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    TrainingHeartbeat,
    TrainingProgress,
)

NOW = datetime.now(UTC).isoformat()
CONFIG = BertFineTuneConfig(dataset_name="json", data_files=["a.jsonl", "b.jsonl"], run_id="run-1")
SNAPSHOT = DatasetSnapshotResult(
    snapshot_id="s1",
    dataset_name="json",
    num_train_samples=8,
    num_eval_samples=2,
    data_hash="ab" * 32,
    snapshot_timestamp=NOW,
    snapshot_path="snapshots/s1",
    label_names=["neg", "pos"],
    text_field="sentence",
    label_field="label",
)
CHECKPOINT = CheckpointInfo(epoch=0.5, step=10, path="runs/run-1/checkpoints/checkpoint-10", timestamp=NOW)
EXAMPLES: list[BaseModel] = [
    CONFIG,
    CONFIG.snapshot_request("run-1"),
    SNAPSHOT,
    CHECKPOINT,
    BertFineTuneRequest(run_id="run-1", config=CONFIG, dataset_snapshot=SNAPSHOT, attempt=2),
    BertFineTuneResult(
        run_id="run-1",
        config=CONFIG,
        train_loss=0.3,
        eval_metrics={"eval_loss": 0.2, "eval_accuracy": 0.9},
        training_time_seconds=3.5,
        num_parameters=100,
        total_checkpoints_saved=2,
        global_step=20,
        resumed_from_step=10,
        attempts=2,
        device="cpu",
        model_path="runs/run-1/model",
        label_names=["neg", "pos"],
    ),
    BertInferenceRequest(run_id="run-1", texts=["good", "bad"]),
    BertInferenceResult(
        run_id="run-1",
        texts=["good"],
        predicted_labels=[1],
        predicted_label_names=["pos"],
        confidences=[0.9],
        label_names=["neg", "pos"],
    ),
    TrainingProgress(run_id="run-1", stage="training", step=5, latest_checkpoint=CHECKPOINT),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_the_data_converter(model: BaseModel) -> None:
    payloads = pydantic_data_converter.payload_converter.to_payloads([model])
    (back,) = pydantic_data_converter.payload_converter.from_payloads(payloads, [type(model)])
    assert back == model


def test_config_is_startable_from_plain_json() -> None:
    # What `temporal workflow start --input '{...}'` sends.
    raw = b'{"dataset_name": "json", "data_files": "d.jsonl", "max_steps": 10, "run_id": "abc"}'
    config = BertFineTuneConfig.model_validate_json(raw)
    assert config.max_steps == 10
    assert config.model_name == "sentence-transformers/all-MiniLM-L6-v2"


def _error(model: type[BaseModel], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return describe_validation_error(info.value)


BASE = {"dataset_name": "json", "data_files": "d.jsonl"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"learning_rate": 0}, "learning_rate"),
        ({"learning_rate": -1e-5}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_seq_length": 7}, "max_seq_length"),
        ({"max_seq_length": 100_000}, "max_seq_length"),
        ({"eval_fraction": 0}, "eval_fraction"),
        ({"eval_fraction": 1}, "eval_fraction"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"max_steps": 0}, "max_steps"),
        ({"checkpoint_steps": 0}, "checkpoint_steps"),
        ({"heartbeat_timeout_seconds": 1}, "heartbeat_timeout_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_train_samples": -1}, "max_train_samples"),
        ({"task_type": "regression"}, "task_type"),
        ({"learning_rat": 0.1}, "learning_rat"),
        ({"timeouts": {"training_timeout_hours": 0}}, "timeouts.training_timeout_hours"),
        ({"data_files": None}, "data_files"),
    ],
)
def test_config_rule_names_the_field(overrides: dict[str, Any], field: str) -> None:
    message = _error(BertFineTuneConfig, BASE | overrides)
    assert message.startswith(f"{field}: ")


def test_unknown_key_is_refused_with_a_hint() -> None:
    assert "learning_rat: unknown field" in _error(BertFineTuneConfig, BASE | {"learning_rat": 0.1})


@pytest.mark.parametrize(
    "run_id",
    ["../x", "a/b", ".hidden", "x" * 200, "UPPER", "ends-", "a..b", "", "-lead", "sp ace"],
)
def test_unsafe_run_ids_are_refused(run_id: str) -> None:
    message = _error(BertFineTuneConfig, BASE | {"run_id": run_id})
    assert message.startswith("run_id")
    assert "Kubernetes" in message or "at least" in message or "string" in message


@pytest.mark.parametrize("run_id", ["a", "run-1", "exp_2.v3", "x" * 63])
def test_safe_run_ids_are_accepted(run_id: str) -> None:
    assert BertFineTuneConfig.model_validate(BASE | {"run_id": run_id}).run_id == run_id


def test_inference_texts_are_bounded() -> None:
    assert _error(BertInferenceRequest, {"run_id": "r", "texts": []}).startswith("texts")
    too_many = {"run_id": "r", "texts": ["x"] * (MAX_INFERENCE_TEXTS + 1)}
    assert _error(BertInferenceRequest, too_many).startswith("texts")
    huge = _error(BertInferenceRequest, {"run_id": "r", "texts": ["ok", "x" * 10_001]})
    assert huge.startswith("texts.1")


@pytest.mark.parametrize(("character", "encoded"), [("a", "2,560,769"), ("日", "7,680,769")])
def test_inference_texts_are_refused_on_their_encoded_size(character: str, encoded: str) -> None:
    # 256 texts of 10,000 characters pass the count and length limits but not Temporal's 2 MB.
    message = _error(BertInferenceRequest, {"run_id": "r", "texts": [character * 10_000] * 256})
    assert message.startswith("texts")
    assert f"the texts encode to {encoded} bytes, over the 1,048,576" in message


@pytest.mark.parametrize("character", ["a", "日", '"'])  # a quote doubles in JSON: "\""
def test_every_accepted_request_and_its_answer_fit_a_payload(character: str) -> None:
    width = len(pydantic_data_converter.payload_converter.to_payloads([[character]])[0].data) - 4
    per_text = (MAX_INFERENCE_TEXTS_BYTES // MAX_INFERENCE_TEXTS - 4) // width  # quotes and a comma each
    texts = [character * per_text] * MAX_INFERENCE_TEXTS
    request = BertInferenceRequest(run_id="r", texts=texts)  # just under the limit: accepted
    labels = [f"label-{index}" for index in range(100)]
    answer = BertInferenceResult(
        run_id="r",
        texts=texts,
        predicted_labels=[99] * len(texts),
        predicted_label_names=[labels[-1]] * len(texts),
        confidences=[0.123456789012345] * len(texts),
        label_names=labels,
    )
    for value in (request, answer):
        (payload,) = pydantic_data_converter.payload_converter.to_payloads([value])
        assert len(payload.data) < 2 * 1024 * 1024


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside", "runs/../../x", "~/x"])
def test_artifact_paths_must_stay_relative(path: str) -> None:
    message = _error(CheckpointInfo, {"epoch": 0, "step": 1, "path": path, "timestamp": NOW})
    assert message.startswith("path")


def test_snapshot_request_carries_the_source_and_sampling() -> None:
    config = BertFineTuneConfig.model_validate(
        BASE | {"text_field": "sentence", "max_train_samples": 100, "max_eval_samples": 10, "seed": 7}
    )
    request = config.snapshot_request("run-9")
    assert isinstance(request, DatasetSnapshotRequest)
    assert (request.run_id, request.text_field, request.seed) == ("run-9", "sentence", 7)
    assert (request.max_train_samples, request.max_eval_samples) == (100, 10)
    assert request.data_files == "d.jsonl"


def test_one_name_per_idea_old_names_still_load() -> None:
    old = DatasetSnapshotRequest.model_validate(
        {"run_id": "r", "dataset_name": "glue", "dataset_config": "sst2", "max_samples": 5}
    )
    assert (old.dataset_config_name, old.max_train_samples) == ("sst2", 5)
    assert "dataset_config" not in old.model_dump()
    assert "max_samples" not in old.model_dump()


def _checkpoint(step: int) -> CheckpointInfo:
    return CheckpointInfo(epoch=0.5, step=step, path=f"runs/r/checkpoints/checkpoint-{step}", timestamp="t")


def test_live_heartbeat_merges_into_the_durable_progress() -> None:
    durable = TrainingProgress(
        run_id="r", stage="training", step=40, attempt=2, latest_checkpoint=_checkpoint(40)
    )
    # A new attempt that has not started its Trainer yet reports step 0: the known step stays.
    starting = durable.with_heartbeat(TrainingHeartbeat(phase="loading", attempt=2))
    assert (starting.step, starting.phase) == (40, "loading")
    assert starting.latest_checkpoint == _checkpoint(40)
    live = durable.with_heartbeat(
        TrainingHeartbeat(
            phase="training", step=47, loss=0.25, max_steps=200, attempt=2, latest_checkpoint=_checkpoint(45)
        )
    )
    assert (live.step, live.loss, live.max_steps, live.phase) == (47, 0.25, 200, "training")
    assert live.latest_checkpoint == _checkpoint(45)
    # A heartbeat never moves the newest checkpoint backwards.
    older = live.with_heartbeat(
        TrainingHeartbeat(phase="training", step=48, attempt=2, latest_checkpoint=_checkpoint(40))
    )
    assert older.latest_checkpoint == _checkpoint(45)
