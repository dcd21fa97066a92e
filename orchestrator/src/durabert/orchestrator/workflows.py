"""The durable control flow: claim the run id, snapshot, checkpointed fine-tuning with resume, inference.

Workflows stay deterministic and small: every I/O and ML step is an activity on the data
or GPU queue, called through the typed stubs in :mod:`durabert.shared.activities`.

Training retries are run by this workflow, not by the server's retry policy, because each
new attempt must carry the newest checkpoint the workflow knows: a server retry would resend
the first attempt's input (the original design's fault). The workflow learns that checkpoint when an
attempt *ends* (from the attempt's failure details or its last heartbeat), never through
signals, so a run's history does not grow with its step count; live step and loss are the
pending activity's heartbeat details, which cost no history (see ``TrainingHeartbeat``).

An attempt that was preempted, or that saved a newer checkpoint than it started from, made
progress: it counts against ``max_preemptions``, not ``max_attempts``. Between attempts the
workflow continues as new once its history is long, carrying its state (``TrainingCarry``).
"""

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from durabert.shared import activities, names
    from durabert.shared.errors import (
        NON_RETRYABLE_ERROR_TYPES,
        ErrorType,
        invalid_input,
        parse_input,
        parse_workflow_args,
    )
    from durabert.shared.models import (
        AttemptFence,
        BertFineTuneConfig,
        BertFineTuneRequest,
        BertFineTuneResult,
        BertInferenceRequest,
        BertInferenceResult,
        CheckpointInfo,
        DatasetSnapshotResult,
        RunClaimRequest,
        TrainingCarry,
        TrainingHeartbeat,
        TrainingProgress,
        run_id_problem,
    )
    from durabert.shared.settings import QueueSettings

CLAIM_TIMEOUT = timedelta(seconds=30)
"""Most time one ``claim_run`` attempt may take (a few small file operations)."""


def _activity_queues() -> QueueSettings:
    """Queues for the activities: the starter's memo overrides the defaults (tests use random ones)."""
    memo = workflow.memo_value(names.QUEUES_MEMO_KEY, default=None)
    return QueueSettings.model_validate(memo if isinstance(memo, dict) else {})


def _is_non_retryable(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, ApplicationError) and (
        cause.non_retryable or cause.type in NON_RETRYABLE_ERROR_TYPES
    )


def _is_preemption(error: ActivityError) -> bool:
    cause = error.cause
    return isinstance(cause, ApplicationError) and cause.type == ErrorType.PREEMPTED


def _failure_heartbeat(error: ActivityError) -> TrainingHeartbeat | None:
    """The attempt's last state: its failure details, or the last heartbeat of a timed-out attempt.

    Details come back as plain dicts (the converter has no type to decode them to), so they are
    validated again; anything unreadable is ignored rather than failing the run.
    """
    cause = error.cause
    details: Any = ()
    if isinstance(cause, ApplicationError):
        details = cause.details
    elif isinstance(cause, TimeoutError):
        details = cause.last_heartbeat_details
    if not details:
        return None
    try:
        return TrainingHeartbeat.model_validate(details[0])
    except ValidationError:
        workflow.logger.warning("ignoring unreadable attempt details", extra={"details": repr(details[0])})
        return None


def _parse_training_args(args: tuple[Any, ...]) -> tuple[BertFineTuneConfig, TrainingCarry | None]:
    """One config (a fresh run), or a config and a carry (a run that continued as new)."""
    if len(args) != 2:
        return parse_workflow_args(BertFineTuneConfig, args), None
    if workflow.info().continued_run_id is None:
        # A carry skips the run-id claim and the snapshot: only this workflow may hand one over.
        raise invalid_input(
            "expected exactly one JSON object (BertFineTuneConfig); a second argument "
            "(TrainingCarry) is only accepted from the workflow's own continue-as-new",
            field="input",
        )
    config, carry = args
    if not isinstance(config, dict | BertFineTuneConfig) or not isinstance(carry, dict | TrainingCarry):
        raise invalid_input("expected a BertFineTuneConfig and a TrainingCarry object", field="input")
    return parse_input(BertFineTuneConfig, config), parse_input(TrainingCarry, carry)


