"""Load: 30 training runs on one GPU slot, 200 inferences from 20 concurrent clients.

The three workers run as processes from their console scripts against the session's dev
server (``support.load`` in ``testkit/`` holds the machinery; ``bench/load_bench.py`` runs
the same loads as a benchmark with other counts: 50 runs and 500 requests in
``docs/reliability.md``). The figures (peak memory, latency, throughput) are printed here and
published there; nothing here asserts a duration.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client

from durabert.orchestrator.devserver import DevServer
from support.load import (
    LoadCluster,
    inference_load,
    most_trainings_at_once,
    overlapping,
    training_load,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TRAINING_RUNS = 30
INFERENCE_REQUESTS = 200
INFERENCE_CLIENTS = 20
MAX_STEPS = 2
# Workers that only route workflows or hash a small file: a leak per run would show up as a
# peak several times the ~100 MiB (orchestrator) and ~200 MiB (data worker) they settle at.
PEAK_MEMORY_CEILING_MIB = 1024


@pytest.fixture(scope="module")
def load_cluster(dev_server: DevServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadCluster]:
    """Orchestrator, data and GPU worker processes; the GPU worker has one activity slot."""
    cluster = LoadCluster(dev_server.address, tmp_path_factory.mktemp("load"), gpu_slots=1)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def _report(name: str, figures: dict[str, object]) -> None:
    print(f"\n{name}: {json.dumps(figures)}")


async def test_many_training_runs_share_one_gpu_slot_one_at_a_time(
    client: Client, load_cluster: LoadCluster, tiny_model_dir: Path
) -> None:
    load = await training_load(
        client, load_cluster, tiny_model_dir, TRAINING_RUNS, max_steps=MAX_STEPS, checkpoint_steps=2
    )
    peaks = load_cluster.peak_memory_mib()
    _report("training load", load.summary() | {"peak_memory_mib": {k: round(v, 1) for k, v in peaks.items()}})

    # All complete, each to its planned step, on its first attempt.
    assert [result.run_id for result in load.results] == load.run_ids
    assert {result.global_step for result in load.results} == {MAX_STEPS}
    assert {result.attempts for result in load.results} == {1}

    # Never two at once, by the server's record (fine-tuning activity start to completion)...
    assert overlapping(load.spans) == []
    # ...and by the GPU worker's own log (a training process starts after the last one ended).
    gpu_log = load_cluster.workers["gpu"].lines
    started = [line["run_id"] for line in gpu_log if line.get("event") == "training process started"]
    assert sorted(started) == sorted(load.run_ids)
    assert most_trainings_at_once(gpu_log) == 1

    # Each run has its own finished model, in its own folder, naming its own run.
    store = load_cluster.artifact_root
    model_dirs = [store / result.model_path for result in load.results]
    assert len(set(model_dirs)) == TRAINING_RUNS
    for run_id, model_dir in zip(load.run_ids, model_dirs, strict=True):
        assert model_dir == store / "runs" / run_id / "model"
        assert (model_dir / "config.json").is_file()
        manifest = json.loads((model_dir / "durabert-manifest.json").read_text())
        assert manifest["run_id"] == run_id
        assert manifest["global_step"] == MAX_STEPS
    # The same data everywhere: one content-addressed snapshot, built once and reused.
    snapshots = {result.dataset_snapshot.snapshot_id for result in load.results if result.dataset_snapshot}
    assert len(snapshots) == 1
    assert len(list((store / "snapshots").iterdir())) == 1

    for role in ("orchestrator", "data"):
        assert peaks[role] < PEAK_MEMORY_CEILING_MIB, (role, peaks)


async def test_hundreds_of_inferences_from_twenty_clients(
    client: Client, load_cluster: LoadCluster, tiny_model_dir: Path
) -> None:
    trained = await training_load(client, load_cluster, tiny_model_dir, 1, max_steps=MAX_STEPS)
    run_id = trained.run_ids[0]

    load = await inference_load(
        load_cluster.address, load_cluster, run_id, INFERENCE_REQUESTS, INFERENCE_CLIENTS
    )
    _report("inference load", load.summary())

    assert load.failures == []
    assert len(load.latencies) == INFERENCE_REQUESTS
    # One warm model served them all: loaded once (for the warm-up), never again.
    gpu_log = load_cluster.workers["gpu"].lines
    loads = [line for line in gpu_log if line.get("event") == "loaded model for inference"]
    assert [line["run_id"] for line in loads] == [run_id]
