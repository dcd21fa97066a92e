"""The arithmetic of a sweep (``sweep_grid``) and the sweep file's validation: the grid a user writes is
the trials they get, a seed reproduces a sample, rungs end at ``max_steps``, promotion keeps the best
``1/eta`` with failures last and ties to the earlier trial."""

import random
from typing import Any

import pytest
from pydantic import ValidationError

from durabert.orchestrator import sweep_grid
from durabert.shared.models import BertSweepConfig, SweepTrial

BASE = {"dataset_name": "json", "data_files": "reviews.jsonl", "max_steps": 8}


def trial(
    number: int, metric: float | None, *, state: str = "completed", rung: int = 0, loss: float | None = None
) -> SweepTrial:
    return SweepTrial(
        run_id=f"sw-{number:02d}",
        params={},
        metric=metric,
        eval_loss=loss,
        state=state,
        rung=rung,  # type: ignore[arg-type]
    )


def test_the_grid_is_the_product_with_the_last_field_varying_fastest() -> None:
    points = sweep_grid.grid_points({"learning_rate": [1e-4, 5e-5], "batch_size": [8, 16, 32]})
    assert points == [
        {"learning_rate": 1e-4, "batch_size": 8},
        {"learning_rate": 1e-4, "batch_size": 16},
        {"learning_rate": 1e-4, "batch_size": 32},
        {"learning_rate": 5e-5, "batch_size": 8},
        {"learning_rate": 5e-5, "batch_size": 16},
        {"learning_rate": 5e-5, "batch_size": 32},
    ]


def test_a_sample_is_reproducible_with_its_seed_distinct_and_in_grid_order() -> None:
    points = sweep_grid.grid_points({"a": list(range(10)), "b": list(range(10))})
    first = sweep_grid.sample_points(points, 12, random.Random(7))
    assert first == sweep_grid.sample_points(points, 12, random.Random(7))
    assert first != sweep_grid.sample_points(points, 12, random.Random(8))
    assert len({(p["a"], p["b"]) for p in first}) == 12
    assert first == sorted(first, key=points.index)


def test_sampling_more_than_the_grid_keeps_every_point() -> None:
    points = sweep_grid.grid_points({"a": [1, 2, 3]})
    assert sweep_grid.sample_points(points, 5, random.Random(0)) == points
    assert sweep_grid.sample_points(points, None, random.Random(0)) == points


@pytest.mark.parametrize(
    ("min_steps", "max_steps", "eta", "rungs"),
    [
        (4, 8, 2, [4, 8]),
        (100, 1000, 2, [100, 200, 400, 800, 1000]),
        (3, 10, 2, [3, 6, 10]),
        (2, 54, 3, [2, 6, 18, 54]),
        (2, 50, 3, [2, 6, 18, 50]),
        (5, 6, 3, [5, 6]),
    ],
)
def test_rungs_grow_by_eta_and_end_at_max_steps(
    min_steps: int, max_steps: int, eta: int, rungs: list[int]
) -> None:
    assert sweep_grid.rung_schedule(min_steps, max_steps, eta) == rungs


def test_trial_run_ids_and_steps_trained() -> None:
    assert sweep_grid.trial_run_id("sweep-a", 3) == "sweep-a-03"
    assert sweep_grid.steps_trained(8, 4) == 4
    assert sweep_grid.steps_trained(4, 0) == 4


def test_promotion_keeps_the_best_fraction_with_ties_to_the_earlier_trial() -> None:
    trials = [trial(1, 0.7), trial(2, 0.9), trial(3, 0.9), trial(4, 0.6), trial(5, 0.8), trial(6, 0.5)]
    assert sweep_grid.promote(trials, range(6), 2, "max") == [1, 2, 4]
    assert sweep_grid.promote(trials, range(6), 3, "max") == [1, 2]
    assert sweep_grid.promote(trials, [0, 3], 3, "max") == [0]  # at least one goes on


