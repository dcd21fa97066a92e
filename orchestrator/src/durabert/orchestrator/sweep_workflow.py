"""``BertSweepWorkflow``: a hyperparameter sweep whose every trial is a child training workflow.

A trial is a run like any other (run id ``<sweep_id>-<nn>``, listed by ``durabert runs``, its model
usable for inference), so it survives worker death and preemption the way a run does. A grid trains
every trial to ``base.max_steps`` in one rung; successive halving trains all trials to ``min_steps``,
keeps the best ``1/eta`` by the held-out metric and continues each from its own final checkpoint
(a new child with ``continue_run``) to the next rung, up to ``base.max_steps``.

The arithmetic (grid, sampling, rungs, ranking) lives in :mod:`.sweep_grid`. At most
``max_concurrent_trials`` children train at once (a workflow-side semaphore: asyncio in a workflow is
deterministic). Closing the sweep requests cancellation of every child and waits for each to stop, so
a cancelled sweep leaves no trial training. A failed trial is recorded and the sweep goes on; only a
sweep whose every trial failed fails. History: one rung adds a few events per trial (at most 99), and
between rungs the sweep continues as new once its history is long (``SweepCarry``).
"""

import asyncio
import random
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, VersioningBehavior
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from durabert.orchestrator import sweep_grid
    from durabert.shared import activities, names
    from durabert.shared.errors import (
        NON_RETRYABLE_ERROR_TYPES,
        configuration_error,
        invalid_input,
        parse_input,
        parse_workflow_args,
    )
    from durabert.shared.models import (
        BertFineTuneConfig,
        BertFineTuneResult,
        BertSweepConfig,
        BertSweepResult,
        SweepCarry,
        SweepPoint,
        SweepProgress,
        SweepReportRequest,
        SweepTrial,
    )
    from durabert.shared.settings import QueueSettings

REPORT_TIMEOUT = timedelta(minutes=2)
"""Most time one ``record_sweep`` attempt may take (a JSON file and a small plot)."""
REPORT_WAIT = timedelta(minutes=10)
"""Most time a report may wait for a GPU worker: the report never holds the sweep up for longer."""
SEED_RANGE = 2**31 - 1
"""Upper bound of a sampling seed drawn by the workflow when the config gives none."""


def _queues() -> QueueSettings:
    """The activities' queues: the starter's memo (``settings.queue_memo()``) over the defaults."""
    memo = workflow.memo_value(names.QUEUES_MEMO_KEY, default=None)
    return QueueSettings.model_validate(memo if isinstance(memo, dict) else {})


def _child_memo() -> dict[str, Any] | None:
    """The sweep's queue memo, handed to every trial so its activities go to the same queues."""
    memo = workflow.memo_value(names.QUEUES_MEMO_KEY, default=None)
    return {names.QUEUES_MEMO_KEY: memo} if isinstance(memo, dict) else None


def _parse_sweep_args(args: tuple[Any, ...]) -> tuple[BertSweepConfig, SweepCarry | None]:
    """One config (a fresh sweep), or a config and a carry (a sweep that continued as new)."""
    if len(args) != 2:
        return _with_sweep_id(parse_workflow_args(BertSweepConfig, args)), None
    if workflow.info().continued_run_id is None:
        raise invalid_input(
            "expected exactly one JSON object (BertSweepConfig); a second argument (SweepCarry) is "
            "only accepted from the workflow's own continue-as-new",
            field="input",
        )
    config, carry = args
    return _with_sweep_id(parse_input(BertSweepConfig, config)), parse_input(SweepCarry, carry)


def _with_sweep_id(cfg: BertSweepConfig) -> BertSweepConfig:
    """The config with its sweep id: the workflow id, which the config's must equal when given."""
    workflow_id = workflow.info().workflow_id
    if cfg.sweep_id is None:
        # Validated like a given one, so a bad workflow id is refused naming sweep_id.
        return parse_input(BertSweepConfig, cfg.model_dump() | {"sweep_id": workflow_id})
    if cfg.sweep_id != workflow_id:
        raise invalid_input(
            f"{cfg.sweep_id!r} differs from the workflow id {workflow_id!r}; start the workflow with "
            "id equal to sweep_id (or leave sweep_id empty to use the workflow id)",
            field="sweep_id",
        )
    return cfg


