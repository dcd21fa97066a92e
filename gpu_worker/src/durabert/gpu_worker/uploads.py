"""Checkpoint uploads in the background of a training child, one at a time.

With an object-store artifact root, a checkpoint counts (is reported as the run's latest, so
the workflow resumes from it) only once it is complete in the store. Uploading takes a while,
so training goes on meanwhile, with at most one upload in flight: handing over the next
checkpoint waits for the previous upload, so training only waits when checkpoints come faster
than the store takes them, and the local copy of a checkpoint is never rotated away while it
is being uploaded.

An upload that fails (the store stayed unreachable past ``DURABERT_STORE__RETRY_SECONDS``, or
a newer attempt took the run over) is kept and raised on the training thread at its next
step, which ends the attempt; checkpoints already reported stay the resume point.
"""

import threading
from collections.abc import Callable
from pathlib import Path

from durabert.gpu_worker.events import CheckpointEvent
from durabert.shared.logging import get_logger

log = get_logger(__name__)

Push = Callable[[Path], None]
"""Uploads one published checkpoint folder (and whatever goes with it) to the store."""
Report = Callable[[CheckpointEvent], None]
"""Reports a checkpoint that is complete in the store."""


class CheckpointUploader:
    """Uploads published checkpoints in a background thread and reports each once it is in the store."""

    def __init__(self, push: Push, report: Report) -> None:
        """Create an idle uploader.

        Args:
            push: Uploads one checkpoint folder; raises when it cannot.
            report: Called with a checkpoint's event after its upload finished.
        """
        self._push = push
        self._report = report
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self.reported: list[int] = []
        """Steps reported so far, in order."""

    @property
    def busy(self) -> bool:
        """Whether an upload is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def submit(self, folder: Path, event: CheckpointEvent) -> None:
        """Upload a checkpoint in the background, after the previous upload finished.

        Args:
            folder: The published checkpoint folder.
            event: Its report, sent once the upload finished.

        Raises:
            ApplicationError: The previous upload's failure.
        """
        self.wait()
        self._thread = threading.Thread(
            target=self._upload, args=(folder, event), name=f"durabert-upload-{event.step}", daemon=True
        )
        self._thread.start()

    def _upload(self, folder: Path, event: CheckpointEvent) -> None:
        try:
            self._push(folder)
        except BaseException as exc:  # handed to the training thread, which ends the attempt
            log.error("checkpoint upload failed", step=event.step, error=str(exc))
            self._failure = exc
            return
        self.reported.append(event.step)
        self._report(event)

    def wait(self) -> None:
        """Wait for the upload in flight, if any.

        Raises:
            ApplicationError: Its failure (or an earlier one).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        """Raise the failure of a finished upload, if one failed (the training thread calls it every step).

        Raises:
            ApplicationError: The upload's failure.
        """
        if self._failure is not None:
            raise self._failure
