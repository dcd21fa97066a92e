"""``durabert``: the client CLI (train, status, watch, cancel, infer, predict, eval, sweep, runs).

Exit codes: 0 done, 1 the run or the server said no (unknown run, unreachable server, a
failed run, a run already running, a run id in use), 2 bad input (config file, arguments,
settings): bad input is refused before Temporal is contacted. :func:`execute` is the whole CLI
as a coroutine, so tests drive it in-process against a real server; :func:`run` is the console
script. What the commands ask of Temporal is in :mod:`~durabert.orchestrator.client_ops`, how
progress is shown in :mod:`~durabert.orchestrator.progress`; this module parses and prints.
"""

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, NoReturn

from rich.console import Console
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowFailureError
from temporalio.service import RPCError

from durabert.orchestrator import client_ops, evaluate_ops, inference_ops, predict_ops, progress, sweep_ops
from durabert.orchestrator.client_ops import (
    RunAlreadyRunningError,
    RunIdInUseError,
    RunNotFoundError,
    RunNotRunningError,
    RunStatus,
    WatchOutcome,
)
from durabert.orchestrator.config_file import (
    UserInputError,
    build_inference_request,
    load_config,
    load_run_request,
    read_texts,
)
from durabert.orchestrator.progress import (
    format_progress,
    predictions_table,
    result_table,
    scoring_result_table,
)
from durabert.shared import names
from durabert.shared.cli_support import exit_now
from durabert.shared.client import TemporalUnreachableError, connect_client
from durabert.shared.errors import ErrorType
from durabert.shared.logging import bind_run_id, configure_logging
from durabert.shared.models import (
    BertBatchInferenceRequest,
    BertEvaluationRequest,
    BertFineTuneConfig,
    BertInferenceRequest,
    BertSweepConfig,
)
from durabert.shared.settings import DurabertSettings, load_settings

EXIT_OK = 0
"""Success (also: detached from a run that goes on)."""
EXIT_FAILED = 1
"""The server, the run or the workflow refused or failed."""
EXIT_USAGE = 2
"""Bad arguments, config file or settings; nothing was sent."""
EXIT_INTERRUPTED = 130
"""Ctrl-C outside a watch (the shell convention for SIGINT)."""

DEFAULT_POLL_INTERVAL = 1.0
"""Seconds between progress queries while watching."""


@dataclass
class Output:
    """Where the CLI writes: results to ``out``, messages and errors to ``err`` in ``--json`` mode."""

    out: Console = field(default_factory=Console)
    """Results (and, without ``--json``, every message)."""
    err: Console = field(default_factory=lambda: Console(stderr=True))
    """Errors, and informational lines when ``out`` must carry only JSON."""

    def say(self, text: str, *, json_mode: bool = False) -> None:
        """Print an informational line, off stdout when stdout carries JSON.

        Args:
            text: The line (printed literally, no rich markup).
            json_mode: Whether stdout is reserved for JSON.
        """
        # soft_wrap: a long message stays one line in a pipe or a log, never hard-wrapped at 80.
        (self.err if json_mode else self.out).print(text, markup=False, highlight=False, soft_wrap=True)

    def error(self, text: str) -> None:
        """Print an error to stderr.

        Args:
            text: The message (printed literally).
        """
        self.err.print(text, markup=False, highlight=False, style="red", soft_wrap=True)

    def json(self, data: Any) -> None:
        """Print JSON to stdout, never wrapped.

        Args:
            data: A JSON-serialisable value.
        """
        self.out.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0 (got {text})")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {text})")
    return value


def _watch_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--interval",
        type=_positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help="seconds between progress reads (default %(default)s)",
    )


