"""Evaluation: metrics are scikit-learn's on the same predictions; labels are matched to the model's by
name; a label the model does not know, or a split the source lacks, is refused naming it; the report
JSON and the confusion-matrix PNG are stored under ``runs/<run_id>/evaluations/<snapshot_id>/``."""

import json
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker.activities import GpuActivities
from durabert.gpu_worker.data import locate_snapshot, read_snapshot_manifest
from durabert.gpu_worker.evaluation import compute_metrics, model_label_ids, read_rows
from durabert.gpu_worker.evaluation_activities import EvaluationActivities
from durabert.gpu_worker.evaluation_report import CONFUSION_PNG
from durabert.gpu_worker.inference import classify_texts
from durabert.gpu_worker.model_folder import MODEL_MANIFEST
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.errors import ErrorType
from durabert.shared.models import BertEvaluationRequest, DatasetSnapshotResult, EvaluateBertRequest
from durabert.shared.settings import DurabertSettings
from durabert.shared.snapshot_layout import SPLIT_FILES, SnapshotFields, SnapshotManifest, SnapshotSource

MODEL_LABELS = ["positive", "negative"]
"""The model's label order differs from the snapshot's sorted names: matching must be by name."""
WORDS = ["wonderful", "dull", "a lovely and moving score with a superb cast", "boring", "fine", "awful"]


def publish_model(root, tiny_model_dir, run_id: str) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = ArtifactStore(root).model_dir(run_id)
    labels = dict(enumerate(MODEL_LABELS))
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    (folder / MODEL_MANIFEST).write_text(json.dumps({"run_id": run_id}))


def write_snapshot(
    root, snapshot_id: str, label_names: list[str], splits: dict[str, list[tuple[str, int]]], eval_split=None
) -> DatasetSnapshotResult:
    """A snapshot as the data worker writes it: sorted label names, label ids, a train and an eval file."""
    folder = ArtifactStore(root).snapshot_dir(snapshot_id)
    folder.mkdir(parents=True)
    for split, rows in splits.items():
        table = pa.table({"text": [t for t, _ in rows], "label": pa.array([i for _, i in rows], pa.int64())})
        pq.write_table(table, folder / SPLIT_FILES[split])
    manifest = SnapshotManifest(
        format="test",
        snapshot_id=snapshot_id,
        data_hash=f"hash-{snapshot_id}",
        snapshot_timestamp="2026-12-01T00:00:00+00:00",
        created_by_run_id="served",
        source=SnapshotSource(dataset_name="json", eval_split=eval_split, seed=42),
        fields=SnapshotFields(text_field="text", label_field="label"),
        label_names=label_names,
        num_train_samples=len(splits["train"]),
        num_eval_samples=len(splits["eval"]),
    )
    (folder / "manifest.json").write_text(manifest.to_json())
    return DatasetSnapshotResult(
        snapshot_id=snapshot_id,
        dataset_name="json",
        num_train_samples=len(splits["train"]),
        num_eval_samples=len(splits["eval"]),
        data_hash=f"hash-{snapshot_id}",
        snapshot_timestamp="2026-12-01T00:00:00+00:00",
        snapshot_path=f"snapshots/{snapshot_id}",
        label_names=label_names,
        text_field="text",
        label_field="label",
    )