def _new_sweep(cfg: BertSweepConfig) -> BertSweepResult:
    """The sweep's trials (the grid, or a seeded sample of it) and rungs, before any training."""
    assert cfg.sweep_id is not None
    points = sweep_grid.grid_points(cfg.parameters)
    seed = None
    if cfg.num_trials is not None and cfg.num_trials < len(points):
        seed = cfg.seed if cfg.seed is not None else workflow.random().randint(0, SEED_RANGE)
        points = sweep_grid.sample_points(points, cfg.num_trials, random.Random(seed))  # noqa: S311 (not security)
    trials = [
        SweepTrial(run_id=sweep_grid.trial_run_id(cfg.sweep_id, number), params=params)
        for number, params in enumerate(points, start=1)
    ]
    rungs: list[int | None] = [cfg.base.max_steps]
    if cfg.strategy == "successive_halving":
        assert cfg.min_steps is not None
        assert cfg.base.max_steps is not None
        rungs = list(sweep_grid.rung_schedule(cfg.min_steps, cfg.base.max_steps, cfg.eta))
    return BertSweepResult(
        sweep_id=cfg.sweep_id,
        strategy=cfg.strategy,
        metric=cfg.metric,
        mode=cfg.mode,
        rungs=rungs,
        trials=trials,
        seed=seed,
    )


def _trial_config(
    cfg: BertSweepConfig, trial: SweepTrial, rung: int, steps: int | None
) -> BertFineTuneConfig:
    """The training config of one trial at one rung: base, its parameters, and the rung's steps.

    Every rung of successive halving keeps the learning-rate schedule of the whole run (to
    ``base.max_steps``), so a trial stopped at a rung has trained exactly as its full run would have
    up to there, and a promoted trial goes on with the schedule it began.
    """
    update: dict[str, Any] = trial.params | {"run_id": trial.run_id, "continue_run": rung > 0}
    if cfg.strategy == "successive_halving":
        update["max_steps"] = steps
        update["lr_schedule_steps"] = cfg.base.lr_schedule_steps or cfg.base.max_steps
    return BertFineTuneConfig.model_validate(cfg.base.model_dump() | update)