def test_a_tie_of_the_metric_goes_to_the_lower_held_out_loss() -> None:
    # After a few steps every trial predicts the majority class: the same accuracy, different losses.
    majority = 0.5067
    trials = [trial(1, majority, loss=0.70), trial(2, majority, loss=0.64), trial(3, majority, loss=0.69)]
    trials.append(trial(4, majority))  # no loss reported: after those that have one
    assert sweep_grid.promote(trials, range(4), 2, "max") == [1, 2]
    assert sweep_grid.ranked(trials, "max") == [1, 2, 0, 3]


def test_min_mode_prefers_the_smaller_metric() -> None:
    trials = [trial(1, 0.30), trial(2, 0.10), trial(3, 0.20), trial(4, 0.40)]
    assert sweep_grid.promote(trials, range(4), 2, "min") == [1, 2]
    assert sweep_grid.best_trial(trials, "min") == 1
    assert sweep_grid.best_trial(trials, "max") == 3


def test_failed_trials_rank_last_and_never_take_a_place() -> None:
    trials = [trial(1, None, state="failed"), trial(2, 0.5), trial(3, None, state="failed"), trial(4, 0.4)]
    # The quota counts the failures (4 // 2 = 2), but only finished trials are promoted.
    assert sweep_grid.promote(trials, range(4), 2, "max") == [1, 3]
    assert sweep_grid.ranked(trials, "max")[-2:] == [0, 2]
    everything_failed = [trial(1, None, state="failed"), trial(2, None, state="failed")]
    assert sweep_grid.promote(everything_failed, range(2), 2, "max") == []
    assert sweep_grid.best_trial(everything_failed, "max") is None


def test_a_trial_at_a_later_rung_beats_a_better_metric_from_an_earlier_one() -> None:
    trials = [trial(1, 0.95, state="stopped", rung=0), trial(2, 0.80, rung=1)]
    assert sweep_grid.best_trial(trials, "max") == 1


def sweep_config(**fields: Any) -> BertSweepConfig:
    return BertSweepConfig.model_validate(
        {"sweep_id": "sw", "base": BASE, "parameters": {"learning_rate": [1e-4, 5e-5]}} | fields
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"parameters": {"learning_rat": [1]}}, "'learning_rat' is not a training config field"),
        ({"parameters": {"run_id": ["a"]}}, "'run_id' is set by the sweep itself"),
        ({"parameters": {"batch_size": [0]}}, "batch_size"),
        ({"parameters": {"batch_size": []}}, "at least 1 item"),
        ({"strategy": "successive_halving"}, "needs base.max_steps (last rung) and min_steps"),
        ({"strategy": "successive_halving", "min_steps": 8}, "min_steps (8) must be < base.max_steps (8)"),
        (
            {"strategy": "successive_halving", "min_steps": 2, "parameters": {"max_steps": [4, 8]}},
            "max_steps per rung: it cannot be a swept parameter",
        ),
        (
            {"strategy": "successive_halving", "min_steps": 2, "parameters": {"lr_schedule_steps": [8, 16]}},
            "lr_schedule_steps per rung: it cannot be a swept parameter",
        ),
        (
            {"parameters": {"lr_schedule_steps": [4, 8]}},
            "lr_schedule_steps (4) must be at least max_steps (8)",
        ),
        ({"parameters": {"seed": list(range(10)), "batch_size": list(range(1, 12))}}, "set num_trials"),
        ({"sweep_id": "s" * 61}, "at most 60 characters"),
        ({"sweep_id": "Bad Id"}, "must be 1-63 characters"),
    ],
)
def test_a_bad_sweep_is_refused_naming_the_problem(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        sweep_config(**fields)
    assert message in str(refused.value)


def test_a_large_grid_is_accepted_when_sampled() -> None:
    config = sweep_config(
        parameters={"seed": list(range(10)), "batch_size": list(range(1, 12))}, num_trials=20
    )
    assert config.num_trials == 20
