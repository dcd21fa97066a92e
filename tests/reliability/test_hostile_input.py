"""Hostile and bad input: refused naming the field, nothing written to the store, never retried.

Every case goes through a real entry point: the ``durabert`` CLI in-process, a raw JSON
dict started by workflow type name (what ``temporal workflow start --input`` sends), the
real ``temporal`` CLI binary, or a valid config that only the real data worker can refuse.
One orchestrator worker and one data worker (each from its role's ``build_spec``) serve the
whole module on random queues; nothing polls the GPU queue, so a run that got past its
refusal would be seen scheduling ``fine_tune_bert`` (the control test shows that it does).

"Never retried" is read from the workflow history: no failed workflow tasks (a workflow
stuck retrying its first task would show them), no activity scheduled when the workflow
refuses the input itself, and the snapshot activity started once, at attempt 1, when the
data worker refuses it (its retry policy allows three attempts, so a retry would show).
"""

import asyncio
import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from durabert.data_worker.worker import build_spec as data_spec
from durabert.orchestrator.cli import EXIT_USAGE, Output, execute
from durabert.orchestrator.devserver import DevServer, find_temporal_cli
from durabert.orchestrator.worker import build_spec as orchestrator_spec
from durabert.shared import names
from durabert.shared.errors import ErrorType
from durabert.shared.models import BertFineTuneConfig, BertInferenceRequest
from durabert.shared.runner import build_worker
from durabert.shared.settings import DataWorkerSettings, DurabertSettings, QueueSettings
from support.datasets import write_reviews

pytestmark = pytest.mark.integration

FAST_TIMEOUTS = {"retry_initial_interval_seconds": 0.1, "retry_maximum_interval_seconds": 0.2}
"""Retry pacing short enough that a (wrong) retry would show within the test."""
RESULT_TIMEOUT = 60.0
"""Seconds to wait for a refused workflow to close: a refusal that hangs fails the test."""
FIVE_MB = 5 * 1024 * 1024


# --- module fixtures ------------------------------------------------------------------------------


@dataclass
class Hostile:
    """The module's settings, client, store and a folder outside the allowed data roots."""

    settings: DurabertSettings
    client: Client
    address: str
    outside: Path
    """A folder the data worker must never read (not one of its allowed roots)."""
    executors: list[Executor] = field(default_factory=list)

    @property
    def store(self) -> Path:
        """The artifact store every worker here writes to."""
        return self.settings.artifact_dir

    @property
    def data_dir(self) -> Path:
        """The data folder (an allowed root)."""
        return self.settings.data_dir

    def store_files(self) -> set[str]:
        """Every path under the artifact store, relative to it."""
        return {str(path.relative_to(self.store)) for path in self.store.rglob("*")}

    def data_artifacts(self) -> set[str]:
        """Store paths other than run claims (``runs/<id>/run.json`` and its folders), which the
        workflow writes before any data is read: what a refused snapshot must not add to."""
        claims = {
            path for path in self.store_files() if path.startswith("runs/") and path.endswith("/run.json")
        }
        folders = {str(Path(path).parent) for path in claims} | ({"runs"} if claims else set())
        return self.store_files() - claims - folders


@pytest.fixture(scope="module")
async def env(
    client: Client, dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Hostile]:
    """The real orchestrator and data workers on random queues; no GPU worker."""
    root = tmp_path_factory.mktemp("hostile")
    suffix = uuid.uuid4().hex[:8]
    settings = DurabertSettings(
        temporal={"address": dev_server.address},
        artifact_root=root / "artifacts",
        data_dir=root / "data",
        # The defaults (artifact root and data folder), written out: the outside folder is not one.
        allowed_data_roots=[root / "artifacts", root / "data"],
        queues=QueueSettings(data=f"data-{suffix}", gpu=f"gpu-{suffix}", orchestrator=f"orch-{suffix}"),
        data=DataWorkerSettings(allow_trust_remote_code=False),
    )
    for folder in (settings.artifact_dir, settings.data_dir, root / "outside"):
        folder.mkdir(parents=True)
    hostile = Hostile(settings, client, dev_server.address, root / "outside")
    async with AsyncExitStack() as stack:
        for spec in (orchestrator_spec(settings), data_spec(settings)):
            await stack.enter_async_context(build_worker(client, settings, spec))
            if spec.activity_executor is not None:
                hostile.executors.append(spec.activity_executor)
        yield hostile
    for executor in hostile.executors:
        executor.shutdown(wait=False)


