"""The CLI's pure parts: config files, run ids, texts, progress text; refusals before any connection.

Commands that must refuse input are run against settings pointing at a closed port: had
they contacted Temporal they would exit 1 with "cannot reach", not 2 with the field named.
"""

import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cli_capture import Captured
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError, RetryState
from temporalio.service import RPCError, RPCStatusCode

from durabert.orchestrator.cli import _print_status, build_parser, execute, rpc_error_text
from durabert.orchestrator.client_ops import (
    LiveProgress,
    RunStatus,
    failure_message,
    failure_type,
    merge_progress,
    query_progress,
    web_ui_url,
)
from durabert.orchestrator.config_file import (
    UserInputError,
    build_inference_request,
    load_config,
    read_texts,
)
from durabert.orchestrator.devserver import free_port
from durabert.orchestrator.progress import LineView, format_progress, progress_details, result_rows
from durabert.orchestrator.run_ids import check_run_id, generate_run_id, inference_workflow_id
from durabert.shared import names
from durabert.shared.models import (
    RUN_ID_PATTERN,
    BertFineTuneConfig,
    BertFineTuneResult,
    CheckpointInfo,
    TrainingHeartbeat,
    TrainingProgress,
)
from durabert.shared.settings import DurabertSettings

GOOD_YAML = "dataset_name: json\ndata_files: data/train.jsonl\nmax_steps: 10\nlearning_rate: 5e-5\n"


@pytest.fixture
def nowhere(tmp_path: Path) -> DurabertSettings:
    """Settings whose Temporal address nothing listens on."""
    return DurabertSettings(temporal={"address": f"127.0.0.1:{free_port()}"}, artifact_root=tmp_path)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- config files -------------------------------------------------------------------------


def test_yaml_config_loads_and_gets_a_fresh_run_id(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "c.yaml", GOOD_YAML))
    assert config.max_steps == 10
    assert config.learning_rate == pytest.approx(5e-5)  # YAML reads 5e-5 as a string
    assert config.run_id is not None
    assert RUN_ID_PATTERN.fullmatch(config.run_id)
    assert config.run_id.startswith("run-")


def test_json_config_and_run_id_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.json",
        json.dumps({"dataset_name": "json", "data_files": "x.jsonl", "run_id": "from-file"}),
    )
    assert load_config(path).run_id == "from-file"
    assert load_config(path, run_id="from-flag").run_id == "from-flag"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD_YAML + "learning_rat: 0.1\n", "c.yaml: learning_rat: unknown field"),
        (GOOD_YAML.replace("5e-5", "-1"), "c.yaml: learning_rate: Input should be greater than 0 (got -1)"),
        (GOOD_YAML + "run_id: Bad_ID\n", "c.yaml: run_id: "),
        ("dataset_name: json\n", "c.yaml: data_files: "),
        (GOOD_YAML + "max_steps: 3\n", "duplicate key 'max_steps'"),
        ("- a\n- b\n", "must be a mapping of field names to values, not a list"),
        ("", "mapping of field names to values, not empty"),
        ("dataset_name: [unclosed\n", "not valid YAML"),
    ],
    ids=["unknown-key", "negative-lr", "bad-run-id", "cross-field", "duplicate", "list", "empty", "syntax"],
)
def test_bad_config_is_refused_naming_the_problem(tmp_path: Path, body: str, expected: str) -> None:
    path = write(tmp_path, "c.yaml", body)
    with pytest.raises(UserInputError) as caught:
        load_config(path)
    text = str(caught.value).replace(str(tmp_path) + "/", "")
    assert expected in text


