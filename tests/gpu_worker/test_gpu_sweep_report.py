"""``record_sweep``: a sweep's ``trials.json`` and ``metric.png`` land under ``sweeps/<sweep_id>/`` of the
artifact store, a local folder or an object store, and are replaced whole after each rung."""

import json
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from durabert.gpu_worker.sweep_report import SweepReports, plot_metric
from durabert.shared.models import BertSweepResult, SweepPoint, SweepReportRequest, SweepTrial
from durabert.shared.object_store import open_object_store
from durabert.shared.settings import DurabertSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sweep(rungs_done: int) -> BertSweepResult:
    """A halving sweep of two trials after ``rungs_done`` rungs: 02 goes on, 01 stops after the first."""
    steps = [4, 8][:rungs_done]
    first = SweepTrial(
        run_id="sw-01", params={"learning_rate": 1e-5}, state="stopped", rung=0, global_step=4, metric=0.6
    )
    first.points = [SweepPoint(step=4, metric=0.6)]
    second = SweepTrial(
        run_id="sw-02", params={"learning_rate": 4e-5}, state="completed", rung=rungs_done - 1
    )
    second.points = [SweepPoint(step=step, metric=0.7 + step / 100) for step in steps]
    second.global_step, second.metric = steps[-1], second.points[-1].metric
    return BertSweepResult(
        sweep_id="sw",
        strategy="successive_halving",
        metric="eval_accuracy",
        mode="max",
        rungs=[4, 8],
        trials=[first, second],
        best_run_id="sw-02",
        best_metric=second.metric,
        total_steps=4 + steps[-1],
    )


async def test_the_report_is_written_into_a_local_root_and_replaced_after_each_rung(tmp_path: Path) -> None:
    settings = DurabertSettings(artifact_root=tmp_path / "artifacts", data_dir=tmp_path / "data")
    reports = SweepReports(settings)
    env = ActivityEnvironment()
    await env.run(reports.record_sweep, SweepReportRequest(sweep=sweep(1)))
    result = await env.run(reports.record_sweep, SweepReportRequest(sweep=sweep(2)))
    folder = settings.artifact_dir / "sweeps" / "sw"
    assert (result.report_path, result.files) == ("sweeps/sw", ["metric.png", "trials.json"])
    written = BertSweepResult.model_validate(json.loads((folder / "trials.json").read_text()))
    assert written == sweep(2)
    assert (folder / "metric.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(path.name for path in folder.iterdir()) == ["metric.png", "trials.json"]  # no leftovers


async def test_the_report_goes_to_an_object_store_root(s3_root: str, tmp_path: Path) -> None:
    settings = DurabertSettings(artifact_root=s3_root, data_dir=tmp_path / "data", work_dir=tmp_path / "work")
    result = await ActivityEnvironment().run(
        SweepReports(settings).record_sweep, SweepReportRequest(sweep=sweep(2))
    )
    store = open_object_store(s3_root)
    assert store is not None
    trials = store.read_bytes(f"{result.report_path}/trials.json")
    assert trials is not None
    assert json.loads(trials)["best_run_id"] == "sw-02"
    png = store.read_bytes(f"{result.report_path}/metric.png")
    assert png is not None
    assert png.startswith(PNG_MAGIC)


def test_a_sweep_without_any_metric_still_draws_an_empty_plot() -> None:
    empty = sweep(1).model_copy(update={"trials": [SweepTrial(run_id="sw-01", params={}, state="failed")]})
    assert plot_metric(empty).startswith(PNG_MAGIC)