@pytest.fixture
def token() -> str:
    """A fresh token that keeps this test's workflow ids apart from every other's."""
    return uuid.uuid4().hex[:8]


# --- helpers --------------------------------------------------------------------------------------


class Captured(Output):
    """The CLI's two consoles backed by strings, wide enough that nothing wraps."""

    def __init__(self) -> None:
        super().__init__(
            out=Console(file=io.StringIO(), width=400, color_system=None),
            err=Console(file=io.StringIO(), width=400, color_system=None),
        )

    @property
    def stderr(self) -> str:
        file = self.err.file
        assert isinstance(file, io.StringIO)
        return file.getvalue()


async def run_cli(env: Hostile, *argv: str) -> tuple[int, str]:
    """Run ``durabert ARGV`` in-process against the module's server; exit code and stderr."""
    captured = Captured()
    code = await execute(list(argv), env.settings, output=captured)
    return code, captured.stderr


def write_config(folder: Path, data: dict[str, Any], suffix: str = ".yaml") -> Path:
    path = folder / f"config-{uuid.uuid4().hex[:6]}{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    return path


def base_config(data_files: Any = "train.jsonl", **overrides: Any) -> dict[str, Any]:
    """A config that is valid until a test breaks one field of it."""
    return {
        "dataset_name": "json",
        "data_files": data_files,
        "text_field": "sentence",
        "max_steps": 2,
        "max_attempts": 3,
        "timeouts": FAST_TIMEOUTS,
    } | overrides


@dataclass(frozen=True)
class HistoryFacts:
    """What a workflow's history says about retries and scheduled work."""

    scheduled: list[str]
    """Activity type names scheduled, in order (the run claim included)."""
    attempts: dict[str, list[int]]
    """Activity type name to the attempt number of each of its ActivityTaskStarted events."""
    workflow_task_failures: int
    """WorkflowTaskFailed events: a workflow that cannot decode its input keeps failing its task."""

    @property
    def work(self) -> list[str]:
        """Scheduled activities other than the run claim (bookkeeping that precedes any data)."""
        return [name for name in self.scheduled if name != names.CLAIM_RUN]

    @property
    def snapshot_attempts(self) -> list[int]:
        """Attempt numbers of the snapshot activity's starts: ``[1]`` when it ran once, unretried."""
        return self.attempts.get(names.CREATE_DATASET_SNAPSHOT, [])


async def history_facts(handle: WorkflowHandle[Any, Any]) -> HistoryFacts:
    scheduled: list[str] = []
    scheduled_types: dict[int, str] = {}
    attempts: dict[str, list[int]] = {}
    task_failures = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            name = event.activity_task_scheduled_event_attributes.activity_type.name
            scheduled.append(name)
            scheduled_types[event.event_id] = name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            attempts.setdefault(scheduled_types[started.scheduled_event_id], []).append(started.attempt)
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            task_failures += 1
    return HistoryFacts(scheduled, attempts, task_failures)


def refusal(error: BaseException, error_type: ErrorType = ErrorType.INVALID_INPUT) -> ApplicationError:
    """The non-retryable ApplicationError behind a failed workflow (through an activity, if one)."""
    assert isinstance(error, WorkflowFailureError), error
    cause = error.cause
    if isinstance(cause, ActivityError):
        cause = cause.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.type == error_type.value, cause
    assert cause.non_retryable, cause
    return cause


def assert_names(message: str, field_name: str) -> None:
    """The message names the field the way the contract writes it: ``field: why``."""
    assert f"{field_name}:" in message, message