def _innermost_message(error: BaseException) -> str:
    """The deepest cause's message: the trial's own error, not the child-workflow wrapper."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error.message if isinstance(error, ApplicationError) else str(error)


@workflow.defn(name=names.SWEEP_WORKFLOW)
class BertSweepWorkflow:
    """Run a hyperparameter sweep: trials as child training workflows, grid or successive halving.

    A versioned orchestrator registers :class:`PinnedBertSweepWorkflow` instead (same code).
    """

    def __init__(self) -> None:
        """Start with an empty progress record."""
        self._progress = SweepProgress()

    @property
    def _sweep(self) -> BertSweepResult:
        assert self._progress.sweep is not None
        return self._progress.sweep

    @workflow.run
    async def run(self, *args: Any) -> BertSweepResult:
        """Run every rung of the sweep.

        Args:
            *args: One ``BertSweepConfig`` (plain JSON works), or, after a continue-as-new, the
                config and a ``SweepCarry``. Anything else, or a bad field, fails the workflow with an
                ``InvalidInputError`` naming the problem, without retries.

        Returns:
            Every trial, the best one and the steps trained over all of them.
        """
        try:
            cfg, carry = _parse_sweep_args(args)
            if carry is not None:
                self._progress = carry.progress
            else:
                self._progress.sweep = _new_sweep(cfg)
            self._progress.stage = "training"
            await self._run_rungs(cfg)
            return self._finish()
        except ApplicationError as exc:
            self._progress.stage, self._progress.error = "failed", exc.message
            raise
        except (ActivityError, asyncio.CancelledError) as exc:
            if not is_cancelled_exception(exc):
                raise
            self._progress.stage = "cancelled"
            for trial in self._progress.sweep.trials if self._progress.sweep else []:
                if trial.state in ("pending", "training", "promoted"):
                    trial.state = "cancelled"
            raise

    async def _run_rungs(self, cfg: BertSweepConfig) -> None:
        """Train each rung from the one the carry names, recording the sweep after each."""
        rungs = self._sweep.rungs
        for rung in range(self._progress.rung, len(rungs)):
            self._progress.rung = rung
            members = [
                i for i, trial in enumerate(self._sweep.trials) if trial.state in ("pending", "promoted")
            ]
            semaphore = asyncio.Semaphore(cfg.max_concurrent_trials)
            # return_exceptions: a cancelled sweep must wait for every trial to stop, and gather
            # without it returns as soon as one trial (one waiting for a slot) is cancelled.
            outcomes = await asyncio.gather(
                *(self._train_trial(cfg, rung, i, semaphore) for i in members), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            last = rung + 1 == len(rungs)
            if not last:
                self._promote(cfg, members)
            self._refresh_best()
            await self._record()
            if not last and self._should_continue_as_new(cfg):
                self._progress.rung = rung + 1
                self._progress.continued_as_new += 1
                workflow.continue_as_new(args=[cfg, SweepCarry(progress=self._progress)])

    async def _train_trial(
        self, cfg: BertSweepConfig, rung: int, index: int, slots: asyncio.Semaphore
    ) -> None:
        """Train one trial through one rung as a child workflow; a failure is recorded, not raised."""
        trial = self._sweep.trials[index]
        config = _trial_config(cfg, trial, rung, self._sweep.rungs[rung])
        async with slots:
            trial.state = "training"
            try:
                result = await workflow.execute_child_workflow(
                    names.TRAINING_WORKFLOW,
                    config,
                    id=trial.run_id,
                    task_queue=workflow.info().task_queue,
                    memo=_child_memo(),
                    result_type=BertFineTuneResult,
                    # Closing the sweep (cancel, terminate, timeout) cancels its trials; a cancel
                    # waits for each trial to stop, so the GPUs are free when "cancelled" shows.
                    parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                    cancellation_type=workflow.ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
            except (ChildWorkflowError, WorkflowAlreadyStartedError) as exc:
                trial.state = "cancelled" if is_cancelled_exception(exc) else "failed"
                trial.error = _innermost_message(exc)
                workflow.logger.warning(
                    "sweep trial ended without a result",
                    extra={"trial": trial.run_id, "rung": rung, "state": trial.state, "error": trial.error},
                )
                return
        self._learn(cfg, trial, rung, result)

    def _learn(self, cfg: BertSweepConfig, trial: SweepTrial, rung: int, result: BertFineTuneResult) -> None:
        """Take the rung's step, metric and steps trained from a finished trial."""
        metric = (result.eval_metrics or {}).get(cfg.metric)
        trial.state = "completed"
        trial.rung = rung
        trial.steps_trained += sweep_grid.steps_trained(result.global_step, trial.global_step)
        trial.global_step = result.global_step
        trial.metric = metric
        trial.eval_loss = (result.eval_metrics or {}).get("eval_loss")
        trial.points.append(SweepPoint(step=result.global_step, metric=metric))
        if metric is None:
            known = ", ".join(sorted(result.eval_metrics or {})) or "none"
            trial.error = f"the evaluation reported no {cfg.metric!r} (it reported: {known})"

    def _promote(self, cfg: BertSweepConfig, members: list[int]) -> None:
        """Mark the best ``1/eta`` of the rung promoted and the other finished trials stopped."""
        promoted = set(sweep_grid.promote(self._sweep.trials, members, cfg.eta, cfg.mode))
        for index in members:
            trial = self._sweep.trials[index]
            if trial.state == "completed":
                trial.state = "promoted" if index in promoted else "stopped"

    def _refresh_best(self) -> None:
        sweep = self._sweep
        best = sweep_grid.best_trial(sweep.trials, sweep.mode)
        sweep.best_run_id = sweep.trials[best].run_id if best is not None else None
        sweep.best_metric = sweep.trials[best].metric if best is not None else None
        sweep.total_steps = sum(trial.steps_trained for trial in sweep.trials)

    async def _record(self) -> None:
        """Write ``trials.json`` and ``metric.png`` on a GPU worker; a failed report never fails the sweep."""
        try:
            report = await workflow.execute_activity(
                activities.record_sweep,
                SweepReportRequest(sweep=self._sweep),
                # The inference queue: a report is light and must not wait for a training slot.
                task_queue=_queues().inference,
                start_to_close_timeout=REPORT_TIMEOUT,
                schedule_to_close_timeout=REPORT_WAIT,
                retry_policy=RetryPolicy(
                    maximum_attempts=3, non_retryable_error_types=list(NON_RETRYABLE_ERROR_TYPES)
                ),
            )
        except ActivityError as exc:
            if is_cancelled_exception(exc):
                raise
            workflow.logger.warning(
                "the sweep report was not written",
                extra={"sweep_id": self._sweep.sweep_id, "error": str(exc.cause or exc)},
            )
            return
        self._sweep.report_path = report.report_path

    def _should_continue_as_new(self, cfg: BertSweepConfig) -> bool:
        info = workflow.info()
        return (
            info.is_continue_as_new_suggested()
            or info.get_current_history_length() >= cfg.base.timeouts.continue_as_new_after_events
        )

    def _finish(self) -> BertSweepResult:
        sweep = self._sweep
        if sweep.trials and all(trial.state == "failed" for trial in sweep.trials):
            raise configuration_error(
                f"every trial of sweep {sweep.sweep_id} failed; the first: "
                f"{sweep.trials[0].run_id}: {sweep.trials[0].error}"
            )
        self._progress.stage = "completed"
        return sweep

    @workflow.query(name=names.GET_PROGRESS_QUERY)
    def get_progress(self) -> SweepProgress:
        """Return the sweep's durable view: stage, rung, every trial and the best so far.

        A trial's live step is its own run's progress (``durabert status <run_id>``).
        """
        return self._progress


@workflow.defn(name=names.SWEEP_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class PinnedBertSweepWorkflow(BertSweepWorkflow):
    """The sweep as a versioned orchestrator registers it: pinned to its build, like its trials.

    A sweep runs as long as its trials together; it finishes on the build that started it rather
    than replaying a long history on newer workflow code.
    """

    @workflow.run
    async def run(self, *args: Any) -> BertSweepResult:
        """Run the sweep (see :meth:`BertSweepWorkflow.run`).

        Args:
            *args: As for :meth:`BertSweepWorkflow.run`.

        Returns:
            The sweep result.
        """
        return await super().run(*args)
