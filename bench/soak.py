"""The long chaos soak: one training run whose GPU worker is SIGKILLed at random moments, each time replaced.

One command (from the repository root, after ``uv sync``):

    .venv/bin/python bench/soak.py --seed 1 --kills 20 --steps 1000 --checkpoint-steps 10

It starts its own Temporal dev server, an orchestrator and a data worker, then a GPU
worker that is killed ``--kills`` times (a lost worker process or a lost node, chosen by
the seed) and replaced each time; then it trains the same config uninterrupted in-process
and prints JSON: steps trained against the plan, eval loss of both runs, every kill. It
exits 1 when a promise is broken (wrong final step, eval loss off by more than 1e-4, more
than one checkpoint interval retrained per kill). ``make test`` runs the short version
(tests/reliability/test_faults.py).
"""

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.orchestrator.devserver import DevServer, free_port
from support.chaos import chaos_soak, reference_eval_loss
from support.cluster import make_cluster
from support.tiny_model import save_tiny_bert


async def soak(args: argparse.Namespace, root: Path) -> int:
    server = DevServer(root / "temporal", port=free_port())
    server.start()
    cluster = make_cluster(server.address, root / "cluster", rows=args.rows)
    try:
        cluster.start("orchestrator")
        cluster.start("data")
        client = await Client.connect(server.address, data_converter=pydantic_data_converter)
        model = save_tiny_bert(root / "tiny-bert")
        report, result, config = await chaos_soak(
            client,
            cluster,
            model,
            run_id=f"soak-{args.seed}",
            seed=args.seed,
            kills=args.kills,
            max_steps=args.steps,
            checkpoint_steps=args.checkpoint_steps,
            timeout=args.timeout,
        )
    finally:
        cluster.stop_all()
        server.stop()
    started = time.monotonic()
    report.reference_eval_loss = reference_eval_loss(cluster, config, result)
    report.reference_seconds = time.monotonic() - started
    figures = report.as_dict() | {
        "eval_loss_difference": abs(report.eval_loss - report.reference_eval_loss),
        "allowed_extra_steps": args.kills * args.checkpoint_steps,
    }
    print(json.dumps(figures, indent=2))
    ok = (
        report.global_step == args.steps
        and figures["eval_loss_difference"] <= 1e-4
        and report.extra_steps <= figures["allowed_extra_steps"]
    )
    print("OK" if ok else "BROKEN PROMISE", file=sys.stderr)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed of kill timing and kind")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the GPU worker")
    parser.add_argument("--steps", type=int, default=1000, help="planned optimizer steps")
    parser.add_argument("--checkpoint-steps", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--rows", type=int, default=400, help="rows of the generated review data set")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each stage")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and artifacts in this folder")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(soak(args, args.keep.resolve())))
    with tempfile.TemporaryDirectory(prefix="durabert-soak-") as folder:
        sys.exit(asyncio.run(soak(args, Path(folder))))


if __name__ == "__main__":
    main()
