"""The arithmetic of a sweep, pure and deterministic: grid, sampling, rungs, ranking, promotion.

No Temporal and no I/O here, so the workflow stays small and every rule is unit-tested alone. The
workflow passes its own random source (seeded) into :func:`sample_points`, so replay draws the same.
"""

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any, Literal

from durabert.shared.models import SweepTrial

Mode = Literal["max", "min"]
"""Whether a larger or a smaller metric is better."""


def grid_points(parameters: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, in the order a nested loop would give them.

    Args:
        parameters: Field name to its values; the fields' order is kept.

    Returns:
        One dict per grid point; the last field varies fastest.
    """
    names = list(parameters)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*parameters.values())]


def sample_points(
    points: Sequence[dict[str, Any]], count: int | None, rng: random.Random
) -> list[dict[str, Any]]:
    """Draw ``count`` distinct grid points, kept in grid order (the whole grid when it has no more).

    Args:
        points: The grid.
        count: How many to keep; None keeps every point.
        rng: The random source (seeded: the same seed draws the same points).

    Returns:
        The chosen points.
    """
    if count is None or count >= len(points):
        return list(points)
    chosen = sorted(rng.sample(range(len(points)), count))
    return [points[index] for index in chosen]


def rung_schedule(min_steps: int, max_steps: int, eta: int) -> list[int]:
    """Steps of each rung of successive halving: ``min_steps * eta**k`` below ``max_steps``, then it.

    Args:
        min_steps: Steps of the first rung.
        max_steps: Steps of the last rung (whether or not a power multiple of ``min_steps``).
        eta: Growth factor of the steps between rungs.

    Returns:
        Increasing rung sizes, the last one ``max_steps``.
    """
    rungs = []
    steps = min_steps
    while steps < max_steps:
        rungs.append(steps)
        steps *= eta
    rungs.append(max_steps)
    return rungs


def trial_run_id(sweep_id: str, number: int) -> str:
    """Name trial ``number`` (from 1) of a sweep: ``<sweep_id>-<nn>``.

    Args:
        sweep_id: The sweep's id.
        number: The trial's number, 1 to 99.

    Returns:
        The trial's run id.
    """
    return f"{sweep_id}-{number:02d}"


def steps_trained(global_step: int, step_before: int) -> int:
    """Steps a rung added to a trial: its end step less the step the trial had before the rung.

    Not the final attempt's ``resumed_from_step``: after a preemption mid-rung that is the rung's
    last checkpoint, and the steps before it would go uncounted.

    Args:
        global_step: The trial's step at the end of the rung.
        step_before: Its step at the end of the previous rung (0 before the first).

    Returns:
        The steps trained in this rung.
    """
    return max(0, global_step - step_before)


def ranking_key(trial: SweepTrial, index: int, mode: Mode) -> tuple[bool, int, float, float, int]:
    """Sort key of a trial: with a metric first, furthest rung first, best metric, lower loss, grid order.

    A trial without a metric (failed before any rung finished, or evaluation without that metric)
    ranks last; a trial evaluated at a later rung ranks above one stopped earlier, whose metric was
    measured after fewer steps; a tie of the metric goes to the lower held-out loss (after a few
    steps many trials tie on accuracy, each predicting the majority class), then to the earlier
    trial, so the ranking is deterministic.

    Args:
        trial: The trial.
        index: Its position in the sweep.
        mode: Whether a larger or smaller metric is better.

    Returns:
        A key for ``sorted`` (smallest = best).
    """
    if trial.metric is None:
        return (True, 0, 0.0, 0.0, index)
    signed = -trial.metric if mode == "max" else trial.metric
    loss = trial.eval_loss if trial.eval_loss is not None else math.inf
    return (False, -trial.rung, signed, loss, index)


def ranked(trials: Sequence[SweepTrial], mode: Mode) -> list[int]:
    """Positions of the trials, best first (see :func:`ranking_key`).

    Args:
        trials: The trials.
        mode: Whether a larger or smaller metric is better.

    Returns:
        Indices into ``trials``.
    """
    return sorted(range(len(trials)), key=lambda index: ranking_key(trials[index], index, mode))


def promote(trials: Sequence[SweepTrial], rung_members: Sequence[int], eta: int, mode: Mode) -> list[int]:
    """Pick the trials that go on to the next rung: the best ``1/eta`` of the rung (at least one).

    The quota counts every trial that entered the rung, failed ones included, but only trials that
    finished the rung with a metric are promoted: a failed or cancelled trial never takes a place.

    Args:
        trials: Every trial of the sweep.
        rung_members: Indices of the trials that entered this rung.
        eta: Keep ``len(rung_members) // eta`` (at least one).
        mode: Whether a larger or smaller metric is better.

    Returns:
        Indices of the promoted trials, best first.
    """
    quota = max(1, len(rung_members) // eta)
    candidates = [
        index
        for index in rung_members
        if trials[index].state not in ("failed", "cancelled") and trials[index].metric is not None
    ]
    candidates.sort(key=lambda index: ranking_key(trials[index], index, mode))
    return candidates[:quota]


def best_trial(trials: Sequence[SweepTrial], mode: Mode) -> int | None:
    """The best trial with a metric, or None when no trial has one.

    Args:
        trials: The trials.
        mode: Whether a larger or smaller metric is better.

    Returns:
        Its index.
    """
    order = ranked(trials, mode)
    if not order or trials[order[0]].metric is None:
        return None
    return order[0]