def _run_id(cfg: BertFineTuneConfig) -> str:
    """The run id: the config's, which must equal the workflow id, or the workflow id itself."""
    workflow_id = workflow.info().workflow_id
    if cfg.run_id is None:
        problem = run_id_problem(workflow_id)
        if problem is not None:
            raise invalid_input(
                f"the workflow id {workflow_id!r} is not a valid run id: it {problem}. It names the "
                "run's folder, so it is never rewritten: start the workflow with a valid id",
                field="run_id",
            )
        return workflow_id
    if cfg.run_id != workflow_id:
        # Temporal refuses a second running workflow with the same id; tying the run id
        # to it is what keeps two runs from writing into one folder.
        raise invalid_input(
            f"{cfg.run_id!r} differs from the workflow id {workflow_id!r}; start the "
            "workflow with id equal to run_id (or leave run_id empty to use the workflow id)",
            field="run_id",
        )
    return cfg.run_id


@workflow.defn(name=names.TRAINING_WORKFLOW)
class CheckpointedBertTrainingWorkflow:
    """Claim the run id, snapshot the dataset, then fine-tune with checkpoints, resuming after failures.

    A versioned orchestrator registers :class:`PinnedBertTrainingWorkflow` instead (same code).
    """

    def __init__(self) -> None:
        """Start with an empty progress record and the first attempt's sequence number."""
        self._progress = TrainingProgress()
        self._next_seq = 1
        self._backoff = 0.0
        self._started_from = -1

    @workflow.run
    async def run(self, *args: Any) -> BertFineTuneResult:
        """Run the whole training pipeline.

        Args:
            *args: One ``BertFineTuneConfig`` (plain JSON from the ``temporal`` CLI works), or,
                after a continue-as-new, the config and a ``TrainingCarry``. Anything else, or a
                config with a bad field, fails the workflow with an ``InvalidInputError``
                naming the problem, without retries.

        Returns:
            The fine-tuning result, with the run's attempts, preemptions and failed attempts.
        """
        try:
            cfg, carry = _parse_training_args(args)
            run_id = _run_id(cfg)
            self._progress.run_id = run_id
            snapshot = await self._prepare(cfg, run_id, carry)
            result = await self._train(cfg, run_id, snapshot)
        except ApplicationError as exc:
            self._fail(exc.message)
            raise
        except (ActivityError, asyncio.CancelledError) as exc:
            if is_cancelled_exception(exc):
                self._progress.stage = "cancelled"
            else:
                self._fail(str(exc.cause or exc) if isinstance(exc, ActivityError) else str(exc))
            raise
        return self._complete(result)

    def _fail(self, message: str) -> None:
        self._progress.stage = "failed"
        self._progress.error = message

    async def _prepare(
        self, cfg: BertFineTuneConfig, run_id: str, carry: TrainingCarry | None
    ) -> DatasetSnapshotResult:
        """Claim and snapshot on a fresh run; take both over from the carry after continue-as-new."""
        self._backoff = cfg.timeouts.retry_initial_interval_seconds
        if carry is not None:
            self._progress = carry.progress
            self._next_seq = carry.next_seq
            self._backoff = carry.retry_pause_seconds
            return carry.snapshot
        await self._claim(cfg, run_id)
        return await self._snapshot(cfg, run_id)

    async def _claim(self, cfg: BertFineTuneConfig, run_id: str) -> None:
        self._progress.stage = "claiming"
        timeouts = cfg.timeouts
        claim = await workflow.execute_activity(
            activities.claim_run,
            RunClaimRequest(
                run_id=run_id,
                chain_id=workflow.info().first_execution_run_id,
                continue_run=cfg.continue_run,
                config=cfg,
            ),
            task_queue=_activity_queues().data,
            start_to_close_timeout=CLAIM_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=timeouts.retry_initial_interval_seconds),
                maximum_interval=timedelta(seconds=timeouts.retry_maximum_interval_seconds),
                maximum_attempts=cfg.max_attempts,
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )
        if claim.continued_from_chain is not None:
            workflow.logger.info(
                "continuing an earlier run",
                extra={"run_id": run_id, "from_chain": claim.continued_from_chain, **claim.config_changes},
            )

    async def _snapshot(self, cfg: BertFineTuneConfig, run_id: str) -> DatasetSnapshotResult:
        self._progress.stage = "snapshotting"
        timeouts = cfg.timeouts
        snapshot = await workflow.execute_activity(
            activities.create_dataset_snapshot,
            cfg.snapshot_request(run_id),
            task_queue=_activity_queues().data,
            start_to_close_timeout=timedelta(seconds=timeouts.snapshot_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=timeouts.snapshot_heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=timeouts.retry_initial_interval_seconds),
                maximum_interval=timedelta(seconds=timeouts.retry_maximum_interval_seconds),
                maximum_attempts=cfg.max_attempts,
                non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES),
            ),
        )
        self._progress.snapshot_id = snapshot.snapshot_id
        return snapshot

    async def _train(
        self, cfg: BertFineTuneConfig, run_id: str, snapshot: DatasetSnapshotResult
    ) -> BertFineTuneResult:
        """Attempt until one succeeds, a limit is reached, or the history asks for a new execution."""
        self._progress.stage = "training"
        while True:
            try:
                return await self._attempt(cfg, run_id, snapshot)
            except ActivityError as exc:
                pause = self._account_failure(cfg, run_id, exc)
            await workflow.sleep(timedelta(seconds=pause))
            if self._should_continue_as_new(cfg):
                self._progress.continued_as_new += 1
                carry = TrainingCarry(
                    snapshot=snapshot,
                    progress=self._progress,
                    next_seq=self._next_seq,
                    retry_pause_seconds=self._backoff,
                )
                workflow.continue_as_new(args=[cfg, carry])

    async def _attempt(
        self, cfg: BertFineTuneConfig, run_id: str, snapshot: DatasetSnapshotResult
    ) -> BertFineTuneResult:
        """Run one fine-tuning attempt from the newest known checkpoint, fenced by its sequence number."""
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        latest = self._progress.latest_checkpoint
        if seq > 1 and latest is not None:
            self._progress.resumes += 1
        self._progress.attempt = seq
        self._started_from = latest.step if latest is not None else -1
        info = workflow.info()
        request = BertFineTuneRequest(
            run_id=run_id,
            config=cfg,
            dataset_snapshot=snapshot,
            resume_from_checkpoint=latest.path if latest is not None else None,
            attempt=seq,
            fence=AttemptFence(workflow_id=info.workflow_id, chain_id=info.first_execution_run_id, seq=seq),
        )
        return await workflow.execute_activity(
            activities.fine_tune_bert,
            request,
            task_queue=_activity_queues().gpu,
            start_to_close_timeout=timedelta(hours=cfg.timeouts.training_timeout_hours),
            heartbeat_timeout=timedelta(seconds=cfg.heartbeat_timeout_seconds),
            # One server-side attempt per call: this workflow is the retry policy.
            retry_policy=RetryPolicy(maximum_attempts=1),
            # Wait for the worker to acknowledge a cancel, so the GPU is free when
            # the workflow reports "cancelled".
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    def _account_failure(self, cfg: BertFineTuneConfig, run_id: str, error: ActivityError) -> float:
        """Learn from a failed attempt, count it, and return the pause before the next one.

        Raises:
            ActivityError: The attempt's own error when no retry can help (cancelled,
                non-retryable, or ``max_attempts`` failures without progress).
            ApplicationError: When the run was preempted more than ``max_preemptions`` times.
        """
        if is_cancelled_exception(error) or _is_non_retryable(error):
            raise error
        heartbeat = _failure_heartbeat(error)
        progressed = self._learn(heartbeat)
        progress = self._progress
        if _is_preemption(error) or progressed:
            progress.preemptions += 1
            if progress.preemptions > cfg.max_preemptions:
                raise _too_many_preemptions(run_id, progress.preemptions, cfg.max_preemptions) from error
            # Progress resets the backoff: a run on spot nodes should not wait longer each time.
            self._backoff = pause = cfg.timeouts.retry_initial_interval_seconds
        else:
            progress.failures += 1
            if progress.failures >= cfg.max_attempts:
                raise error
            pause = self._backoff
            self._backoff = min(pause * 2, cfg.timeouts.retry_maximum_interval_seconds)
        workflow.logger.warning(
            "fine-tuning attempt ended; retrying from the newest checkpoint",
            extra={
                "run_id": run_id,
                "attempt": progress.attempt,
                "progressed": progressed or _is_preemption(error),
                "error": str(error.cause or error),
            },
        )
        return pause

    def _learn(self, heartbeat: TrainingHeartbeat | None) -> bool:
        """Take step, loss and the newest checkpoint from a finished attempt's last state.

        Returns:
            Whether the attempt saved a checkpoint newer than the one it started from (the one
            the workflow knew, or one the worker found on disk and resumed from).
        """
        if heartbeat is None:
            return False
        progress = self._progress
        progress.step = max(progress.step, heartbeat.step)
        progress.epoch = max(progress.epoch, heartbeat.epoch)
        progress.loss = heartbeat.loss if heartbeat.loss is not None else progress.loss
        progress.max_steps = heartbeat.max_steps or progress.max_steps
        saved = heartbeat.latest_checkpoint
        if saved is None or saved.path is None:
            return False
        known = progress.latest_checkpoint
        if known is None or saved.step > known.step:
            progress.latest_checkpoint = saved
        started = max(self._started_from, heartbeat.resumed_from_step or -1)
        return saved.step > started

    def _should_continue_as_new(self, cfg: BertFineTuneConfig) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= cfg.timeouts.continue_as_new_after_events
        )

    def _complete(self, result: BertFineTuneResult) -> BertFineTuneResult:
        progress = self._progress
        progress.stage = "completed"
        progress.step = result.global_step
        progress.loss = result.train_loss
        progress.max_steps = progress.max_steps or result.global_step
        if result.final_checkpoint is not None:
            progress.latest_checkpoint = result.final_checkpoint
            progress.epoch = result.final_checkpoint.epoch
        progress.checkpoints_saved = max(progress.checkpoints_saved, result.total_checkpoints_saved)
        return result.model_copy(
            update={
                "attempts": self._next_seq - 1,
                "preemptions": progress.preemptions,
                "failed_attempts": progress.failures,
            }
        )

    @workflow.query(name=names.GET_LATEST_CHECKPOINT_QUERY)
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        """Return the newest complete checkpoint the workflow knows (updated when an attempt ends)."""
        return self._progress.latest_checkpoint

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> TrainingProgress:
        """Return the workflow's durable view: stage, attempts, preemptions, failures, last known step.

        Live step and loss of a running attempt are its heartbeat details; clients merge them in
        with ``TrainingProgress.with_heartbeat``.
        """
        return self._progress


