"""Run ids and workflow ids the CLI hands to Temporal.

A training run's workflow id *is* its run id, so ``durabert status RUN_ID`` needs no lookup
table and Temporal itself refuses a second running workflow writing into the same folder.
"""

import secrets
from datetime import UTC, datetime

from durabert.shared.models import run_id_problem


def generate_run_id(now: datetime | None = None, token: str | None = None) -> str:
    """Make a fresh run id such as ``run-20250101-120000-a1b2``.

    Args:
        now: Time to stamp (UTC); the current time when None.
        token: Four lowercase hex digits; random when None (two runs started in the same
            second by two people must not collide).

    Returns:
        A valid run id (see ``run_id_problem``).
    """
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = f"run-{stamp}-{token if token is not None else secrets.token_hex(2)}"
    if run_id_problem(run_id) is not None:
        raise ValueError(f"generated run id {run_id!r} is not valid (token must be lowercase hex)")
    return run_id


def check_run_id(value: str) -> str | None:
    """Say why a run id is not allowed.

    Args:
        value: A candidate run id.

    Returns:
        None when it is valid, else the reason (the contract's own message).
    """
    return run_id_problem(value)


def inference_workflow_id(run_id: str, token: str | None = None) -> str:
    """Name one inference call's workflow: ``infer-<run_id>-<8 hex>``.

    Args:
        run_id: The training run whose model is used.
        token: Eight hex digits; random when None, so calls never collide.

    Returns:
        The workflow id.
    """
    return f"infer-{run_id}-{token if token is not None else secrets.token_hex(4)}"
