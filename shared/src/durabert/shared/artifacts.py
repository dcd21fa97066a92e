"""Layout of the shared artifact store and safe, atomic writes into it.

Payloads carry paths relative to the store's root; each worker resolves them against
its own mount of the store. Nothing here imports an ML library.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from durabert.shared.errors import invalid_input

SNAPSHOTS_DIR = "snapshots"
"""Folder of dataset snapshots under the root."""
RUNS_DIR = "runs"
"""Folder of training runs under the root."""


class ArtifactStore:
    """The artifact store rooted at one folder."""

    def __init__(self, root: Path | str) -> None:
        """Open the store at ``root`` (created when missing).

        Args:
            root: The store's root folder on this machine.
        """
        self.root = Path(root).expanduser().resolve()

    def resolve(self, relative: str) -> Path:
        """Turn a payload path into a path on this machine, refusing escapes from the root.

        Args:
            relative: A path relative to the root, as carried in payloads.

        Returns:
            The absolute path.

        Raises:
            ApplicationError: ``InvalidInputError`` when the path leaves the root.
        """
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise invalid_input(f"{relative!r} is outside the artifact store", field="path")
        return path

    def relative(self, path: Path) -> str:
        """Turn a path inside the store into the relative form payloads carry.

        Args:
            path: A path under the root.

        Returns:
            The POSIX path relative to the root.
        """
        return path.resolve().relative_to(self.root).as_posix()

    def snapshot_dir(self, snapshot_id: str) -> Path:
        """Folder of one snapshot."""
        return self.root / SNAPSHOTS_DIR / snapshot_id

    def run_dir(self, run_id: str) -> Path:
        """Folder of one training run."""
        return self.root / RUNS_DIR / run_id

    def checkpoints_dir(self, run_id: str) -> Path:
        """Folder of a run's checkpoints."""
        return self.run_dir(run_id) / "checkpoints"

    def model_dir(self, run_id: str) -> Path:
        """Folder of a run's final model (loadable by ``transformers.pipeline``)."""
        return self.run_dir(run_id) / "model"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the whole new one.

    Args:
        path: Destination file.
        data: JSON-serialisable content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