def _too_many_preemptions(run_id: str, preemptions: int, ceiling: int) -> ApplicationError:
    return ApplicationError(
        f"run {run_id} was preempted {preemptions} times, more than max_preemptions={ceiling}; "
        "its checkpoints are kept: raise max_preemptions and extend the run with continue_run "
        "(`durabert train --continue`), or find out why its workers keep stopping",
        type=ErrorType.PREEMPTED,
        non_retryable=True,
    )


def inference_retry_policy() -> RetryPolicy:
    """Retries of one inference request: a few for a worker lost mid-request, none for bad input."""
    return RetryPolicy(maximum_attempts=3, non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES))


@workflow.defn(name=names.INFERENCE_WORKFLOW)
class BertInferenceWorkflow:
    """Classify texts with a finished run's model: one activity on the GPU queue.

    A versioned orchestrator registers :class:`AutoUpgradeBertInferenceWorkflow` instead.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertInferenceResult:
        """Run inference.

        Args:
            *args: Exactly one ``BertInferenceRequest`` (texts and the run whose model to
                use); anything else fails the workflow with an ``InvalidInputError``.

        Returns:
            Predictions, names and confidences.
        """
        req = parse_workflow_args(BertInferenceRequest, args)
        # The inference queue, never the training one: its slots are free while every GPU trains.
        # Schedule-to-start bounds the wait for a GPU worker to take the request at all.
        return await workflow.execute_activity(
            activities.run_bert_inference,
            req,
            task_queue=_activity_queues().inference,
            schedule_to_start_timeout=timedelta(seconds=req.queue_timeout_seconds),
            start_to_close_timeout=timedelta(seconds=req.timeout_seconds),
            retry_policy=inference_retry_policy(),
        )


# Worker Versioning: the server refuses a versioning behavior from a worker that is not
# versioned ("versioning behavior cannot be specified without deployment options being set
# with versioned mode"), so the behavior lives on subclasses that only a versioned worker
# registers. They run the very same code under the same type names.


@workflow.defn(name=names.TRAINING_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class PinnedBertTrainingWorkflow(CheckpointedBertTrainingWorkflow):
    """The training workflow as a versioned orchestrator registers it: pinned to its build.

    A run finishes on the build that started it, so workflow code can change under a 72-hour
    training without the running one replaying on the new code.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertFineTuneResult:
        """Run the whole training pipeline (see :meth:`CheckpointedBertTrainingWorkflow.run`).

        Args:
            *args: As for :meth:`CheckpointedBertTrainingWorkflow.run`.

        Returns:
            The fine-tuning result.
        """
        return await super().run(*args)


