"""``durabert``: the client CLI (training, status, inference). Filled in by the orchestrator work."""

import sys


def main() -> None:
    """Entry point of the ``durabert`` command."""
    print("durabert: the client CLI arrives with the orchestrator; see README.md", file=sys.stderr)
    sys.exit(2)
