"""The training child process: runs :func:`~durabert.gpu_worker.training.run_training` and streams events.

Why a child process: a thread cannot be stopped, and a killed or crashed training must
not keep the GPU. A process can be asked to stop (a message on its control pipe), and
killed for sure if it does not; when it exits, the driver frees its GPU memory.

The child ignores SIGINT and SIGTERM: a Ctrl-C in a terminal hits the whole process
group, and the parent worker, which owns the Temporal side, coordinates the stop
(checkpoint, then exit). If the parent dies, the control pipe reaches EOF and the child
saves a checkpoint and stops on its own, so no orphan keeps the GPU.
"""

import signal
import threading
import traceback
from multiprocessing.connection import Connection

from temporalio.exceptions import ApplicationError

# Imported here (not lazily) so a forkserver that preloads this module has torch,
# transformers' Trainer and models, and datasets ready: each attempt's child then starts in
# about a second instead of ~10 s (transformers resolves its names lazily, so name them).
import datasets  # isort: skip
import torch  # noqa: F401  # isort: skip
import transformers  # isort: skip
from transformers import (  # noqa: F401  # isort: skip
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.models.bert import modeling_bert  # noqa: F401  # isort: skip

# Every finished run draws its loss curve: preloaded, that is not ~0.3 s of imports per child.
# (pyplot picks no backend on import; ``history.plot_loss_curve`` selects Agg before drawing.)
import matplotlib.pyplot  # noqa: F401  # isort: skip

from durabert.gpu_worker.events import (
    STOP_MESSAGE,
    DoneEvent,
    ErrorEvent,
    TrainingEvent,
    TrainingStopped,
    TrainJob,
)
from durabert.gpu_worker.training import run_training
from durabert.shared.logging import configure_logging, get_logger

log = get_logger(__name__)


def _watch_control(control: Connection, stop: threading.Event) -> None:
    """Set ``stop`` on a stop message or when the parent's end closes (the parent died)."""
    try:
        while control.recv() != STOP_MESSAGE:
            pass
    except (EOFError, OSError):
        pass
    stop.set()


def child_main(job_json: str, events: Connection, control: Connection) -> None:
    """Entry point of the training child process.

    Args:
        job_json: The :class:`TrainJob` as JSON.
        events: Write end of the event pipe (one JSON message per event).
        control: Read end of the control pipe from the parent.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    job = TrainJob.model_validate_json(job_json)
    configure_logging(job.settings.log_format, job.settings.log_level)
    # Progress bars are noise in worker logs; durabert reports progress as events and log lines.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    stop = threading.Event()
    threading.Thread(
        target=_watch_control, args=(control, stop), name="durabert-control", daemon=True
    ).start()

    # The checkpoint uploader reports from its own thread: one message at a time on the pipe.
    sending = threading.Lock()

    def emit(event: TrainingEvent) -> None:
        try:
            with sending:
                events.send_bytes(event.model_dump_json().encode())
        except OSError:
            # The parent is gone: stop at the next step (after a checkpoint), nobody listens.
            stop.set()

    try:
        emit(DoneEvent(result=run_training(job, emit, stop)))
    except TrainingStopped as stopped:
        emit(stopped.event())
    except ApplicationError as exc:
        log.warning("training failed", run_id=job.request.run_id, error_type=exc.type, error=exc.message)
        emit(
            ErrorEvent(
                error_type=exc.type or "ApplicationError",
                message=exc.message,
                non_retryable=exc.non_retryable,
            )
        )
    except Exception as exc:
        log.error(
            "training crashed", run_id=job.request.run_id, error=repr(exc), traceback=traceback.format_exc()
        )
        emit(
            ErrorEvent(
                error_type=type(exc).__name__, message=f"{type(exc).__name__}: {exc}", non_retryable=False
            )
        )
    finally:
        events.close()