@workflow.defn(name=names.INFERENCE_WORKFLOW, versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class AutoUpgradeBertInferenceWorkflow(BertInferenceWorkflow):
    """The inference workflow as a versioned orchestrator registers it: it moves to the newest build.

    An inference lasts seconds and keeps no state worth pinning to a build.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertInferenceResult:
        """Run inference (see :meth:`BertInferenceWorkflow.run`).

        Args:
            *args: As for :meth:`BertInferenceWorkflow.run`.

        Returns:
            Predictions, names and confidences.
        """
        return await super().run(*args)


# Imported here, not at the top: the batch scoring workflow lives in its own module and is only
# listed beside the others.
from durabert.orchestrator.batch_workflow import (  # noqa: E402
    BertBatchInferenceWorkflow,
    PinnedBertBatchInferenceWorkflow,
)
from durabert.orchestrator.evaluation_workflow import (  # noqa: E402
    BertEvaluationWorkflow,
    PinnedBertEvaluationWorkflow,
)
from durabert.orchestrator.sweep_workflow import BertSweepWorkflow, PinnedBertSweepWorkflow  # noqa: E402

WORKFLOWS: list[type] = [
    CheckpointedBertTrainingWorkflow,
    BertInferenceWorkflow,
    BertBatchInferenceWorkflow,
    BertEvaluationWorkflow,
    BertSweepWorkflow,
]
"""Every workflow an unversioned orchestrator worker registers (dev, tests, replay)."""
VERSIONED_WORKFLOWS: list[type] = [
    PinnedBertTrainingWorkflow,
    AutoUpgradeBertInferenceWorkflow,
    PinnedBertBatchInferenceWorkflow,
    PinnedBertEvaluationWorkflow,
    PinnedBertSweepWorkflow,
]
"""The same workflows with their versioning behavior, for an orchestrator with a build id."""