async def start_and_fail(
    env: Hostile,
    workflow_type: str,
    payload: Any,
    workflow_id: str,
) -> tuple[ApplicationError, HistoryFacts]:
    """Start a workflow by type name, expect it to fail, and read its history."""
    handle = await env.client.start_workflow(
        workflow_type,
        payload,
        id=workflow_id,
        task_queue=env.settings.queues.orchestrator,
        memo=env.settings.queue_memo(),
    )
    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    description = await handle.describe()
    assert description.status == WorkflowExecutionStatus.FAILED
    return refusal(info.value), await history_facts(handle)


async def assert_no_workflow(env: Hostile, workflow_id: str) -> None:
    """Nothing was started under this id: Temporal never saw the request."""
    with pytest.raises(RPCError) as info:
        await env.client.get_workflow_handle(workflow_id).describe()
    assert info.value.status == RPCStatusCode.NOT_FOUND


# --- run ids --------------------------------------------------------------------------------------

BAD_RUN_IDS = {
    "parent-dir": "../etc-{t}",
    "slash": "runs/{t}",
    "leading-dot": ".hidden-{t}",
    "200-chars": "a" * 192 + "{t}",
    "uppercase": "MyRun-{t}",
    "trailing-dash": "run-{t}-",
}
"""Run ids that must never name a folder or a Kubernetes label; ``{t}`` keeps ids apart."""