def test_config_errors_list_every_field(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", GOOD_YAML + "batch_size: 0\nlearning_rat: 1\n")
    with pytest.raises(UserInputError) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_continue_flag_sets_continue_run(tmp_path: Path) -> None:
    good = write(tmp_path, "c.yaml", GOOD_YAML)
    assert load_config(good, "run-1").continue_run is False
    assert load_config(good, "run-1", continue_run=True).continue_run is True
    # A config file may ask for it too; the flag never turns it off.
    asked = write(tmp_path, "asked.yaml", GOOD_YAML + "continue_run: true\n")
    assert load_config(asked, "run-1").continue_run is True
    args = build_parser().parse_args(["train", str(good), "--run-id", "run-1", "--continue"])
    assert args.continue_run is True
    assert build_parser().parse_args(["train", str(good)]).continue_run is False


def test_bad_run_id_flag_and_suffix_and_missing_file(tmp_path: Path) -> None:
    good = write(tmp_path, "c.yaml", GOOD_YAML)
    with pytest.raises(UserInputError, match=r"^--run-id: must be 1-63 characters.*\(got 'Run_1'\)"):
        load_config(good, run_id="Run_1")
    with pytest.raises(UserInputError, match=r"must end in \.yaml, \.yml, \.json"):
        load_config(write(tmp_path, "c.toml", "x = 1"))
    with pytest.raises(UserInputError, match="cannot read the config file"):
        load_config(tmp_path / "missing.yaml")


async def test_train_with_bad_config_exits_2_without_contacting_temporal(
    tmp_path: Path, nowhere: DurabertSettings
) -> None:
    path = write(tmp_path, "config.yaml", GOOD_YAML + "learning_rat: 0.1\n")
    captured = Captured()
    assert await execute(["train", str(path)], nowhere, output=captured) == 2
    assert f"{path}: learning_rat: unknown field" in captured.stderr
    assert "cannot reach" not in captured.stderr
    assert captured.stdout == ""


@pytest.mark.parametrize("run_id", ["UPPER", "Train-BERT", "a" * 64, "bad..id"])
async def test_train_with_bad_run_id_flag_exits_2(
    tmp_path: Path, nowhere: DurabertSettings, run_id: str
) -> None:
    path = write(tmp_path, "config.yaml", GOOD_YAML)
    captured = Captured()
    code = await execute(["train", str(path), "--run-id", run_id, "--continue"], nowhere, output=captured)
    assert code == 2
    assert "--run-id: must be" in captured.stderr
    assert "cannot reach" not in captured.stderr


async def test_good_config_does_contact_temporal(tmp_path: Path, nowhere: DurabertSettings) -> None:
    # Guards the two tests above: with valid input the same settings do reach for the server.
    path = write(tmp_path, "config.yaml", GOOD_YAML)
    captured = Captured()
    assert await execute(["train", str(path)], nowhere, output=captured) == 1
    assert f"cannot reach Temporal at {nowhere.temporal.address}" in captured.stderr
    assert "DURABERT_TEMPORAL__ADDRESS" in captured.stderr


# --- run ids ------------------------------------------------------------------------------


def test_generated_run_id_format() -> None:
    stamp = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert generate_run_id(stamp, "ab12") == "run-20250304-050607-ab12"
    fresh = {generate_run_id() for _ in range(20)}
    assert all(re.fullmatch(r"run-\d{8}-\d{6}-[0-9a-f]{4}", run_id) for run_id in fresh)
    assert len(fresh) > 1
    with pytest.raises(ValueError, match="not valid"):
        generate_run_id(stamp, "AB12-")


def test_check_run_id_and_inference_ids() -> None:
    assert check_run_id("run-1") is None
    reason = check_run_id("bad..id")
    assert reason is not None
    assert reason.startswith("must be 1-63 characters")
    assert inference_workflow_id("run-1", "0123abcd") == "infer-run-1-0123abcd"
    assert re.fullmatch(r"infer-run-1-[0-9a-f]{8}", inference_workflow_id("run-1"))


# --- inference input ----------------------------------------------------------------------


def test_read_texts_from_args_file_and_stdin(tmp_path: Path) -> None:
    assert read_texts(["a", "b"], None) == ["a", "b"]
    path = write(tmp_path, "t.txt", "first line\n\n  \nsecond line\n")
    assert read_texts([], path) == ["first line", "second line"]
    assert read_texts([], Path("-"), stdin=io.StringIO("x\ny\n")) == ["x", "y"]
    with pytest.raises(UserInputError, match="not both"):
        read_texts(["a"], path)
    with pytest.raises(UserInputError, match="at least one text"):
        read_texts([], None)
    with pytest.raises(UserInputError, match="no texts in it"):
        read_texts([], write(tmp_path, "blank.txt", "\n\n"))


def test_inference_request_limits_name_the_field() -> None:
    with pytest.raises(UserInputError, match=r"^texts: List should have at most 256 items"):
        build_inference_request("run-1", ["x"] * 257)
    with pytest.raises(UserInputError, match=r"^texts\.1: String should have at most 10000 characters"):
        build_inference_request("run-1", ["ok", "y" * 10_001])
    with pytest.raises(UserInputError, match=r"^run_id: "):
        build_inference_request("Bad Run", ["ok"])
    assert build_inference_request("run-1", ["ok"], timeout_seconds=60).timeout_seconds == 60


async def test_infer_refuses_257_texts_before_connecting(tmp_path: Path, nowhere: DurabertSettings) -> None:
    path = write(tmp_path, "texts.txt", "\n".join(f"text {i}" for i in range(257)))
    captured = Captured()
    assert await execute(["infer", "run-1", "--file", str(path)], nowhere, output=captured) == 2
    assert "texts: List should have at most 256 items" in captured.stderr
    assert "cannot reach" not in captured.stderr


async def test_usage_errors_exit_2(nowhere: DurabertSettings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await execute(["runs", "--limit", "0"], nowhere, output=Captured()) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert await execute(["watch", "r", "--interval", "-1"], nowhere, output=Captured()) == 2
    assert await execute([], nowhere, output=Captured()) == 2
    assert await execute(["--help"], nowhere, output=Captured()) == 0
    assert "train" in capsys.readouterr().out


def test_parser_defaults() -> None:
    args = build_parser().parse_args(["watch", "run-1"])
    assert args.interval == 1.0
    assert args.json is False
    assert build_parser().parse_args(["runs"]).limit == 20


# --- progress and result text -------------------------------------------------------------


def _progress(**fields: object) -> TrainingProgress:
    return TrainingProgress.model_validate({"stage": "training", **fields})


def test_format_progress_shows_phase_step_loss_checkpoint_and_attempts_apart() -> None:
    latest = CheckpointInfo(epoch=0.5, step=100, path="runs/r/checkpoint-100", timestamp="t")
    progress = _progress(
        step=120, max_steps=400, epoch=0.6, loss=0.41234, checkpoints_saved=2, phase="evaluating",
        latest_checkpoint=latest, attempt=4, resumes=3, preemptions=2, failures=1,
    )  # fmt: skip
    assert format_progress(progress) == (
        "training (evaluating) · step 120/400 (30%) · epoch 0.60 · loss 0.4123 · "
        "latest checkpoint step 100 · attempt 4 · preemptions 2 · failures 1 · resumes 3"
    )
    # The phase is left out when it repeats the stage; continue-as-new shows once it happened.
    again = progress.model_copy(update={"phase": "training", "continued_as_new": 1})
    assert format_progress(again).startswith("training · step 120/400")
    assert format_progress(again).endswith("resumes 3 · continued as new 1")


def test_format_progress_before_training_and_on_failure() -> None:
    assert format_progress(TrainingProgress()) == (
        "pending · step 0/? · loss - · no checkpoint yet · attempt - · preemptions 0 · failures 0 · resumes 0"
    )
    failed = _progress(stage="failed", step=5, max_steps=4, error="boom")
    assert format_progress(failed).startswith("failed · step 5/4 (100%)")
    assert progress_details(failed).endswith("error: boom")


def test_line_view_prints_only_changes() -> None:
    captured = Captured()
    view = LineView(captured.out)
    for progress in (None, None, _progress(step=1), _progress(step=1), _progress(step=2)):
        view.update(progress)
    lines = captured.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("waiting for the orchestrator worker")


def test_result_rows() -> None:
    config = BertFineTuneConfig(dataset_name="glue", run_id="r1")
    result = BertFineTuneResult(
        run_id="r1", config=config, train_loss=0.5, eval_metrics={"eval_accuracy": 0.9},
        training_time_seconds=12.34, num_parameters=10, total_checkpoints_saved=3, global_step=40,
        resumed_from_step=20, attempts=5, preemptions=3, failed_attempts=1, device="cpu",
        model_path="runs/r1/model",
    )  # fmt: skip
    rows = dict(result_rows(result))
    assert rows["global step"] == "40"
    assert rows["eval_accuracy"] == "0.9000"
    assert rows["resumed from"] == "step 20"
    assert rows["attempts"] == "5"
    assert rows["preemptions"] == "3"
    assert rows["failed attempts"] == "1"
    assert rows["device"] == "cpu"
    assert rows["model"].startswith("runs/r1/model")
    never = dict(result_rows(result.model_copy(update={"resumed_from_step": None})))
    assert never["resumed from"] == "never resumed"


def test_web_ui_url() -> None:
    settings = DurabertSettings(temporal={"address": "temporal.example:7233", "namespace": "ml"})
    assert web_ui_url(settings, "run-1") == "http://temporal.example:8233/namespaces/ml/workflows/run-1"
    custom = DurabertSettings(temporal={"ui_url": "https://ui.example/", "namespace": "ml"})
    assert web_ui_url(custom, "r") == "https://ui.example/namespaces/ml/workflows/r"
    # Temporal Cloud serves no UI on the frontend's host: http://<ns>.tmprl.cloud:8233 leads nowhere.
    cloud = DurabertSettings(temporal={"address": "ml.a2b3c.tmprl.cloud:7233", "namespace": "ml.a2b3c"})
    assert web_ui_url(cloud, "r") == "https://cloud.temporal.io/namespaces/ml.a2b3c/workflows/r"


# --- Temporal errors the CLI reports --------------------------------------------------------


def _rpc_error(status: RPCStatusCode) -> RPCError:
    return RPCError("request denied", status, b"")


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (RPCStatusCode.PERMISSION_DENIED, "permission denied by Temporal at t.example:7233 (namespace 'ml')"),
        (RPCStatusCode.UNAUTHENTICATED, "permission denied by Temporal at t.example:7233 (namespace 'ml')"),
        (RPCStatusCode.UNAVAILABLE, "lost the connection to Temporal at t.example:7233 (namespace 'ml')"),
        (RPCStatusCode.INVALID_ARGUMENT, "Temporal refused the request (INVALID_ARGUMENT)"),
    ],
)
def test_rpc_errors_are_named_for_what_they_are(status: RPCStatusCode, said: str) -> None:
    settings = DurabertSettings(temporal={"address": "t.example:7233", "namespace": "ml"})
    text = rpc_error_text(_rpc_error(status), settings)
    assert text.startswith(said)
    assert "orchestrator worker" not in text


