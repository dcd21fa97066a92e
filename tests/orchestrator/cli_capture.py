"""Captured CLI output for tests: the CLI's two consoles backed by strings."""

import io

from rich.console import Console

from durabert.orchestrator.cli import Output


class Captured(Output):
    """Output into strings, wide enough that nothing wraps."""

    def __init__(self) -> None:
        """Two string-backed consoles."""
        super().__init__(
            out=Console(file=io.StringIO(), width=200, color_system=None),
            err=Console(file=io.StringIO(), width=200, color_system=None),
        )

    @property
    def stdout(self) -> str:
        """Text printed to stdout."""
        file = self.out.file
        assert isinstance(file, io.StringIO)
        return file.getvalue()

    @property
    def stderr(self) -> str:
        """Text printed to stderr."""
        file = self.err.file
        assert isinstance(file, io.StringIO)
        return file.getvalue()