@pytest.mark.parametrize("template", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
async def test_bad_run_id_flag_is_refused_by_the_cli(env: Hostile, token: str, template: str) -> None:
    run_id = template.format(t=token)
    before = env.store_files()
    config = write_config(env.data_dir, base_config())
    code, stderr = await run_cli(env, "train", str(config), "--run-id", run_id)
    assert code == EXIT_USAGE, stderr
    assert_names(stderr, "--run-id")
    await assert_no_workflow(env, run_id)
    assert env.store_files() == before


@pytest.mark.parametrize("template", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
async def test_bad_run_id_in_yaml_is_refused_by_the_cli(env: Hostile, token: str, template: str) -> None:
    run_id = template.format(t=token)
    before = env.store_files()
    config = write_config(env.data_dir, base_config(run_id=run_id))
    code, stderr = await run_cli(env, "train", str(config))
    assert code == EXIT_USAGE, stderr
    assert_names(stderr, f"{config}: run_id")
    await assert_no_workflow(env, run_id)
    assert env.store_files() == before


@pytest.mark.parametrize("template", BAD_RUN_IDS.values(), ids=BAD_RUN_IDS.keys())
async def test_bad_run_id_in_raw_json_fails_the_workflow(env: Hostile, token: str, template: str) -> None:
    # The workflow id equals the bad run id, as an attacker passing the id check would send it.
    run_id = template.format(t=token)
    before = env.store_files()
    error, history = await start_and_fail(env, names.TRAINING_WORKFLOW, base_config(run_id=run_id), run_id)
    assert_names(error.message, "run_id")
    assert history.scheduled == []
    assert history.workflow_task_failures == 0
    assert env.store_files() == before


# --- numbers, sizes and unknown keys --------------------------------------------------------------

BAD_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "learning_rate-zero": ({"learning_rate": 0}, "learning_rate"),
    "learning_rate-negative": ({"learning_rate": -5e-5}, "learning_rate"),
    "batch_size-zero": ({"batch_size": 0}, "batch_size"),
    "batch_size-negative": ({"batch_size": -16}, "batch_size"),
    "max_steps-zero": ({"max_steps": 0}, "max_steps"),
    "max_steps-negative": ({"max_steps": -1}, "max_steps"),
    "checkpoint_steps-zero": ({"checkpoint_steps": 0}, "checkpoint_steps"),
    "num_epochs-negative": ({"num_epochs": -1}, "num_epochs"),
    "max_attempts-zero": ({"max_attempts": 0}, "max_attempts"),
    "nested-timeout-negative": (
        {"timeouts": FAST_TIMEOUTS | {"snapshot_timeout_seconds": -1}},
        "timeouts.snapshot_timeout_seconds",
    ),
    "max_seq_length-100000": ({"max_seq_length": 100_000}, "max_seq_length"),
    "unknown-key-typo": ({"learning_rat": 0.1}, "learning_rat"),
    "unknown-nested-key": (
        {"timeouts": FAST_TIMEOUTS | {"snapshot_timeout_secs": 5}},
        "timeouts.snapshot_timeout_secs",
    ),
}
"""Config overrides that no worker should ever see, and the field each must be refused by."""


@pytest.mark.parametrize(("overrides", "field_name"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
async def test_bad_field_in_a_config_file_is_refused_by_the_cli(
    env: Hostile, token: str, overrides: dict[str, Any], field_name: str, suffix: str
) -> None:
    run_id = f"hostile-cli-{token}"
    before = env.store_files()
    config = write_config(env.data_dir, base_config(**overrides), suffix)
    code, stderr = await run_cli(env, "train", str(config), "--run-id", run_id)
    assert code == EXIT_USAGE, stderr
    assert_names(stderr, f"{config}: {field_name}")
    if field_name.endswith(("learning_rat", "_secs")):
        assert "unknown field" in stderr
    await assert_no_workflow(env, run_id)
    assert env.store_files() == before


@pytest.mark.parametrize(("overrides", "field_name"), BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
async def test_bad_field_in_raw_json_fails_the_workflow(
    env: Hostile, token: str, overrides: dict[str, Any], field_name: str
) -> None:
    run_id = f"hostile-json-{token}"
    before = env.store_files()
    error, history = await start_and_fail(
        env, names.TRAINING_WORKFLOW, base_config(run_id=run_id, **overrides), run_id
    )
    assert_names(error.message, field_name)
    assert history.scheduled == []
    assert history.workflow_task_failures == 0
    assert env.store_files() == before


NON_OBJECT_INPUTS: dict[str, list[Any]] = {
    "string": ["config.yaml"],
    "list": [[{"dataset_name": "json"}]],
    "number": [42],
    "two-arguments": [base_config(), {"learning_rate": 0.1}],
    "no-argument": [],
}
"""Inputs that are not one JSON object (``--input '"config.yaml"'``, two ``--input`` flags, none)."""


@pytest.mark.parametrize("args", NON_OBJECT_INPUTS.values(), ids=NON_OBJECT_INPUTS.keys())
@pytest.mark.parametrize("workflow_type", [names.TRAINING_WORKFLOW, names.INFERENCE_WORKFLOW])
async def test_input_that_is_not_one_json_object_fails_the_workflow(
    env: Hostile, token: str, workflow_type: str, args: list[Any]
) -> None:
    handle = await env.client.start_workflow(
        workflow_type,
        args=args,
        id=f"hostile-shape-{token}",
        task_queue=env.settings.queues.orchestrator,
        memo=env.settings.queue_memo(),
    )
    try:
        # Stop at the first sign either way: closed, or a failed workflow task (stuck retrying).
        for _ in range(int(RESULT_TIMEOUT / 0.1)):
            description = await handle.describe()
            history = await history_facts(handle)
            if description.status != WorkflowExecutionStatus.RUNNING or history.workflow_task_failures:
                break
            await asyncio.sleep(0.1)
        assert history.workflow_task_failures == 0, "the workflow task failed and is being retried"
        assert description.status == WorkflowExecutionStatus.FAILED
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        refusal(info.value)
        assert history.scheduled == []
    finally:
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("hostile input test: stuck workflow cleaned up")


# --- the real temporal CLI ------------------------------------------------------------------------


async def temporal_cli(env: Hostile, *args: str) -> tuple[int, str]:
    """Run the ``temporal`` binary against the module's server without blocking the workers."""
    process = await asyncio.create_subprocess_exec(
        str(find_temporal_cli()),
        *args,
        "--address",
        env.address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), RESULT_TIMEOUT)
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [({"run_id": "../etc-{t}"}, "run_id"), ({"learning_rat": 0.1}, "learning_rat")],
    ids=["run_id-parent-dir", "unknown-key-typo"],
)
async def test_plain_json_from_the_temporal_cli_fails_the_workflow(
    env: Hostile, token: str, overrides: dict[str, Any], field_name: str
) -> None:
    overrides = {key: value.format(t=token) if key == "run_id" else value for key, value in overrides.items()}
    workflow_id = overrides.get("run_id", f"hostile-temporal-{token}")
    before = env.store_files()
    code, output = await temporal_cli(
        env,
        "workflow",
        "start",
        "--type",
        names.TRAINING_WORKFLOW,
        "--task-queue",
        env.settings.queues.orchestrator,
        "--workflow-id",
        workflow_id,
        "--input",
        json.dumps(base_config(**overrides)),
    )
    assert code == 0, output
    # `result` waits for the end: a workflow stuck retrying its task would time this out.
    code, output = await temporal_cli(env, "workflow", "result", "--workflow-id", workflow_id)
    assert code != 0, output
    assert "Status   FAILED" in output, output
    assert_names(output, field_name)
    code, output = await temporal_cli(
        env, "workflow", "describe", "--workflow-id", workflow_id, "--output", "json"
    )
    assert code == 0, output
    described = json.loads(output)
    assert described["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_FAILED"
    failure = described["closeEvent"]["workflowExecutionFailedEventAttributes"]["failure"]
    assert failure["applicationFailureInfo"] == {"type": "InvalidInputError", "nonRetryable": True}
    assert_names(failure["message"], field_name)
    history = await history_facts(env.client.get_workflow_handle(workflow_id))
    assert history.scheduled == []
    assert history.workflow_task_failures == 0
    assert env.store_files() == before


# --- data the real data worker must refuse --------------------------------------------------------


def _rows(path: Path, labels: list[Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for index, label in enumerate(labels):
            handle.write(json.dumps({"sentence": f"review number {index} was fine", "label": label}) + "\n")
    return str(path)


def float_labels(env: Hostile) -> dict[str, Any]:
    return base_config(_rows(env.data_dir / "floats.jsonl", [0.0, 1.0, 0.5, 1.0] * 5))


def null_labels(env: Hostile) -> dict[str, Any]:
    return base_config(_rows(env.data_dir / "nulls.jsonl", [0, 1, None, 1] * 5))


def all_null_labels(env: Hostile) -> dict[str, Any]:
    return base_config(_rows(env.data_dir / "all-nulls.jsonl", [None] * 20))


def empty_file(env: Hostile) -> dict[str, Any]:
    path = env.data_dir / "empty.jsonl"
    path.write_text("")
    return base_config(str(path))


def empty_csv(env: Hostile) -> dict[str, Any]:
    path = env.data_dir / "empty.csv"
    path.write_text("")
    return base_config(str(path), dataset_name="csv")


def empty_parquet(env: Hostile) -> dict[str, Any]:
    path = env.data_dir / "empty.parquet"
    path.write_bytes(b"")
    return base_config(str(path), dataset_name="parquet")


def header_only_csv(env: Hostile) -> dict[str, Any]:
    path = env.data_dir / "header.csv"
    path.write_text("sentence,label\n")
    return base_config(str(path), dataset_name="csv")


def blank_lines(env: Hostile) -> dict[str, Any]:
    path = env.data_dir / "blank.jsonl"
    path.write_text("\n\n   \n")
    return base_config(str(path))


def system_file(env: Hostile) -> dict[str, Any]:
    return base_config("/etc/hostname")


def relative_escape(env: Hostile) -> dict[str, Any]:
    write_reviews(env.outside / "private.jsonl", rows=20)
    return base_config("../outside/private.jsonl")


def symlink_escape(env: Hostile) -> dict[str, Any]:
    target = write_reviews(env.outside / "linked.jsonl", rows=20)
    link = env.data_dir / "innocent.jsonl"
    if not link.is_symlink():
        link.symlink_to(target)
    return base_config(str(link))


def glob_symlink_escape(env: Hostile) -> dict[str, Any]:
    folder = env.data_dir / "globbed"
    write_reviews(folder / "a.jsonl", rows=20)
    link = folder / "b.jsonl"
    if not link.is_symlink():
        link.symlink_to(write_reviews(env.outside / "globbed.jsonl", rows=20))
    return base_config(str(folder / "*.jsonl"))


def split_outside(env: Hostile) -> dict[str, Any]:
    train = write_reviews(env.data_dir / "train-ok.jsonl", rows=20)
    private = write_reviews(env.outside / "eval-private.jsonl", rows=20)
    return base_config({"train": str(train), "validation": str(private)})


def dataset_folder_outside(env: Hostile) -> dict[str, Any]:
    write_reviews(env.outside / "folder" / "train.jsonl", rows=20)
    return base_config(dataset_name=str(env.outside / "folder"), data_files=None)


def local_scheme(env: Hostile) -> dict[str, Any]:
    target = write_reviews(env.outside / "scheme.jsonl", rows=20)
    return base_config(f"local://{target}")


def fsspec_chain(env: Hostile) -> dict[str, Any]:
    archive = env.outside / "private.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(write_reviews(env.outside / "zipped.jsonl", rows=20), "train.jsonl")
    return base_config(f"zip://train.jsonl::{archive}")


def folder_with_outside_files(env: Hostile) -> dict[str, Any]:
    folder = env.data_dir / "folder-ok"
    write_reviews(folder / "train.jsonl", rows=20)
    private = write_reviews(env.outside / "folder-private.jsonl", rows=20)
    return base_config(dataset_name=str(folder), data_files=str(private))


def folder_with_outside_link(env: Hostile) -> dict[str, Any]:
    folder = env.data_dir / "folder-link"
    write_reviews(folder / "train.jsonl", rows=20)
    link = folder / "validation.jsonl"
    if not link.is_symlink():
        link.symlink_to(write_reviews(env.outside / "link-private.jsonl", rows=20))
    return base_config(dataset_name=str(folder), data_files=None)


def dataset_name_scheme(env: Hostile) -> dict[str, Any]:
    write_reviews(env.outside / "scheme-folder" / "train.jsonl", rows=20)
    return base_config(dataset_name=f"local://{env.outside / 'scheme-folder'}", data_files=None)


def remote_code(env: Hostile) -> dict[str, Any]:
    good = write_reviews(env.data_dir / "reviews.jsonl", rows=20)
    return base_config(str(good), trust_remote_code=True)


DATA_CASES: dict[str, tuple[Callable[[Hostile], dict[str, Any]], str]] = {
    "label-floats": (float_labels, "label_field"),
    "label-some-nulls": (null_labels, "label_field"),
    "label-all-nulls": (all_null_labels, "label_field"),
    "empty-jsonl": (empty_file, "data_files"),
    "blank-lines-jsonl": (blank_lines, "data_files"),
    "empty-csv": (empty_csv, "data_files"),
    "header-only-csv": (header_only_csv, "data_files"),
    "empty-parquet": (empty_parquet, "data_files"),
    "outside-etc-hostname": (system_file, "data_files"),
    "outside-relative-dotdot": (relative_escape, "data_files"),
    "outside-symlink": (symlink_escape, "data_files"),
    "outside-glob-symlink": (glob_symlink_escape, "data_files"),
    "outside-eval-split": (split_outside, "data_files"),
    "outside-dataset-folder": (dataset_folder_outside, "dataset_name"),
    "outside-local-scheme": (local_scheme, "data_files"),
    "outside-fsspec-chain": (fsspec_chain, "data_files"),
    "outside-files-of-an-inside-folder": (folder_with_outside_files, "data_files"),
    "outside-link-in-an-inside-folder": (folder_with_outside_link, "dataset_name"),
    "outside-dataset-name-scheme": (dataset_name_scheme, "dataset_name"),
    "trust-remote-code-forbidden": (remote_code, "trust_remote_code"),
}
"""Valid configs (the contract accepts them) that only the data worker can refuse."""


@pytest.mark.parametrize(("make", "field_name"), DATA_CASES.values(), ids=DATA_CASES.keys())
async def test_data_worker_refuses_without_retry_or_training(
    env: Hostile, token: str, make: Callable[[Hostile], dict[str, Any]], field_name: str
) -> None:
    run_id = f"hostile-data-{token}"
    config = BertFineTuneConfig.model_validate(make(env) | {"run_id": run_id})
    before = env.data_artifacts()
    error, history = await start_and_fail(env, names.TRAINING_WORKFLOW, config, run_id)
    assert_names(error.message, field_name)
    # The data worker ran once and was not retried; training was never scheduled.
    assert history.work == [names.CREATE_DATASET_SNAPSHOT]
    assert history.snapshot_attempts == [1]
    assert history.workflow_task_failures == 0
    assert env.data_artifacts() == before


LOADERS_BEYOND_JSON = ["text", "arrow", "xml", "webdataset", "pandas", "imagefolder", "audiofolder"]
"""Packaged loaders that once resolved relative ``data_files`` against the worker's current directory
(the data worker's unit tests cover every loader the installed ``datasets`` ships)."""


@pytest.mark.parametrize("loader", LOADERS_BEYOND_JSON)
async def test_packaged_loaders_cannot_read_from_the_workers_current_directory(
    env: Hostile, token: str, loader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The data worker runs in this process: with its current directory at /, etc/passwd exists.
    monkeypatch.chdir("/")
    run_id = f"hostile-loader-{token}"
    config = BertFineTuneConfig.model_validate(
        base_config("etc/passwd", dataset_name=loader, text_field="text", run_id=run_id)
    )
    before = env.data_artifacts()
    error, history = await start_and_fail(env, names.TRAINING_WORKFLOW, config, run_id)
    assert_names(error.message, "data_files")
    assert "root:" not in error.message  # no line of the file came back
    assert history.work == [names.CREATE_DATASET_SNAPSHOT]
    assert history.snapshot_attempts == [1]
    assert env.data_artifacts() == before


async def test_label_field_equal_to_text_field_is_refused(env: Hostile, token: str) -> None:
    run_id = f"hostile-same-field-{token}"
    good = write_reviews(env.data_dir / "same-field.jsonl", rows=20)
    config = BertFineTuneConfig.model_validate(base_config(str(good), label_field="sentence", run_id=run_id))
    error, history = await start_and_fail(env, names.TRAINING_WORKFLOW, config, run_id)
    assert_names(error.message, "label_field")
    assert history.snapshot_attempts == [1]


async def test_url_without_its_fsspec_package_fails_once_without_its_credentials(
    env: Hostile, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durabert.data_worker import sources

    monkeypatch.setattr(sources, "_installed", lambda package: package != "aiohttp")
    run_id = f"hostile-url-{token}"
    secret = uuid.uuid4().hex
    url = f"https://reader:{secret}@data.example.com/train.jsonl?token={secret[::-1]}"
    config = BertFineTuneConfig.model_validate(base_config(url, run_id=run_id))
    handle_error, history = await start_and_fail_typed(env, config, run_id, ErrorType.CONFIGURATION)
    assert "aiohttp" in handle_error.message
    assert secret not in handle_error.message
    assert secret[::-1] not in handle_error.message
    assert history.work == [names.CREATE_DATASET_SNAPSHOT]
    assert history.snapshot_attempts == [1]


async def start_and_fail_typed(
    env: Hostile, config: BertFineTuneConfig, run_id: str, error_type: ErrorType
) -> tuple[ApplicationError, HistoryFacts]:
    """Like :func:`start_and_fail` for a training run refused with another error type."""
    handle = await env.client.start_workflow(
        names.TRAINING_WORKFLOW,
        config,
        id=run_id,
        task_queue=env.settings.queues.orchestrator,
        memo=env.settings.queue_memo(),
    )
    with pytest.raises(WorkflowFailureError) as info:
        await asyncio.wait_for(handle.result(), RESULT_TIMEOUT)
    return refusal(info.value, error_type), await history_facts(handle)


async def test_control_valid_data_reaches_training_and_writes_a_snapshot(env: Hostile, token: str) -> None:
    """The same set-up with good data: the store and history checks above can see a difference."""
    run_id = f"hostile-control-{token}"
    good = write_reviews(env.data_dir / "control.jsonl", rows=40)
    config = BertFineTuneConfig.model_validate(base_config(str(good), run_id=run_id))
    handle = await env.client.start_workflow(
        names.TRAINING_WORKFLOW,
        config,
        id=run_id,
        task_queue=env.settings.queues.orchestrator,
        memo=env.settings.queue_memo(),
    )
    try:
        for _ in range(int(RESULT_TIMEOUT / 0.1)):
            history = await history_facts(handle)
            if names.FINE_TUNE_BERT in history.scheduled:
                break
            await asyncio.sleep(0.1)
        assert history.work == [names.CREATE_DATASET_SNAPSHOT, names.FINE_TUNE_BERT]
        assert any(path.startswith("snapshots/") for path in env.store_files())
    finally:
        await handle.terminate("control test done: no GPU worker polls this queue")


# --- inference requests ---------------------------------------------------------------------------


def test_inference_request_model_refuses_too_many_or_too_large_texts() -> None:
    with pytest.raises(ValidationError) as many:
        BertInferenceRequest(run_id="run-1", texts=["fine"] * 10_000)
    assert [error["loc"] for error in many.value.errors()] == [("texts",)]
    with pytest.raises(ValidationError) as large:
        BertInferenceRequest(run_id="run-1", texts=["x" * FIVE_MB])
    assert [error["loc"] for error in large.value.errors()] == [("texts", 0)]


@pytest.mark.parametrize("shape", ["10000-arguments", "10000-lines-file", "5mb-line-file"])
async def test_cli_infer_refuses_before_temporal(env: Hostile, tmp_path: Path, shape: str) -> None:
    if shape == "10000-arguments":
        argv = ["fine"] * 10_000
    else:
        path = tmp_path / "texts.txt"
        path.write_text("\n".join(["fine"] * 10_000) if shape == "10000-lines-file" else "x" * FIVE_MB)
        argv = ["--file", str(path)]
    code, stderr = await run_cli(env, "infer", "run-1", *argv)
    assert code == EXIT_USAGE, stderr
    assert_names(stderr, "texts" if shape.startswith("10000") else "texts.0")
    assert len(stderr) < 2_000  # the message quotes a prefix, never the 5 MB text


async def test_raw_json_inference_with_10000_texts_fails_the_workflow(env: Hostile, token: str) -> None:
    workflow_id = f"hostile-infer-{token}"
    payload = {"run_id": "run-1", "texts": ["fine"] * 10_000}
    error, history = await start_and_fail(env, names.INFERENCE_WORKFLOW, payload, workflow_id)
    assert_names(error.message, "texts")
    assert history.scheduled == []
    assert history.workflow_task_failures == 0


async def test_raw_json_inference_with_a_5mb_text_is_refused_at_the_server(env: Hostile, token: str) -> None:
    # Larger than the gRPC message limit (4 MiB): the server refuses the start call itself,
    # at once, so no workflow exists to retry or hang.
    workflow_id = f"hostile-infer-5mb-{token}"
    with pytest.raises(RPCError) as info:
        await asyncio.wait_for(
            env.client.start_workflow(
                names.INFERENCE_WORKFLOW,
                {"run_id": "run-1", "texts": ["x" * FIVE_MB]},
                id=workflow_id,
                task_queue=env.settings.queues.orchestrator,
            ),
            RESULT_TIMEOUT,
        )
    assert "larger than max" in info.value.message or "exceeds limit" in info.value.message
    await assert_no_workflow(env, workflow_id)


async def test_raw_json_inference_with_a_3mb_text_is_refused_by_the_blob_limit(
    env: Hostile, token: str
) -> None:
    # Under the gRPC limit but over Temporal's 2 MB blob limit: refused by the server's check.
    workflow_id = f"hostile-infer-3mb-{token}"
    with pytest.raises(RPCError) as info:
        await env.client.start_workflow(
            names.INFERENCE_WORKFLOW,
            {"run_id": "run-1", "texts": ["x" * (3 * 1024 * 1024)]},
            id=workflow_id,
            task_queue=env.settings.queues.orchestrator,
        )
    assert "exceeds limit" in info.value.message, info.value.message
    await assert_no_workflow(env, workflow_id)