class _QueryFails:
    """A workflow handle whose progress query fails with one RPC status."""

    id = "run-q"

    def __init__(self, status: RPCStatusCode) -> None:
        self.status = status

    async def query(self, *args: object, **kwargs: object) -> TrainingProgress:
        raise _rpc_error(self.status)


@pytest.mark.parametrize(
    "status", [RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.UNAVAILABLE]
)
async def test_a_refused_query_is_not_passed_off_as_no_worker(status: RPCStatusCode) -> None:
    # Returning None here would make `status` print "is an orchestrator worker polling ...?".
    with pytest.raises(RPCError) as raised:
        await query_progress(_QueryFails(status))  # type: ignore[arg-type]
    assert raised.value.status == status


async def test_a_query_nobody_answers_in_time_is_no_answer() -> None:
    assert await query_progress(_QueryFails(RPCStatusCode.DEADLINE_EXCEEDED)) is None  # type: ignore[arg-type]


# --- the device a run trains on -------------------------------------------------------------


def test_status_shows_the_running_attempts_device_and_the_results() -> None:
    heartbeat = TrainingHeartbeat(phase="training", step=3, max_steps=10, attempt=2, device="cpu")
    live = merge_progress("r1", TrainingProgress(run_id="r1", stage="training", attempt=2), heartbeat)
    assert live.device == "cpu"
    running = RunStatus(run_id="r1", status="running", workflow_type=names.TRAINING_WORKFLOW, live=live)
    output = Captured()
    _print_status(output, running, "orchestrator-queue")
    assert "device cpu (the running attempt's)" in output.stdout
    assert running.to_json()["device"] == "cpu"
    # Closed: no attempt runs; the result says where the run trained.
    result = BertFineTuneResult(
        run_id="r1", config=BertFineTuneConfig(dataset_name="glue", run_id="r1"), train_loss=0.5,
        training_time_seconds=1.0, num_parameters=10, total_checkpoints_saved=1, global_step=10,
        attempts=1, device="mps", model_path="runs/r1/model",
    )  # fmt: skip
    closed = RunStatus(
        run_id="r1",
        status="completed",
        workflow_type=names.TRAINING_WORKFLOW,
        live=merge_progress("r1", TrainingProgress(run_id="r1", stage="completed"), None),
        result=result,
    )
    assert closed.to_json()["device"] == "mps"
    output = Captured()
    _print_status(output, closed, "orchestrator-queue")
    assert re.search(r"device\s+mps", output.stdout)


