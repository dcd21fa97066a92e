"""Recorded histories replay against today's workflow code without non-determinism errors.

The histories are produced by the workflow and end-to-end scenarios
(``DURABERT_RECORD_HISTORIES=1 make unit``) and committed: a change to the workflows that
would break running executions fails here. Such a change ships as a new orchestrator build id
(Worker Versioning pins running trainings to the build that started them) and the histories are
re-recorded for the release (docs/deploy.md).
"""

import json
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from durabert.orchestrator.workflows import VERSIONED_WORKFLOWS, WORKFLOWS
from durabert.shared import names
from support.histories import load_history

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_histories_of_both_workflows_are_committed() -> None:
    types = set()
    for path in HISTORIES:
        events = json.loads(path.read_text())["history"]["events"]
        started = events[0]["workflowExecutionStartedEventAttributes"]
        types.add(started["workflowType"]["name"])
    assert {
        names.TRAINING_WORKFLOW,
        names.INFERENCE_WORKFLOW,
        names.BATCH_INFERENCE_WORKFLOW,
        names.EVALUATION_WORKFLOW,
        names.SWEEP_WORKFLOW,
    } <= types
    # The long-run paths are covered: preemptions and a continue-as-new.
    assert {"training_preempted_six_times", "training_continued_as_new"} <= {p.stem for p in HISTORIES}


@pytest.mark.parametrize("workflows", [WORKFLOWS, VERSIONED_WORKFLOWS], ids=["unversioned", "versioned"])
@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path, workflows) -> None:
    history = load_history(path)
    replayer = Replayer(workflows=workflows, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
