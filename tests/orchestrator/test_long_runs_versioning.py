"""Safe deploys: Worker Versioning of the orchestrator (settings, wiring, and a deploy under a run).

The deploy test runs two orchestrator workers built by the real ``runner.build_worker`` with
build ids "1" and "2" on one queue; build 2 carries a *breaking* change of the training
workflow (a timer before anything else, which fails replay of build-1 histories). A run started
on build 1 stays pinned to it after build 2 becomes current and finishes there; a new run goes
to build 2. The activity workers are unversioned, as in production.
"""

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from build2_workflows import TrainingWorkflowBuild2
from fake_training import FakeWorkers, config, new_run_id, result_for
from temporalio import activity
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.common import VersioningBehavior
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.worker import Replayer, Worker

from durabert.data_worker.worker import build_spec as data_spec
from durabert.orchestrator.worker import build_spec as orchestrator_spec
from durabert.orchestrator.workflows import (
    VERSIONED_WORKFLOWS,
    WORKFLOWS,
    AutoUpgradeBertInferenceWorkflow,
)
from durabert.shared import names
from durabert.shared.models import BertFineTuneRequest, BertFineTuneResult
from durabert.shared.runner import WorkerSpec, build_worker, deployment_config
from durabert.shared.settings import DurabertSettings, unknown_env_vars

# --- settings and wiring ---------------------------------------------------------------------------


def test_versioning_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"DURABERT_WORKER__BUILD_ID": "0.2.0-abc123", "DURABERT_WORKER__DEPLOYMENT_NAME": "orch-prod"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert unknown_env_vars(DurabertSettings, env) == []  # the manifests' names are real settings
    worker = DurabertSettings().worker
    assert worker.deployment_version is not None
    assert worker.deployment_version.to_canonical_string() == "orch-prod.0.2.0-abc123"
    monkeypatch.setenv("DURABERT_WORKER__BUILD_ID", "")  # set but empty: unversioned
    assert DurabertSettings().worker.deployment_version is None


@pytest.mark.parametrize("bad", [{"deployment_name": "a.b"}, {"build_id": "has space"}, {"build_id": ".x"}])
def test_bad_versioning_settings_are_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        DurabertSettings(worker=bad)


def test_only_the_orchestrator_is_versioned_and_only_with_a_build_id() -> None:
    plain = DurabertSettings()
    spec = orchestrator_spec(plain)
    assert (spec.versioned, spec.workflows) == (False, WORKFLOWS)
    assert deployment_config(plain, spec) is None

    built = DurabertSettings(worker={"build_id": "7", "deployment_name": "orch"})
    spec = orchestrator_spec(built)
    assert (spec.versioned, spec.workflows) == (True, VERSIONED_WORKFLOWS)
    config_ = deployment_config(built, spec)
    assert config_ is not None
    assert config_.use_worker_versioning
    assert config_.version.to_canonical_string() == "orch.7"
    # The data worker (and the GPU worker) poll unversioned even where the build id is set.
    assert deployment_config(built, data_spec(built)) is None


# --- a deploy under a running training -------------------------------------------------------------


async def _make_current(client: Client, deployment: str, build_id: str) -> None:
    """Set the current version once the build's worker has registered it by polling."""

    async def attempt() -> None:
        while True:
            try:
                await client.workflow_service.set_worker_deployment_current_version(
                    SetWorkerDeploymentCurrentVersionRequest(
                        namespace=client.namespace, deployment_name=deployment, build_id=build_id
                    )
                )
                return
            except RPCError:
                await asyncio.sleep(0.1)  # not registered yet: its first poll is under way

    await asyncio.wait_for(attempt(), timeout=60)


def _orchestrator(
    client: Client, fake: FakeWorkers, deployment: str, build_id: str, workflows: list[type]
) -> Worker:
    settings = fake.settings.model_copy(
        update={
            "worker": fake.settings.worker.model_copy(
                update={"deployment_name": deployment, "build_id": build_id}
            )
        }
    )
    spec = WorkerSpec(
        role="orchestrator", task_queue=settings.queues.orchestrator, workflows=workflows, versioned=True
    )
    return build_worker(client, settings, spec)


async def _pinned_build(handle: WorkflowHandle[Any, Any]) -> tuple[int, str]:
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return info.behavior, info.deployment_version.build_id


async def _drain_query(client: Client, deployment: str, build_id: str) -> list[str]:
    """Running workflows still on a build: the query docs/deploy.md gives for watching a drain."""
    query = f"TemporalWorkerDeploymentVersion='{deployment}:{build_id}' AND ExecutionStatus='Running'"

    async def poll() -> list[str]:
        while True:
            ids = [wf.id async for wf in client.list_workflows(query)]
            if ids:
                return ids
            await asyncio.sleep(0.2)  # visibility is eventually consistent

    return await asyncio.wait_for(poll(), timeout=30)


async def test_a_workflow_change_deployed_under_a_running_training_finishes_on_its_old_build(
    client: Client, artifact_root: Path
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    first_id, second_id = new_run_id("pinned"), new_run_id("fresh")

    @activity.defn(name=names.FINE_TUNE_BERT)
    async def fine_tune(request: BertFineTuneRequest) -> BertFineTuneResult:
        if request.run_id == first_id:
            started.set()
            await release.wait()  # a long training, still running while build 2 rolls out
        return result_for(request, resumed=None)

    deployment = f"durabert-test-{uuid.uuid4().hex[:8]}"
    async with FakeWorkers(client, fine_tune, artifact_root) as fake:
        build1 = _orchestrator(client, fake, deployment, "1", VERSIONED_WORKFLOWS)
        build2 = _orchestrator(
            client, fake, deployment, "2", [TrainingWorkflowBuild2, AutoUpgradeBertInferenceWorkflow]
        )
        async with build1:
            await _make_current(client, deployment, "1")
            first = await fake.start(config(run_id=first_id), first_id)
            await asyncio.wait_for(started.wait(), timeout=60)
            draining = await _drain_query(client, deployment, "1")
            async with build2:
                await _make_current(client, deployment, "2")
                second = await fake.train(config(run_id=second_id), second_id)
                release.set()
                first_result = await first.result()
                pins = await _pinned_build(first), await _pinned_build(client.get_workflow_handle(second_id))
                history = await first.fetch_history()

    assert draining == [first_id]
    assert first_result.device == "cpu"  # build 1's code ran the whole first run
    assert second.device == "build-2"  # the new run started on build 2
    assert pins == ((VersioningBehavior.PINNED, "1"), (VersioningBehavior.PINNED, "2"))
    # Build 2's change would have broken the first run: its history does not replay on it.
    broken = await Replayer(
        workflows=[TrainingWorkflowBuild2], data_converter=pydantic_data_converter
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert broken.replay_failure is not None
    same = await Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter).replay_workflow(
        history
    )
    assert same.replay_failure is None
