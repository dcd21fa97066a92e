"""Stand-ins under the real workflow and activity type names, to test the CLI (and the demo) alone.

The fake training workflow behaves as the real one does towards a client: its ``get_progress``
query gives only the durable view (stage, attempts, preemptions, failures; the step stays at 0
until the attempt ends), and the live figures are the heartbeat details of its pending
``fine_tune_bert`` activity. That fake activity moves only when a test drives it through
:class:`FakeTrainer`: each step is sent as a ``TrainingHeartbeat``, a checkpoint at every even
step. A run id starting with :data:`CLAIMED_PREFIX` is refused the way the real workflow's
``claim_run`` refuses an id whose artifacts belong to an earlier run. The fake inference
workflow labels texts by a keyword and refuses the run id :data:`UNKNOWN_RUN`.
"""

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from durabert.shared import names
    from durabert.shared.errors import not_found, run_id_in_use
    from durabert.shared.models import (
        BertFineTuneConfig,
        BertFineTuneResult,
        BertInferenceRequest,
        BertInferenceResult,
        CheckpointInfo,
        TrainingHeartbeat,
        TrainingProgress,
    )

UNKNOWN_RUN = "no-such-run"
"""Run id the fake inference workflow refuses with ``ArtifactNotFoundError``."""
CLAIMED_PREFIX = "claimed-"
"""Run ids starting with this are refused by the fake workflow with ``RunIdInUseError``."""
PREEMPTIONS = 2
"""Preemptions the fake training run reports (as if two earlier attempts were preempted)."""
FAILURES = 1
"""Failed attempts the fake training run reports."""


def checkpoint(run_id: str, step: int, max_steps: int) -> CheckpointInfo:
    """The checkpoint a fake attempt saves at ``step``."""
    return CheckpointInfo(
        epoch=step / max_steps,
        step=step,
        path=f"runs/{run_id}/checkpoints/checkpoint-{step}",
        loss=1.0 / (step + 1),
        timestamp=datetime.now(UTC).isoformat(),
        max_steps=max_steps,
        attempt=PREEMPTIONS + FAILURES + 1,
    )


class FakeTrainer:
    """The fake ``fine_tune_bert`` activity; tests drive each run's attempt step by step."""

    def __init__(self) -> None:
        self._commands: dict[str, asyncio.Queue[int | str]] = {}

    def _queue(self, run_id: str) -> "asyncio.Queue[int | str]":
        return self._commands.setdefault(run_id, asyncio.Queue())

    async def step(self, run_id: str, *steps: int) -> None:
        """Make the run's attempt reach each step in turn (heartbeating each one)."""
        for step in steps:
            await self._queue(run_id).put(step)

    async def fail(self, run_id: str, message: str) -> None:
        """Make the run's attempt fail without retries (an ``InvalidInputError``)."""
        await self._queue(run_id).put(message)

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(self, config: BertFineTuneConfig) -> int:
        """Heartbeat each driven step; return the last one at ``max_steps``."""
        assert config.run_id is not None
        assert config.max_steps is not None, "the fake needs max_steps"
        attempt = PREEMPTIONS + FAILURES + 1
        live = TrainingHeartbeat(phase="loading", max_steps=config.max_steps, attempt=attempt)
        activity.heartbeat(live)
        while live.step < config.max_steps:
            command = await self._queue(config.run_id).get()
            if isinstance(command, str):
                raise ApplicationError(command, type="InvalidInputError", non_retryable=True)
            saved = checkpoint(config.run_id, command, config.max_steps) if command % 2 == 0 else None
            live = live.model_copy(
                update={
                    "phase": "training",
                    "step": command,
                    "epoch": command / config.max_steps,
                    "loss": 1.0 / (command + 1),
                    "latest_checkpoint": saved or live.latest_checkpoint,
                    "updated_at": datetime.now(UTC).isoformat(),
                }
            )
            activity.heartbeat(live)
        return live.step


def _result(config: BertFineTuneConfig, step: int) -> BertFineTuneResult:
    assert config.run_id is not None
    return BertFineTuneResult(
        run_id=config.run_id,
        config=config,
        train_loss=0.25,
        eval_metrics={"eval_accuracy": 0.875, "eval_loss": 0.3},
        training_time_seconds=1.5,
        num_parameters=1000,
        total_checkpoints_saved=step // 2,
        global_step=step,
        resumed_from_step=None,
        attempts=PREEMPTIONS + FAILURES + 1,
        preemptions=PREEMPTIONS,
        failed_attempts=FAILURES,
        device="cpu",
        model_path=f"runs/{config.run_id}/model",
        label_names=["negative", "positive"],
    )


