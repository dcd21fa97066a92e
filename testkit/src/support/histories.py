"""Recording workflow histories for the replay test.

Run the suite with ``DURABERT_RECORD_HISTORIES=1`` to (re)write the committed histories
from the scenarios that produce them; by default nothing is written.
"""

import json
import os
from pathlib import Path

from temporalio.client import WorkflowHandle, WorkflowHistory

HISTORY_DIR = Path(__file__).resolve().parents[3] / "tests" / "orchestrator" / "histories"


async def record_history(handle: WorkflowHandle[object, object], name: str) -> None:
    """Write the workflow's history to ``histories/<name>.json`` when recording is on."""
    if os.environ.get("DURABERT_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    HISTORY_DIR.mkdir(parents=True, exist_ok=True)
    # The workflow id is part of what the workflow sees (it derives run ids from it).
    record = {"workflow_id": history.workflow_id, "history": json.loads(history.to_json())}
    (HISTORY_DIR / f"{name}.json").write_text(json.dumps(record, indent=1))


def load_history(path: Path) -> WorkflowHistory:
    """Read a history written by :func:`record_history`."""
    record = json.loads(path.read_text())
    return WorkflowHistory.from_json(record["workflow_id"], record["history"])
