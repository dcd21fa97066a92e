"""Load: many training runs on one GPU slot, and many concurrent inference clients.

The three workers run as separate processes from their console scripts (as in production),
against a local Temporal dev server, with one GPU worker whose single activity slot
(``DURABERT_GPU__MAX_CONCURRENT_ACTIVITIES=1``) every run shares:

- training: ``--runs`` training workflows started at once (tiny random BERT, a few steps,
  one small data file so every run gets the same content-addressed snapshot). Reported:
  wall seconds, seconds per run, whether any two fine-tuning activities overlapped (from the
  workflow histories), and the peak resident memory (``VmHWM``) of each worker process.
- inference: ``--requests`` inference workflows from ``--clients`` concurrent clients (one
  Temporal client connection each) against the warm GPU worker. Reported: p50 and p99
  latency (start of the workflow to its result), throughput, failures.

    .venv/bin/python bench/load_bench.py --runs 50 --requests 500 --clients 20

The harness (``support.load``, in ``testkit/``) is the one the reliability tests drive.
"""

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from support.load import LoadCluster, inference_load, most_trainings_at_once, training_load


def _rounded(figures: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 1) for key, value in figures.items()}


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from durabert.orchestrator.devserver import DevServer, free_port
    from support.tiny_model import save_tiny_bert

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="durabert-load-") as folder:
        root = Path(folder)
        server = DevServer(root / "temporal", port=free_port())
        server.start()
        cluster = LoadCluster(
            server.address, root, gpu_slots=args.gpu_slots, torch_threads=args.torch_threads or None
        )
        try:
            model_dir = save_tiny_bert(root / "tiny-bert")
            client = await Client.connect(server.address, data_converter=pydantic_data_converter)
            cluster.start()
            training = await training_load(
                client,
                cluster,
                model_dir,
                args.runs,
                max_steps=args.steps,
                checkpoint_steps=args.checkpoint_steps,
            )
            report["training"] = training.summary() | {
                "most_trainings_at_once_in_gpu_log": most_trainings_at_once(cluster.workers["gpu"].lines)
            }
            report["peak_memory_mib_after_training"] = _rounded(cluster.peak_memory_mib())
            inference = await inference_load(
                server.address, cluster, training.run_ids[0], args.requests, args.clients
            )
            report["inference"] = inference.summary()
            report["peak_memory_mib_after_inference"] = _rounded(cluster.peak_memory_mib())
        finally:
            cluster.stop()
            server.stop()
    return report


def main() -> None:
    """Parse the arguments, run both loads and print the figures as JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=50, help="training workflows started at once")
    parser.add_argument("--steps", type=int, default=2, help="max_steps of each run")
    parser.add_argument("--checkpoint-steps", type=int, default=2, help="checkpoint interval of each run")
    parser.add_argument("--requests", type=int, default=500, help="inference workflows in all")
    parser.add_argument("--clients", type=int, default=20, help="concurrent inference clients")
    parser.add_argument("--gpu-slots", type=int, default=1, help="activity slots of the GPU worker")
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="OMP_NUM_THREADS of the workers (0: torch's default)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args)), indent=2))


if __name__ == "__main__":
    main()