@workflow.defn(name=names.TRAINING_WORKFLOW)
class FakeTrainingWorkflow:
    """One fake attempt on the workflow's own queue; progress is durable only at the attempt end."""

    def __init__(self) -> None:
        """Start as if two attempts were preempted and one failed before this one."""
        self._progress = TrainingProgress(
            stage="training", attempt=PREEMPTIONS + FAILURES + 1, preemptions=PREEMPTIONS, failures=FAILURES
        )

    @workflow.run
    async def run(self, config: BertFineTuneConfig) -> BertFineTuneResult:
        """Refuse a claimed run id, else run the fake attempt to its end."""
        assert config.run_id is not None
        if config.run_id.startswith(CLAIMED_PREFIX) and not config.continue_run:
            self._progress.stage = "failed"
            raise run_id_in_use(f"run_id {config.run_id} holds an earlier run's artifacts")
        self._progress.run_id = config.run_id
        self._progress.max_steps = config.max_steps
        # The activity runs on the starter's GPU queue (the memo), as the real workflow's does,
        # so a test can stop the workflow worker while the attempt goes on.
        queues = workflow.memo_value(names.QUEUES_MEMO_KEY, default={})
        try:
            step = await workflow.execute_activity(
                names.FINE_TUNE_BERT,
                config,
                result_type=int,
                task_queue=queues["gpu"],
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
        except ActivityError as exc:
            self._progress.stage = "failed"
            self._progress.error = str(exc.cause or exc)
            raise
        self._progress.stage = "completed"
        self._progress.step = step
        return _result(config, step)

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> TrainingProgress:
        """Return the durable view (no live step)."""
        return self._progress

    @workflow.query(name=names.GET_LATEST_CHECKPOINT_QUERY)
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        """Return the latest checkpoint known at the last attempt end."""
        return self._progress.latest_checkpoint


def fake_predictions(request: BertInferenceRequest) -> BertInferenceResult:
    """Classify by keyword (``positive`` when a text has "good"); refuse :data:`UNKNOWN_RUN` as unknown."""
    if request.run_id == UNKNOWN_RUN:
        raise not_found(f"no model for run {request.run_id}")
    labels = [int("good" in text.lower()) for text in request.texts]
    label_names = ["negative", "positive"]
    return BertInferenceResult(
        run_id=request.run_id,
        texts=request.texts,
        predicted_labels=labels,
        predicted_label_names=[label_names[label] for label in labels],
        confidences=[0.9 if label else 0.8 for label in labels],
        label_names=label_names,
    )


@workflow.defn(name=names.INFERENCE_WORKFLOW)
class FakeInferenceWorkflow:
    """The inference workflow route, answered by :func:`fake_predictions`."""

    @workflow.run
    async def run(self, request: BertInferenceRequest) -> BertInferenceResult:
        """Classify by keyword."""
        return fake_predictions(request)


@activity.defn(name=names.RUN_BERT_INFERENCE)
async def fake_inference(request: BertInferenceRequest) -> BertInferenceResult:
    """The inference activity (the default, standalone route), answered by :func:`fake_predictions`."""
    return fake_predictions(request)


def inference_worker(client: Client, task_queue: str) -> Worker:
    """A worker answering inference activities on ``task_queue`` (use it with ``async with``)."""
    return Worker(client, task_queue=task_queue, activities=[fake_inference])


def workflow_worker(client: Client, task_queue: str) -> Worker:
    """A worker running both fake workflows on ``task_queue`` (use it with ``async with``)."""
    return Worker(client, task_queue=task_queue, workflows=[FakeTrainingWorkflow, FakeInferenceWorkflow])


def training_worker(client: Client, task_queue: str, trainer: FakeTrainer) -> Worker:
    """A worker running the trainer's fake ``fine_tune_bert`` on ``task_queue``.

    Heartbeats are throttled to 50 ms (the SDK's default waits up to 30 s), so a driven step
    shows in ``describe`` soon after; tests still wait for it rather than for a time.
    """
    return Worker(
        client,
        task_queue=task_queue,
        activities=[trainer.fine_tune],
        max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        default_heartbeat_throttle_interval=timedelta(milliseconds=50),
    )