def test_failure_message_digs_out_the_innermost_cause() -> None:
    inner = ApplicationError("learning_rate: must be > 0", type="InvalidInputError")
    activity_error = ActivityError(
        "Activity task failed", scheduled_event_id=1, started_event_id=2, identity="w",
        activity_type="fine_tune_bert", activity_id="1", retry_state=RetryState.NON_RETRYABLE_FAILURE,
    )  # fmt: skip
    activity_error.__cause__ = inner
    error = WorkflowFailureError(cause=activity_error)
    assert failure_message(error) == "InvalidInputError: learning_rate: must be > 0"
    assert failure_type(error) == "InvalidInputError"
    assert failure_type(WorkflowFailureError(cause=ApplicationError("no type"))) is None


# --- live progress: the workflow's answer merged with the running attempt's heartbeat -------


def test_merge_progress_takes_live_figures_from_the_heartbeat() -> None:
    latest = CheckpointInfo(epoch=0.1, step=10, path="runs/r/checkpoints/checkpoint-10", timestamp="t")
    answer = _progress(step=10, max_steps=100, attempt=3, preemptions=2, latest_checkpoint=latest)
    newer = latest.model_copy(update={"step": 40, "path": "runs/r/checkpoints/checkpoint-40"})
    heartbeat = TrainingHeartbeat(
        phase="evaluating", step=42, max_steps=100, loss=0.5, latest_checkpoint=newer, attempt=3
    )
    live = merge_progress("r", answer, heartbeat)
    assert live.answered
    assert live.live
    assert live.progress is not None
    assert (live.progress.step, live.progress.phase, live.progress.loss) == (42, "evaluating", 0.5)
    assert live.progress.latest_checkpoint == newer
    assert live.progress.preemptions == 2  # durable counters stay the workflow's


def test_merge_progress_without_an_answer_or_a_heartbeat() -> None:
    heartbeat = TrainingHeartbeat(phase="training", step=7, max_steps=30, attempt=2)
    alone = merge_progress("r", None, heartbeat)
    assert not alone.answered
    assert alone.progress is not None
    assert (alone.progress.run_id, alone.progress.stage, alone.progress.step) == ("r", "training", 7)
    closed = merge_progress("r", _progress(stage="completed", step=30), None)
    assert closed.answered
    assert not closed.live
    assert closed.progress is not None
    assert closed.progress.step == 30
    assert merge_progress("r", None, None) == LiveProgress(progress=None, answered=False, live=False)
