"""Stand-ins registered under the real workflow type names, to test the CLI in isolation.

The fake training workflow answers the real queries and moves only when a test sends it
``update_checkpoint`` signals: it completes when the step reaches ``max_steps`` and fails
when sent :data:`FAIL_SIGNAL`. The fake inference workflow labels texts by a keyword and
refuses the run id :data:`UNKNOWN_RUN` the way the real GPU worker refuses a missing model.
"""

from datetime import UTC, datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from durabert.shared import names
    from durabert.shared.errors import not_found
    from durabert.shared.models import (
        BertFineTuneConfig,
        BertFineTuneResult,
        BertInferenceRequest,
        BertInferenceResult,
        CheckpointInfo,
        TrainingProgress,
    )

FAIL_SIGNAL = "fake_fail"
"""Signal (with a message) that makes the fake training workflow fail."""
UNKNOWN_RUN = "no-such-run"
"""Run id the fake inference workflow refuses with ``ArtifactNotFoundError``."""


def checkpoint(step: int, *, max_steps: int, path: bool = True, attempt: int = 1) -> CheckpointInfo:
    """Build the signal the GPU worker would send at ``step``.

    Args:
        step: Global step.
        max_steps: Planned steps.
        path: Whether it is a saved checkpoint (else progress only).
        attempt: Attempt that sent it.

    Returns:
        The signal payload.
    """
    return CheckpointInfo(
        epoch=step / max_steps,
        step=step,
        path=f"runs/fake/checkpoint-{step}" if path else None,
        loss=1.0 / (step + 1),
        timestamp=datetime.now(UTC).isoformat(),
        max_steps=max_steps,
        attempt=attempt,
    )


@workflow.defn(name=names.TRAINING_WORKFLOW)
class FakeTrainingWorkflow:
    """Reports signalled progress; completes at ``max_steps``, fails on :data:`FAIL_SIGNAL`."""

    def __init__(self) -> None:
        """Start pending."""
        self._progress = TrainingProgress(stage="training", attempt=1)
        self._failure: str | None = None

    @workflow.run
    async def run(self, config: BertFineTuneConfig) -> BertFineTuneResult:
        """Wait for the test's signals.

        Args:
            config: The run's config (``max_steps`` required).

        Returns:
            A result echoing the config.
        """
        assert config.max_steps is not None, "the fake needs max_steps"
        self._progress.run_id = config.run_id
        self._progress.max_steps = config.max_steps
        max_steps = config.max_steps
        await workflow.wait_condition(lambda: self._failure is not None or self._progress.step >= max_steps)
        if self._failure is not None:
            self._progress.stage = "failed"
            self._progress.error = self._failure
            raise ApplicationError(self._failure, type="InvalidInputError", non_retryable=True)
        self._progress.stage = "completed"
        assert config.run_id is not None
        return BertFineTuneResult(
            run_id=config.run_id,
            config=config,
            train_loss=0.25,
            eval_metrics={"eval_accuracy": 0.875, "eval_loss": 0.3},
            training_time_seconds=1.5,
            num_parameters=1000,
            total_checkpoints_saved=self._progress.checkpoints_saved,
            global_step=self._progress.step,
            resumed_from_step=None,
            attempts=1,
            device="cpu",
            model_path=f"runs/{config.run_id}/model",
            label_names=["negative", "positive"],
        )

    @workflow.signal(name=names.UPDATE_CHECKPOINT_SIGNAL)
    def update_checkpoint(self, info: CheckpointInfo) -> None:
        """Record progress.

        Args:
            info: The event.
        """
        self._progress.step = info.step
        self._progress.epoch = info.epoch
        self._progress.loss = info.loss
        if info.path is not None:
            self._progress.checkpoints_saved += 1
            self._progress.latest_checkpoint = info

    @workflow.signal(name=FAIL_SIGNAL)
    def fail(self, message: str) -> None:
        """Make the run fail.

        Args:
            message: The failure message.
        """
        self._failure = message

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> TrainingProgress:
        """Return the progress."""
        return self._progress

    @workflow.query(name=names.GET_LATEST_CHECKPOINT_QUERY)
    def get_latest_checkpoint(self) -> CheckpointInfo | None:
        """Return the latest checkpoint."""
        return self._progress.latest_checkpoint


@workflow.defn(name=names.INFERENCE_WORKFLOW)
class FakeInferenceWorkflow:
    """Labels a text ``positive`` when it contains "good", else ``negative``."""

    @workflow.run
    async def run(self, request: BertInferenceRequest) -> BertInferenceResult:
        """Classify.

        Args:
            request: The texts.

        Returns:
            Keyword-based predictions.
        """
        if request.run_id == UNKNOWN_RUN:
            raise not_found(f"no model for run {request.run_id}")
        labels = [int("good" in text.lower()) for text in request.texts]
        names_ = ["negative", "positive"]
        return BertInferenceResult(
            run_id=request.run_id,
            texts=request.texts,
            predicted_labels=labels,
            predicted_label_names=[names_[label] for label in labels],
            confidences=[0.9 if label else 0.8 for label in labels],
            label_names=names_,
        )


FAKE_WORKFLOWS: list[type] = [FakeTrainingWorkflow, FakeInferenceWorkflow]
"""Register these on a test worker."""
