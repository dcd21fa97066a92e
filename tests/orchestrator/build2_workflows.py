"""Build 2 of the orchestrator in the deploy test: the training workflow with a breaking change.

Its own small module, because the workflow sandbox re-imports the module a workflow is defined in.
"""

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from durabert.orchestrator.workflows import PinnedBertTrainingWorkflow
    from durabert.shared import names
    from durabert.shared.models import BertFineTuneResult


@workflow.defn(name=names.TRAINING_WORKFLOW, versioning_behavior=VersioningBehavior.PINNED)
class TrainingWorkflowBuild2(PinnedBertTrainingWorkflow):
    """A new first command (a timer), so build-1 histories no longer replay; marks its results."""

    @workflow.run
    async def run(self, *args: Any) -> BertFineTuneResult:
        await workflow.sleep(timedelta(milliseconds=1))
        result = await super().run(*args)
        return result.model_copy(update={"device": "build-2"})
