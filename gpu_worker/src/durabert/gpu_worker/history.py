"""A run's history file (attempts, losses, checkpoints over all attempts) and its loss curve.

Each attempt appends to ``runs/<run_id>/history.jsonl``; the final model's manifest and
``loss_curve.png`` are built from it, so a resumed run's curve shows every attempt.
"""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
"""History file name inside a run folder."""


def append(run_dir: Path, kind: str, **fields: Any) -> None:
    """Append one record (a line of JSON) to the run's history.

    Args:
        run_dir: The run folder.
        kind: ``attempt``, ``loss`` or ``checkpoint``.
        **fields: The record's data.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"kind": kind, "time": datetime.now(UTC).isoformat(), **fields}
    with (run_dir / HISTORY_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def read(run_dir: Path) -> list[dict[str, Any]]:
    """Read the run's history, skipping a torn last line left by a killed attempt.

    Args:
        run_dir: The run folder.

    Returns:
        The records in order.
    """
    path = run_dir / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_loss_curve(records: list[dict[str, Any]], destination: Path, title: str) -> None:
    """Draw the training loss of every attempt against the step into a PNG.

    Args:
        records: History records.
        destination: PNG file to write.
        title: Figure title (the run id).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    by_attempt: dict[int, list[tuple[int, float]]] = {}
    for record in records:
        if record.get("kind") == "loss" and record.get("loss") is not None:
            by_attempt.setdefault(int(record.get("attempt", 1)), []).append((record["step"], record["loss"]))
    for attempt, points in sorted(by_attempt.items()):
        steps, losses = zip(*sorted(points), strict=True)
        axes.plot(steps, losses, marker=".", label=f"attempt {attempt}")
    for record in records:
        if record.get("kind") == "attempt" and record.get("resumed_from_step") is not None:
            axes.axvline(record["resumed_from_step"], color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_title(title)
    if by_attempt:
        axes.legend()
    figure.tight_layout()
    figure.savefig(destination, dpi=100)
    plt.close(figure)
