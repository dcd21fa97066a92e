"""Evaluating a finished model on a labelled snapshot, as plain functions (no Temporal here).

The rows come from the training-style snapshot the data worker froze for the evaluation
(:meth:`~durabert.shared.models.BertEvaluationRequest.snapshot_request`): for the ``train`` split
its eval then train files (together every row, in seeded content order), for any other split its
eval file alone. True labels are the snapshot's label *names*, matched by name to the model's
``label_names``: a dataset whose labels sort differently (or miss a class) still lines up, and a
label the model never learned is refused. Metrics are scikit-learn's, on model label ids.
"""

import threading
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from durabert.gpu_worker.data import SnapshotFiles
from durabert.gpu_worker.inference import LoadedModel
from durabert.gpu_worker.scoring import predict_texts
from durabert.shared.errors import invalid_input
from durabert.shared.models import BertEvaluationRequest, ClassMetrics
from durabert.shared.snapshot_layout import SnapshotManifest


@dataclass(frozen=True)
class LabelledRows:
    """The rows to evaluate: texts and their true label names, in snapshot order."""

    texts: list[str]
    """Texts to classify."""
    labels: list[str]
    """True label name of each text."""


@dataclass(frozen=True)
class Metrics:
    """What an evaluation measured, in the model's label order."""

    accuracy: float
    """Share of rows predicted right."""
    macro_f1: float
    """Unweighted mean F1 over the labels occurring as true or predicted labels."""
    per_class: list[ClassMetrics]
    """Precision, recall, F1 and support of every model label."""
    confusion_matrix: list[list[int]]
    """Rows true, columns predicted."""


def _check_split(manifest: SnapshotManifest, request: BertEvaluationRequest) -> None:
    """Refuse a snapshot whose eval rows were held out of ``train`` instead of read from ``split``."""
    if request.evaluates_train_split or manifest.source.eval_split == request.split:
        return
    raise invalid_input(
        f"the dataset {request.dataset_name!r} has no split {request.split!r}; data files given "
        "as a path, glob or list load as 'train'",
        field="split",
    )


def read_rows(
    files: SnapshotFiles, manifest: SnapshotManifest, request: BertEvaluationRequest
) -> LabelledRows:
    """Read the rows an evaluation covers from its snapshot.

    Args:
        files: The snapshot's files on this machine.
        manifest: Its manifest (label names, columns, the source split of its eval rows).
        request: The evaluation request (split, ``max_samples``).

    Returns:
        Texts and true label names, at most ``max_samples`` of them.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``split`` when the source has no such split.
    """
    _check_split(manifest, request)
    columns = [manifest.fields.text_field, manifest.fields.label_field]
    paths = [files.eval, files.train] if request.evaluates_train_split else [files.eval]
    table = pa.concat_tables([pq.read_table(path, columns=columns) for path in paths])
    if request.max_samples is not None:
        table = table.slice(0, request.max_samples)
    names = manifest.label_names
    ids = table.column(manifest.fields.label_field).to_pylist()
    return LabelledRows(table.column(manifest.fields.text_field).to_pylist(), [names[i] for i in ids])


def model_label_ids(true_labels: list[str], model_labels: list[str]) -> list[int]:
    """Turn true label names into the model's label ids, matching by name.

    Args:
        true_labels: The dataset's label name per row.
        model_labels: The model's ``label_names`` (a name's index is its id).

    Returns:
        The model's id of each row's label.

    Raises:
        ApplicationError: ``InvalidInputError`` naming ``label_field``, the unknown labels and the
            model's label names, when the dataset has labels the model does not know.
    """
    ids = {name: index for index, name in enumerate(model_labels)}
    unknown = sorted(set(true_labels) - ids.keys())
    if unknown:
        raise invalid_input(
            f"the dataset has label(s) the model does not know: {', '.join(map(repr, unknown))}; "
            f"the model's label_names are {', '.join(map(repr, model_labels))} (labels are matched by name)",
            field="label_field",
        )
    return [ids[name] for name in true_labels]


def compute_metrics(truth: list[int], predicted: list[int], label_names: list[str]) -> Metrics:
    """Compute accuracy, macro F1, per-label metrics and the confusion matrix with scikit-learn.

    Args:
        truth: True model label ids.
        predicted: Predicted model label ids.
        label_names: The model's label names (the order of per-label metrics and the matrix).

    Returns:
        The metrics; a label never predicted has precision 0 (no warning), as has its F1.
    """
    from sklearn.metrics import (  # type: ignore[import-untyped]  # scikit-learn ships no type hints
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    every = list(range(len(label_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=every, zero_division=0
    )
    per_class = [
        ClassMetrics(
            label=name,
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
        )
        for i, name in enumerate(label_names)
    ]
    return Metrics(
        accuracy=float(accuracy_score(truth, predicted)),
        macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
        per_class=per_class,
        confusion_matrix=confusion_matrix(truth, predicted, labels=every).tolist(),
    )


def evaluate_rows(
    loaded: LoadedModel, rows: LabelledRows, request: BertEvaluationRequest, stop: threading.Event
) -> Metrics:
    """Classify the rows with the warm model (passes sorted by length) and measure the predictions.

    Args:
        loaded: The run's warm model.
        rows: Texts and true label names.
        request: Sizes (``max_seq_length``, ``batch_size``).
        stop: Checked before each forward pass (cancellation).

    Returns:
        The metrics.

    Raises:
        ApplicationError: ``InvalidInputError`` when a true label is unknown to the model (before
            any forward pass).
    """
    truth = model_label_ids(rows.labels, loaded.label_names)
    predictions = predict_texts(loaded, rows.texts, request.max_seq_length, request.batch_size, stop)
    return compute_metrics(truth, [prediction.label for prediction in predictions], loaded.label_names)
