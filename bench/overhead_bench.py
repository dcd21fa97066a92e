"""Orchestration overhead: a whole training workflow against the plain ``Trainer`` script.

The workflow path is production's: a local Temporal dev server and the three workers as
separate processes (console scripts); the clock runs from ``start_workflow`` to the
result, so it includes the snapshot (loading the JSONL, content hashing, Parquet, atomic
publish), scheduling, the training child, checkpoint markers, signals and the atomic
model publish. The plain path is what a user would write on the same snapshot and
settings (``bench/train_bench.py``'s ``plain_trainer``): load, tokenize, train, evaluate,
save. Both use the real all-MiniLM-L6-v2. Goal: workflow wall / plain wall <= 1.03.

    .venv/bin/python bench/overhead_bench.py --steps 150 --batch-size 16 --seq-len 64
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from durabert.orchestrator.devserver import DevServer, free_port
from durabert.shared import names
from durabert.shared.client import connect_client
from durabert.shared.models import BertFineTuneConfig, BertFineTuneRequest, BertFineTuneResult
from durabert.shared.settings import DurabertSettings
from train_bench import make_texts, plain_trainer

BIN = Path(sys.executable).parent
SCRIPTS = ["durabert-orchestrator-worker", "durabert-data-worker", "durabert-gpu-worker"]


def write_jsonl(path: Path, rows: int) -> Path:
    """Review-like sentences with 0/1 labels, as a JSONL source."""
    texts, labels = make_texts(rows, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(texts, labels, strict=True))
    )
    return path


async def workflow_run(
    settings: DurabertSettings, config: BertFineTuneConfig
) -> tuple[float, BertFineTuneResult]:
    """Start the training workflow and wait for its result; return wall seconds and the result."""
    client = await connect_client(settings)
    started = time.perf_counter()
    result: BertFineTuneResult = await client.execute_workflow(
        names.TRAINING_WORKFLOW,
        config,
        id=config.run_id or "bench",
        task_queue=settings.queues.orchestrator,
        memo=settings.queue_memo(),
        result_type=BertFineTuneResult,
    )
    return time.perf_counter() - started, result


def main() -> None:
    """Run the workflow once (cold snapshot) and the plain script once, then print the ratio."""
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--steps", type=int, default=150)
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--seq-len", type=int, default=64)
    options.add_argument("--checkpoint-steps", type=int, default=50)
    options.add_argument("--rows", type=int, default=3000)
    args = options.parse_args()

    work = Path(tempfile.mkdtemp(prefix="durabert-overhead-"))
    server = DevServer(work / "temporal", port=free_port())
    settings = DurabertSettings(
        temporal={"address": server.address}, artifact_root=work / "artifacts", data_dir=work / "data"
    )
    data = write_jsonl(settings.data_dir / "reviews.jsonl", args.rows)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABERT_")} | {
        "DURABERT_TEMPORAL__ADDRESS": server.address,
        "DURABERT_ARTIFACT_ROOT": str(settings.artifact_dir),
        "DURABERT_DATA_DIR": str(settings.data_dir),
        "DURABERT_LOG_LEVEL": "WARNING",
        "DURABERT_LOG_FORMAT": "json",
        "HF_HUB_OFFLINE": "1",
    }
    config = BertFineTuneConfig(
        run_id="overhead",
        dataset_name="json",
        data_files=str(data),
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.seq_len,
        checkpoint_steps=args.checkpoint_steps,
        save_total_limit=2,
        use_gpu=False,
    )
    server.start()
    workers = [
        subprocess.Popen([str(BIN / s)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for s in SCRIPTS
    ]
    try:
        time.sleep(20)  # a running GPU worker has warmed its forkserver (torch imported): wait for that
        workflow_s, result = asyncio.run(workflow_run(settings, config))
        print(
            f"workflow: {workflow_s:.2f} s (training loop {result.training_time_seconds:.2f} s)", flush=True
        )
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
        server.stop()

    assert result.dataset_snapshot is not None
    plain_root = work / "plain"
    shutil.copytree(
        settings.artifact_dir / result.dataset_snapshot.snapshot_path, plain_root / "snapshots" / "bench"
    )
    request = BertFineTuneRequest(run_id="plain", config=config, dataset_snapshot=result.dataset_snapshot)
    # Imports are not timed on either side: the GPU worker had them preloaded too.
    import datasets  # noqa: F401
    import transformers  # noqa: F401

    plain = plain_trainer(request, plain_root, "cpu", "fp32")
    print(f"plain Trainer script: {plain['wall_s']:.2f} s (training loop {plain['loop_s']:.2f} s)")
    print(f"overhead: workflow / plain = {workflow_s / plain['wall_s']:.3f} (goal <= 1.03)")
    shutil.rmtree(work, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)  # skip the SDK's fragile interpreter teardown (sdk-python issue 300)


if __name__ == "__main__":
    main()