def _json_option(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _add_train(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    train = commands.add_parser("train", help="start a training run from a YAML or JSON config")
    train.add_argument("config", type=Path, metavar="CONFIG", help="config file (.yaml, .yml or .json)")
    train.add_argument("--run-id", help="run id (default: the config's run_id, else a fresh one)")
    train.add_argument(
        "--continue",
        dest="continue_run",
        action="store_true",
        help="extend the earlier run with this --run-id from its newest checkpoint (e.g. to a larger "
        "max_steps); without it a run id whose earlier run has ended is refused",
    )
    train.add_argument("--wait", action="store_true", help="show live progress until the run ends")
    _watch_options(train)
    _json_option(train, "the result (with --wait)")


def _add_infer(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    infer = commands.add_parser("infer", help="classify texts with a finished run's model")
    infer.add_argument("run_id", metavar="RUN_ID")
    infer.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    infer.add_argument("--file", type=Path, help="file with one text per line ('-' for stdin)")
    infer.add_argument("--max-seq-length", type=_positive_int, help="tokens per text (default 128)")
    infer.add_argument(
        "--timeout-seconds",
        type=_positive_int,
        help="most seconds a GPU worker may take to answer once it has the request (default 300)",
    )
    _json_option(infer, "the predictions")


def _add_predict(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    predict = commands.add_parser(
        "predict", help="score a whole dataset with a finished run's model, durably, into a Parquet file"
    )
    predict.add_argument("run_id", metavar="RUN_ID")
    predict.add_argument(
        "config",
        type=Path,
        metavar="CONFIG",
        help="YAML or JSON file: dataset_name, data_files, text_field, max_samples, chunk_rows, ...",
    )
    predict.add_argument("--out", type=Path, metavar="FILE", help="also copy the output Parquet to FILE")
    predict.add_argument(
        "--no-wait", dest="wait", action="store_false", help="start scoring and return (follow it with watch)"
    )
    _watch_options(predict)
    _json_option(predict, "the result")


def _add_eval(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    evaluate = commands.add_parser(
        "eval", help="measure a finished run's model on a labelled dataset (accuracy, F1, confusion matrix)"
    )
    evaluate.add_argument("run_id", metavar="RUN_ID")
    evaluate.add_argument(
        "config",
        type=Path,
        metavar="CONFIG",
        help="YAML or JSON file: dataset_name, data_files, text_field, label_field, split, max_samples, ...",
    )
    _json_option(evaluate, "the result")


def _add_sweep(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sweep = commands.add_parser(
        "sweep",
        help="start a hyperparameter sweep (sweep SWEEP.yaml), or show one (sweep status SWEEP_ID)",
    )
    sweep.add_argument(
        "target",
        nargs="+",
        metavar="SWEEP.yaml | status SWEEP_ID",
        help="a sweep file (base, parameters, strategy, ...) to start, or `status` and a sweep id",
    )
    sweep.add_argument("--wait", action="store_true", help="after starting, wait for the sweep to end")
    _json_option(sweep, "the sweep")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(
        prog="durabert",
        description="Durable, checkpointed BERT fine-tuning and inference on Temporal.",
        epilog="Settings come from DURABERT_* environment variables, e.g. DURABERT_TEMPORAL__ADDRESS.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(commands)
    status = commands.add_parser("status", help="show a run's state, progress, result or error")
    status.add_argument("run_id", metavar="RUN_ID")
    _json_option(status, "the status")
    watch = commands.add_parser("watch", help="show a run's live progress until it ends (Ctrl-C detaches)")
    watch.add_argument("run_id", metavar="RUN_ID")
    _watch_options(watch)
    _json_option(watch, "the result")
    cancel = commands.add_parser("cancel", help="cancel a running run (its training stops)")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--wait", action="store_true", help="wait until the run has stopped")
    _add_infer(commands)
    _add_predict(commands)
    _add_eval(commands)
    _add_sweep(commands)
    runs = commands.add_parser("runs", help="list recent training runs and their state")
    runs.add_argument("--limit", type=_positive_int, default=20, help="most runs to list (default 20)")
    _json_option(runs, "the runs")
    return parser


@contextlib.contextmanager
def _ctrl_c_detaches(detach: asyncio.Event | None) -> Iterator[asyncio.Event]:
    """Yield an event that Ctrl-C sets (instead of cancelling the CLI) while watching."""
    if detach is not None:
        yield detach
        return
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, event.set)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):
        installed = False  # not the main thread, or no signals on this platform
    try:
        yield event
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGINT)


@dataclass
class _Context:
    """What every command handler gets; a command's validated input is bound to its handler."""

    args: argparse.Namespace
    settings: DurabertSettings
    client: Client
    output: Output
    detach: asyncio.Event | None
    """The test's detach event; None: Ctrl-C detaches (a handler is installed while watching)."""


_Handler = Callable[[_Context], Awaitable[int]]


def _when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _report_refusal(output: Output, run_id: str, message: str) -> None:
    """Report a run id in use, refused by the workflow's claim (Temporal forgot the earlier run)."""
    output.error(f"run {run_id} refused: {message}")
    output.error(f"to go on, {client_ops.run_id_ways_on(run_id)}")


async def _report_watch(ctx: _Context, run_id: str) -> int:
    """Watch a run with the live view and print how it ended."""
    json_mode: bool = ctx.args.json
    output = ctx.output
    with _ctrl_c_detaches(ctx.detach) as detach:
        outcome: WatchOutcome = await progress.watch(
            ctx.client,
            run_id,
            output.err if json_mode else output.out,
            interval=ctx.args.interval,
            detach=detach,
        )
    if outcome.detached:
        output.say(f"detached; the run goes on: durabert watch {run_id}", json_mode=json_mode)
        return EXIT_OK
    if outcome.result is not None:
        if json_mode:
            output.json(outcome.result.model_dump(mode="json"))
        else:
            output.say(f"run {run_id} completed")
            output.out.print(result_table(outcome.result))
        return EXIT_OK
    if json_mode:
        output.json(
            {
                "run_id": run_id,
                "status": outcome.status,
                "error": outcome.error,
                "error_type": outcome.error_type,
            }
        )
    if outcome.error_type == ErrorType.RUN_ID_IN_USE:
        _report_refusal(output, run_id, outcome.error or "")
    else:
        output.error(f"run {run_id} {outcome.status}: {outcome.error}")
    return EXIT_FAILED


async def _train(ctx: _Context, config: BertFineTuneConfig) -> int:
    args = ctx.args
    assert config.run_id is not None, "load_config settles the run id"
    run_id = config.run_id
    bind_run_id(run_id)
    handle = await client_ops.start_training(ctx.client, ctx.settings, config)
    say = ctx.output.say
    json_mode = bool(args.json and args.wait)
    continued = " (continuing the earlier run with this id)" if config.continue_run else ""
    say(
        f"started run {run_id}{continued} (workflow {handle.id} on queue {ctx.settings.queues.orchestrator})",
        json_mode=json_mode,
    )
    say(f"Temporal Web UI: {client_ops.web_ui_url(ctx.settings, handle.id)}", json_mode=json_mode)
    if not args.wait:
        if args.json:
            ctx.output.json({"run_id": run_id, "workflow_id": handle.id})
        say(f"watch it with: durabert watch {run_id}", json_mode=bool(args.json))
        return EXIT_OK
    return await _report_watch(ctx, run_id)


async def _watch(ctx: _Context) -> int:
    bind_run_id(ctx.args.run_id)
    if await predict_ops.is_batch_scoring(ctx.client, ctx.args.run_id):
        return await _report_predict(ctx, ctx.args.run_id)
    return await _report_watch(ctx, ctx.args.run_id)


def _print_progress(output: Output, state: RunStatus, queue: str) -> None:
    live = state.live
    if live is not None and live.progress is not None:
        output.say(format_progress(live.progress))
    if state.status == "running" and (live is None or not live.answered):
        note = "live figures only; " if live is not None and live.progress is not None else ""
        output.say(
            f"progress: {note}no answer from the workflow; is an orchestrator worker polling queue {queue}?"
        )


_SHOWN_BY: Final = {
    names.SWEEP_WORKFLOW: "durabert sweep status {id}",
    names.BATCH_INFERENCE_WORKFLOW: "durabert watch {id}",
}
"""The command that shows a workflow of another kind than training, by workflow type."""


def _print_status(output: Output, state: RunStatus, queue: str) -> None:
    output.out.print(
        f"run {state.run_id}: {state.status} (started {_when(state.start_time)}"
        + (f", closed {_when(state.close_time)})" if state.close_time else ")"),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    if state.workflow_type != names.TRAINING_WORKFLOW:
        shown_by = _SHOWN_BY.get(state.workflow_type)
        hint = f": see {shown_by.format(id=state.run_id)}" if shown_by else ""
        output.say(f"note: {state.run_id} is a {state.workflow_type} workflow, not a training run{hint}")
        return
    _print_progress(output, state, queue)
    if state.live is not None and state.live.device is not None:
        # The heartbeat's device: a GPU worker that fell back to CPU shows here, not only in its log.
        output.say(f"device {state.live.device} (the running attempt's)")
    if state.result is not None:
        output.out.print(result_table(state.result))
    if state.error_type == ErrorType.RUN_ID_IN_USE:
        _report_refusal(output, state.run_id, state.error or "")
    elif state.error:
        output.error(f"error: {state.error}")


async def _status(ctx: _Context) -> int:
    bind_run_id(ctx.args.run_id)
    state = await client_ops.describe_run(ctx.client, ctx.args.run_id)
    if ctx.args.json:
        ctx.output.json(state.to_json())
    else:
        _print_status(ctx.output, state, ctx.settings.queues.orchestrator)
    return EXIT_OK


async def _cancel(ctx: _Context) -> int:
    run_id: str = ctx.args.run_id
    bind_run_id(run_id)
    if not ctx.args.wait:
        await client_ops.cancel_run(ctx.client, run_id, wait=False)
        ctx.output.say(f"cancellation of run {run_id} requested; follow it with: durabert status {run_id}")
        return EXIT_OK
    ctx.output.say(f"cancellation of run {run_id} requested; waiting for it to stop")
    outcome = await client_ops.cancel_run(ctx.client, run_id, wait=True)
    if outcome.status == "canceled":
        ctx.output.say(f"run {run_id} is canceled")
        return EXIT_OK
    # The run closed some other way before the workflow acted on the request: not a success.
    reason = f": {outcome.error}" if outcome.error else ""
    ctx.output.error(f"run {run_id} was not cancelled: it ended {outcome.status} first{reason}")
    return EXIT_FAILED


async def _infer(ctx: _Context, request: BertInferenceRequest) -> int:
    bind_run_id(request.run_id)
    try:
        result = await inference_ops.run_inference(ctx.client, ctx.settings, request)
    except inference_ops.InferenceFailedError as exc:
        ctx.output.error(f"inference with run {request.run_id} failed: {exc}")
        return EXIT_FAILED
    if ctx.args.json:
        ctx.output.json(result.model_dump(mode="json"))
    else:
        ctx.output.out.print(predictions_table(result))
        ctx.output.say(f"run {result.run_id} · device {result.device}")
    return EXIT_OK


async def _predict(ctx: _Context, request: BertBatchInferenceRequest) -> int:
    bind_run_id(request.run_id)
    handle = await predict_ops.start_predict(ctx.client, ctx.settings, request)
    json_mode = bool(ctx.args.json)
    ctx.output.say(f"started batch scoring {handle.id} with run {request.run_id}", json_mode=json_mode)
    ctx.output.say(f"watch it with: durabert watch {handle.id}", json_mode=json_mode)
    if not ctx.args.wait:
        if json_mode:
            ctx.output.json({"run_id": request.run_id, "workflow_id": handle.id})
        return EXIT_OK
    return await _report_predict(ctx, handle.id)


async def _report_predict(ctx: _Context, workflow_id: str) -> int:
    """Follow a batch scoring, print how it ended, and copy the output to ``--out`` when asked."""
    json_mode = bool(ctx.args.json)
    output = ctx.output
    with _ctrl_c_detaches(ctx.detach) as detach:
        outcome = await progress.watch_scoring(
            ctx.client,
            workflow_id,
            output.err if json_mode else output.out,
            interval=ctx.args.interval,
            detach=detach,
        )
    if outcome.detached:
        output.say(f"detached; scoring goes on: durabert watch {workflow_id}", json_mode=json_mode)
        return EXIT_OK
    if outcome.result is None:
        output.error(f"batch scoring {workflow_id} {outcome.status}: {outcome.error}")
        return EXIT_FAILED
    out: Path | None = getattr(ctx.args, "out", None)
    if out is not None:
        try:
            predict_ops.copy_output(ctx.settings, outcome.result.output_path, out)
        except OSError as exc:
            output.error(f"scoring finished, but --out {out} could not be written: {exc}")
            return EXIT_FAILED
        output.say(f"predictions copied to {out}", json_mode=json_mode)
    if json_mode:
        output.json(outcome.result.model_dump(mode="json"))
    else:
        output.out.print(scoring_result_table(outcome.result))
    return EXIT_OK


async def _eval(ctx: _Context, request: BertEvaluationRequest) -> int:
    bind_run_id(request.run_id)
    json_mode = bool(ctx.args.json)
    ctx.output.say(f"evaluating run {request.run_id} on split {request.split!r}", json_mode=json_mode)
    outcome = await evaluate_ops.run_evaluation(ctx.client, ctx.settings, request)
    if outcome.result is None:
        ctx.output.error(f"evaluation {outcome.workflow_id} {outcome.status}: {outcome.error}")
        return EXIT_FAILED
    ctx.output.say(f"evaluation {outcome.workflow_id} completed", json_mode=json_mode)
    if json_mode:
        ctx.output.json(outcome.result.model_dump(mode="json"))
        return EXIT_OK
    for table in evaluate_ops.evaluation_tables(outcome.result):
        ctx.output.out.print(table)
    return EXIT_OK


def _prepare_sweep(target: list[str]) -> _Handler:
    """``sweep SWEEP.yaml`` (the file checked now) or ``sweep status SWEEP_ID``."""
    if target[0] == "status":
        if len(target) != 2:
            raise UserInputError("usage: durabert sweep status SWEEP_ID")
        return lambda ctx: _sweep_status(ctx, target[1])
    if len(target) != 1:
        raise UserInputError("usage: durabert sweep SWEEP.yaml, or durabert sweep status SWEEP_ID")
    config = sweep_ops.load_sweep_config(Path(target[0]))
    return lambda ctx: _sweep_start(ctx, config)


async def _sweep_start(ctx: _Context, config: BertSweepConfig) -> int:
    json_mode = bool(ctx.args.json)
    try:
        handle = await sweep_ops.start_sweep(ctx.client, ctx.settings, config)
    except sweep_ops.SweepIdInUseError as exc:
        ctx.output.error(str(exc))
        return EXIT_FAILED
    ctx.output.say(f"started sweep {handle.id} ({config.strategy})", json_mode=json_mode)
    ctx.output.say(f"follow it with: durabert sweep status {handle.id}", json_mode=json_mode)
    if not ctx.args.wait:
        if json_mode:
            ctx.output.json({"sweep_id": handle.id})
        return EXIT_OK
    with contextlib.suppress(WorkflowFailureError):
        await handle.result()
    return await _sweep_status(ctx, handle.id)


async def _sweep_status(ctx: _Context, sweep_id: str) -> int:
    state = await sweep_ops.sweep_status(ctx.client, sweep_id)
    code = EXIT_OK if state.status in ("running", "completed") else EXIT_FAILED
    if ctx.args.json:
        ctx.output.json(state.to_json())
        return code
    output = ctx.output
    progress_now = state.progress
    running = progress_now is not None and state.status == "running"
    stage = f", rung {progress_now.rung + 1}" if running and progress_now is not None else ""
    output.say(f"sweep {sweep_id}: {state.status}{stage}")
    sweep = progress_now.sweep if progress_now is not None else None
    if sweep is None:
        output.say(progress.WAITING_TEXT if state.status == "running" else "no trials recorded")
    else:
        output.out.print(progress.sweep_table(sweep))
        output.say(progress.sweep_summary(sweep))
        if sweep.report_path is not None:
            output.say(f"plot: {sweep_ops.report_location(ctx.settings, sweep.report_path)}")
    if state.error:
        output.error(f"sweep {sweep_id} {state.status}: {state.error}")
    return code


async def _runs(ctx: _Context) -> int:
    runs = await client_ops.list_runs(ctx.client, ctx.args.limit)
    if ctx.args.json:
        ctx.output.json([item.to_json() for item in runs])
        return EXIT_OK
    if not runs:
        ctx.output.say("no training runs yet; start one with: durabert train CONFIG.yaml")
        return EXIT_OK
    table = Table("run id", "status", "started", "closed")
    for item in runs:
        table.add_row(Text(item.run_id), item.status, _when(item.start_time), _when(item.close_time))
    ctx.output.out.print(table)
    return EXIT_OK


_COMMANDS: dict[str, _Handler] = {
    "status": _status,
    "watch": _watch,
    "cancel": _cancel,
    "runs": _runs,
}
"""Commands whose arguments need no checking beyond argparse's."""


def _prepare(args: argparse.Namespace) -> _Handler:
    """Check everything a person typed or wrote before any connection; bind it to its handler."""
    if args.command == "train":
        config = load_config(args.config, args.run_id, continue_run=args.continue_run)
        return lambda ctx: _train(ctx, config)
    if args.command == "infer":
        texts = read_texts(args.texts, args.file)
        given = {"max_seq_length": args.max_seq_length, "timeout_seconds": args.timeout_seconds}
        request = build_inference_request(
            args.run_id, texts, **{name: value for name, value in given.items() if value is not None}
        )
        return lambda ctx: _infer(ctx, request)
    if args.command == "predict":
        batch = load_run_request(BertBatchInferenceRequest, args.config, args.run_id)
        return lambda ctx: _predict(ctx, batch)
    if args.command == "sweep":
        return _prepare_sweep(args.target)
    if args.command == "eval":
        evaluation = load_run_request(BertEvaluationRequest, args.config, args.run_id)
        return lambda ctx: _eval(ctx, evaluation)
    return _COMMANDS[args.command]


async def execute(
    argv: Sequence[str] | None = None,
    settings: DurabertSettings | None = None,
    *,
    output: Output | None = None,
    detach: asyncio.Event | None = None,
) -> int:
    """Run one CLI command.

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).
        settings: Settings to use; read from ``DURABERT_*`` (and logging configured) when None.
        output: Where to print (the terminal when None).
        detach: Event that ends watching (Ctrl-C sets one when None).

    Returns:
        The exit code.
    """
    output = output or Output()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        handler = _prepare(args)
    except UserInputError as exc:
        output.error(str(exc))
        return EXIT_USAGE
    if settings is None:
        try:
            settings = load_settings(DurabertSettings)
        except SystemExit as exc:  # the message naming the bad DURABERT_* variable is printed
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        configure_logging(settings.log_format, settings.log_level)
    try:
        client = await connect_client(settings)
    except TemporalUnreachableError as exc:
        output.error(str(exc))
        return EXIT_FAILED
    try:
        return await handler(_Context(args, settings, client, output, detach))
    except (RunNotFoundError, RunAlreadyRunningError, RunNotRunningError, RunIdInUseError) as exc:
        output.error(str(exc))
    except RPCError as exc:
        output.error(rpc_error_text(exc, settings))
    return EXIT_FAILED


def rpc_error_text(error: RPCError, settings: DurabertSettings) -> str:
    """Say what a Temporal error means for the person at the terminal.

    Permission and connection errors name the server, namespace and the settings to check, so
    they are never mistaken for a missing worker or a bad run.

    Args:
        error: The error a Temporal call raised.
        settings: The settings used (address and namespace are named).

    Returns:
        One message.
    """
    temporal = settings.temporal
    where = f"Temporal at {temporal.address} (namespace {temporal.namespace!r})"
    status = error.status.name
    if error.status in client_ops.ACCESS_DENIED:
        return (
            f"permission denied by {where} ({status}): {error.message}. Check the credentials "
            "(DURABERT_TEMPORAL__API_KEY, DURABERT_TEMPORAL__TLS_CERT_PATH / _KEY_PATH) and the namespace "
            "(DURABERT_TEMPORAL__NAMESPACE)"
        )
    if error.status in client_ops.CONNECTION_LOST:
        return (
            f"lost the connection to {where} ({status}): {error.message}. Is the server up? "
            "(DURABERT_TEMPORAL__ADDRESS, DURABERT_TEMPORAL__TLS*)"
        )
    return f"Temporal refused the request ({status}): {error.message}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (the testable entry point).

    Args:
        argv: Arguments without the program name (``sys.argv[1:]`` when None).

    Returns:
        The exit code.
    """
    try:
        return asyncio.run(execute(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run() -> NoReturn:
    """Console script ``durabert``: run :func:`main` and exit with its code."""
    exit_now(main())
