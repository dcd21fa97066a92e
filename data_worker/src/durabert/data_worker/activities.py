"""The data worker's snapshot activities: thin Temporal shells around their plain functions.

:mod:`.snapshot` builds training snapshots, :mod:`.scoring_snapshot` the rows batch scoring reads.

The activity is a sync ``def`` run on the worker's thread pool: there ``activity.heartbeat``
works from any thread that carries the activity's context, and a cancellation is raised
inside the running thread by the SDK, so even a long ``load_dataset`` call is interrupted
at its next Python instruction. A background thread heartbeats through steps that report
no progress of their own (loading and parsing the source).
"""

import contextvars
import threading
from datetime import timedelta
from types import TracebackType

from temporalio import activity
from temporalio.exceptions import CancelledError

from durabert.data_worker.failures import redacted_failure
from durabert.data_worker.scoring_snapshot import create_scoring_snapshot
from durabert.data_worker.snapshot import SnapshotOutcome, create_snapshot
from durabert.shared import names
from durabert.shared.logging import bind_run_id, get_logger
from durabert.shared.models import (
    DatasetSnapshotRequest,
    DatasetSnapshotResult,
    ScoringSnapshotRequest,
    ScoringSnapshotResult,
)
from durabert.shared.redaction import redact
from durabert.shared.settings import DurabertSettings

log = get_logger(__name__)

DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 10.0
"""Heartbeat period when the caller set no heartbeat timeout."""


def heartbeat_interval(timeout: timedelta | None) -> float:
    """Pick the background heartbeat period for a heartbeat timeout.

    Args:
        timeout: The activity's heartbeat timeout, if any.

    Returns:
        A quarter of the timeout (so one lost heartbeat never times the attempt out), at
        least 0.1 s; :data:`DEFAULT_HEARTBEAT_INTERVAL_SECONDS` without a timeout.
    """
    if timeout is None:
        return DEFAULT_HEARTBEAT_INTERVAL_SECONDS
    return max(0.1, timeout.total_seconds() / 4)


class _BackgroundHeartbeat:
    """Heartbeat from a helper thread while a step that cannot report progress runs."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._stop = threading.Event()
        # Threads do not inherit context variables: carry the activity's context over.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._beat,), name="snapshot-heartbeat", daemon=True
        )

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            activity.heartbeat("working")

    def __enter__(self) -> "_BackgroundHeartbeat":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()


def _progress(stage: str) -> None:
    """Heartbeat a stage and stop when the activity was cancelled."""
    activity.heartbeat(stage)
    if activity.is_cancelled():
        raise CancelledError("snapshot cancelled")


def _snapshot_or_redacted_failure(
    request: DatasetSnapshotRequest, settings: DurabertSettings
) -> SnapshotOutcome:
    """Run the snapshot; any failure leaves as an ``ApplicationError`` without URL credentials."""
    try:
        return create_snapshot(request, settings, _progress)
    except CancelledError:
        raise  # the SDK reports a cancellation itself; it carries no message of ours
    except Exception as exc:
        # Every other failure is rebuilt (redacted, causes dropped, see ``failures``). This also
        # covers a StopIteration: the SDK runs this function in an executor, a StopIteration
        # cannot be set on the awaiting asyncio future, and the attempt would never end.
        raise redacted_failure(exc) from None


def _log_outcome(outcome: SnapshotOutcome) -> None:
    result = outcome.result
    log.info(
        "snapshot reused" if result.cache_hit else "snapshot created",
        snapshot_id=result.snapshot_id,
        rows=result.num_train_samples + result.num_eval_samples,
        train_rows=result.num_train_samples,
        eval_rows=result.num_eval_samples,
        seconds=round(outcome.seconds, 3),
        cache_hit=result.cache_hit,
        snapshot_path=result.snapshot_path,
    )


class SnapshotActivities:
    """Activities of the data worker, bound to the worker's settings."""

    def __init__(self, settings: DurabertSettings) -> None:
        """Bind the activities to settings.

        Args:
            settings: The worker's settings (artifact root, data roots, remote-code policy).
        """
        self._settings = settings

    @activity.defn(name=names.CREATE_DATASET_SNAPSHOT)
    def create_dataset_snapshot(self, request: DatasetSnapshotRequest) -> DatasetSnapshotResult:
        """Freeze a dataset into a content-addressed snapshot, or reuse the existing one.

        Args:
            request: What to snapshot.

        Returns:
            The snapshot; ``cache_hit`` tells whether it already existed.

        Raises:
            ApplicationError: Non-retryable ``InvalidInputError`` or ``ConfigurationError``
                naming the field at fault.
        """
        bind_run_id(request.run_id)
        try:
            info = activity.info()
            log.info(
                "snapshot started",
                dataset_name=redact(request.dataset_name),
                dataset_config_name=request.dataset_config_name,
                attempt=info.attempt,
            )
            with _BackgroundHeartbeat(heartbeat_interval(info.heartbeat_timeout)):
                outcome = _snapshot_or_redacted_failure(request, self._settings)
            _log_outcome(outcome)
            return outcome.result
        finally:
            bind_run_id(None)

    @activity.defn(name=names.CREATE_SCORING_SNAPSHOT)
    def create_scoring_snapshot(self, request: ScoringSnapshotRequest) -> ScoringSnapshotResult:
        """Freeze a dataset to score (no labels, input order, every row), or reuse the existing snapshot.

        Args:
            request: What to score.

        Returns:
            The scoring snapshot; ``cache_hit`` tells whether it already existed.

        Raises:
            ApplicationError: Non-retryable ``InvalidInputError`` or ``ConfigurationError`` naming
                the field at fault.
        """
        bind_run_id(request.run_id)
        try:
            with _BackgroundHeartbeat(heartbeat_interval(activity.info().heartbeat_timeout)):
                try:
                    result = create_scoring_snapshot(request, self._settings, _progress)
                except CancelledError:
                    raise
                except Exception as exc:
                    # As for training snapshots: rebuilt without URL credentials, causes dropped.
                    raise redacted_failure(exc) from None
            log.info(
                "scoring snapshot reused" if result.cache_hit else "scoring snapshot created",
                snapshot_id=result.snapshot_id,
                rows=result.num_rows,
            )
            return result
        finally:
            bind_run_id(None)