def labelled_rows(count: int, offset: int = 0) -> list[tuple[str, int]]:
    return [(f"{i} {WORDS[i % len(WORDS)]}", (i * 7 // 3) % 2) for i in range(offset, offset + count)]


def evaluation_request(**overrides) -> BertEvaluationRequest:
    fields = {"run_id": "served", "dataset_name": "json", "data_files": "test.jsonl", "use_gpu": False}
    return BertEvaluationRequest.model_validate(fields | {"batch_size": 4, "max_seq_length": 32} | overrides)


@pytest.fixture(scope="module")
def served_root(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("evaluation")
    publish_model(root, tiny_model_dir, "served")
    return root


def evaluator(root) -> EvaluationActivities:
    settings = DurabertSettings(artifact_root=root, data_dir=root / "data")
    return EvaluationActivities(settings, GpuActivities(settings).cache)


def test_metrics_equal_scikit_learns_on_fixed_predictions() -> None:
    names = ["a", "b", "c", "d"]  # "d" is neither true nor predicted; "c" is never predicted
    truth = [0, 0, 1, 1, 1, 2, 2, 0, 1, 2]
    predicted = [0, 1, 1, 1, 0, 1, 0, 0, 1, 1]
    metrics = compute_metrics(truth, predicted, names)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=[0, 1, 2, 3], zero_division=0
    )
    assert metrics.accuracy == accuracy_score(truth, predicted) == 0.5
    assert metrics.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert [m.label for m in metrics.per_class] == names
    assert [m.precision for m in metrics.per_class] == pytest.approx(list(precision))
    assert [m.recall for m in metrics.per_class] == pytest.approx(list(recall))
    assert [m.f1 for m in metrics.per_class] == pytest.approx(list(f1))
    assert [m.support for m in metrics.per_class] == [3, 4, 3, 0] == list(support)
    assert metrics.confusion_matrix == confusion_matrix(truth, predicted, labels=[0, 1, 2, 3]).tolist()
    assert metrics.confusion_matrix[2] == [1, 2, 0, 0]  # rows true, columns predicted


def test_labels_are_matched_by_name_and_unknown_ones_refused_naming_both_sides() -> None:
    assert model_label_ids(["negative", "positive", "negative"], MODEL_LABELS) == [1, 0, 1]
    with pytest.raises(ApplicationError) as refused:
        model_label_ids(["positive", "neutral", "mixed", "neutral"], MODEL_LABELS)
    assert refused.value.type == ErrorType.INVALID_INPUT
    assert refused.value.non_retryable
    assert refused.value.message == (
        "label_field: the dataset has label(s) the model does not know: 'mixed', 'neutral'; "
        "the model's label_names are 'positive', 'negative' (labels are matched by name)"
    )


def test_train_split_is_eval_then_train_and_another_split_must_exist(tmp_path) -> None:
    names = ["negative", "positive"]
    held, rest = labelled_rows(2), labelled_rows(5, offset=2)
    snapshot = write_snapshot(tmp_path, "held", names, {"train": rest, "eval": held})
    files = locate_snapshot(ArtifactStore(tmp_path), snapshot)
    manifest = read_snapshot_manifest(files.folder, snapshot)
    rows = read_rows(files, manifest, evaluation_request(max_samples=4))
    assert rows.texts == [text for text, _ in (held + rest)[:4]]
    assert rows.labels == [names[label] for _, label in (held + rest)[:4]]
    # The source had no "test" split, so the data worker held eval rows out of train: refused.
    with pytest.raises(ApplicationError, match=r"split: the dataset 'json' has no split 'test'"):
        read_rows(files, manifest, evaluation_request(split="test"))


async def test_the_activity_measures_the_models_own_predictions_and_stores_the_report(served_root) -> None:
    names = ["negative", "positive"]  # sorted, as the data worker writes them: ids differ from the model's
    tests = labelled_rows(11)
    snapshot = write_snapshot(
        served_root, "tests", names, {"train": labelled_rows(1, 50), "eval": tests}, eval_split="test"
    )
    activities = evaluator(served_root)
    request = EvaluateBertRequest(request=evaluation_request(split="test"), snapshot=snapshot)
    result = await ActivityEnvironment().run(activities.evaluate_bert, request)

    loaded = activities.cache.get("served", "cpu")
    predicted = [p.label for p in classify_texts(loaded, [text for text, _ in tests], 32)]
    truth = [MODEL_LABELS.index(names[label]) for _, label in tests]
    assert (result.num_samples, result.label_names, result.split) == (11, MODEL_LABELS, "test")
    assert result.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert result.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert result.confusion_matrix == confusion_matrix(truth, predicted, labels=[0, 1]).tolist()
    assert [m.support for m in result.per_class] == [truth.count(0), truth.count(1)]

    assert result.report_path == "runs/served/evaluations/tests/report.json"
    report_file = ArtifactStore(served_root).resolve(result.report_path)
    report = json.loads(report_file.read_text())
    assert report["confusion_matrix"] == result.confusion_matrix
    assert report["model_digest"]
    assert report["dataset"]["eval_split"] == "test"
    import matplotlib.image

    picture = matplotlib.image.imread(report_file.parent / CONFUSION_PNG)
    assert picture.ndim == 3  # an RGB(A) image, drawn
    assert picture.shape[0] > 100


async def test_the_activity_refuses_a_label_the_model_does_not_know(served_root) -> None:
    names = ["negative", "neutral", "positive"]
    rows = [("fine", 1), ("dull", 0), ("great", 2)]
    snapshot = write_snapshot(
        served_root, "unknown", names, {"train": rows[:1], "eval": rows}, eval_split="test"
    )
    request = EvaluateBertRequest(request=evaluation_request(split="test"), snapshot=snapshot)
    with pytest.raises(ApplicationError, match="does not know: 'neutral'; the model's label_names are"):
        await ActivityEnvironment().run(evaluator(served_root).evaluate_bert, request)
    assert not ArtifactStore(served_root).resolve("runs/served/evaluations/unknown").exists()


def test_a_stopped_evaluation_runs_no_forward_pass(served_root) -> None:
    from durabert.gpu_worker.evaluation import LabelledRows, evaluate_rows
    from durabert.gpu_worker.scoring import ScoringStopped

    loaded = evaluator(served_root).cache.get("served", "cpu")
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScoringStopped):
        evaluate_rows(loaded, LabelledRows(["fine"], ["positive"]), evaluation_request(), stop)
