"""Recorded histories replay against today's workflow code without non-determinism errors.

The histories are produced by the workflow and end-to-end scenarios
(``DURABERT_RECORD_HISTORIES=1 make unit``) and committed: a change to the workflows that
would break running executions fails here.
"""

import json

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from durabert.orchestrator.workflows import WORKFLOWS
from durabert.shared import names
from support.histories import HISTORY_DIR, load_history

HISTORIES = sorted(HISTORY_DIR.glob("*.json"))


def test_histories_of_both_workflows_are_committed() -> None:
    types = set()
    for path in HISTORIES:
        events = json.loads(path.read_text())["history"]["events"]
        started = events[0]["workflowExecutionStartedEventAttributes"]
        types.add(started["workflowType"]["name"])
    assert {names.TRAINING_WORKFLOW, names.INFERENCE_WORKFLOW} <= types


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path) -> None:
    history = load_history(path)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None
