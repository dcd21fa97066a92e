"""Online inference under load: 20 concurrent clients x 8 texts against an in-process pipeline.

One Temporal dev server, the packaged MiniLM (2-label head) published as a finished run, and the
orchestrator and GPU workers as processes from their console scripts (explicit environment, CPU,
``HF_HUB_OFFLINE=1``). Sides (the Temporal ones forward in even repeats, backward in odd ones):

- ``pipeline``: ``transformers.pipeline("text-classification", batch_size=32, device="cpu")`` in
  this process over the same texts every Temporal side sends, with the workers idle;
- ``before``: the path of main before issue 14: a ``BertInferenceWorkflow`` per request and ONE
  inference slot (``DURABERT_INFERENCE__MAX_CONCURRENT_REQUESTS=1``, ``MAX_WAIT_MS=0``), so one
  request at a time and no shared pass;
- ``workflow``: a workflow per request, the batcher with its slots (``--slots``);
- ``activity``: a standalone activity per request (the default route), the batcher with its slots.

For each Temporal side, ``--clients`` client connections each send ``--rounds`` requests of
``--texts`` texts one after the other (after one warm-up request, not counted), through
``durabert.orchestrator.inference_ops.run_inference``. Every Temporal side runs between two
pipeline runs (a shared machine's spare CPU drifts within minutes). Reported per side: texts/s,
requests/s, p50 and p99 latency, texts/s as a fraction of the mean of the two pipeline runs around
it, and the CPU milliseconds per text each process spent (``/proc``: the Temporal server, the
workers, this process's clients); then the median over repeats. Predictions are compared with the
pipeline's (label names), and mismatches counted. The GPU worker restarts only between sides with
different inference settings.

Torch gets ``--torch-threads`` threads in the GPU worker (``OMP_NUM_THREADS``) and in the pipeline
(``torch.set_num_threads``): the same compute on both sides. One by default: on the 2-core test
machine the other core is what the Temporal server, the orchestrator worker and the clients need
while the model runs; with 2 the pipeline (workers idle) takes both cores and the served sides
cannot, which measures the core count, not the serving path.

    .venv/bin/python bench/serving_bench.py --repeat 3
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durabert.shared.models import BertInferenceRequest, BertInferenceResult
from durabert.shared.settings import DurabertSettings, InferenceSettings, QueueSettings
from inference_bench import publish_model
from support.load import InferenceLoad, LoadCluster
from train_bench import make_texts

Route = Literal["activity", "workflow"]
"""How a client sends a request (``DURABERT_INFERENCE__ROUTE``)."""
RUN_ID = "serving-bench"
"""The finished run whose model every side uses."""


@dataclass(frozen=True)
class Side:
    """A Temporal side: how the client sends a request and the GPU worker's inference settings."""

    route: Route
    """``DURABERT_INFERENCE__ROUTE`` of the clients."""
    worker_env: tuple[tuple[str, str], ...]
    """``DURABERT_INFERENCE__*`` of the GPU worker (a change restarts it)."""


def sides(args: argparse.Namespace) -> dict[str, Side]:
    """The Temporal sides with the batcher settings of ``args``."""
    batcher = (
        ("DURABERT_INFERENCE__MAX_BATCH_SIZE", str(args.max_batch_size)),
        ("DURABERT_INFERENCE__MAX_WAIT_MS", str(args.max_wait_ms)),
        ("DURABERT_INFERENCE__MAX_CONCURRENT_REQUESTS", str(args.slots)),
    )
    # One slot and no wait: one request at a time, its own pass, no waiting for company (main before).
    alone = (
        ("DURABERT_INFERENCE__MAX_CONCURRENT_REQUESTS", "1"),
        ("DURABERT_INFERENCE__MAX_WAIT_MS", "0"),
    )
    return {
        "before": Side("workflow", alone),
        "workflow": Side("workflow", batcher),
        "activity": Side("activity", batcher),
    }


def client_settings(cluster: LoadCluster, route: Route) -> DurabertSettings:
    """What ``run_inference`` reads: the cluster's queues and the route."""
    queues = QueueSettings(
        **{role: cluster.queues[role] for role in ("data", "gpu", "inference", "orchestrator")}
    )
    return DurabertSettings(queues=queues, inference=InferenceSettings(route=route))


def request_texts(args: argparse.Namespace) -> list[list[str]]:
    """Every request's texts: client ``c``'s round ``r`` is item ``r * clients + c``."""
    texts, _ = make_texts(args.clients * args.rounds * args.texts, seed=5)
    return [texts[start : start + args.texts] for start in range(0, len(texts), args.texts)]


def pipeline_side(classify: Any, requests: list[list[str]], args: argparse.Namespace) -> dict[str, Any]:
    """Classify every request's texts in one pipeline call at batch 32; texts/s and label names."""
    texts = [text for request in requests for text in request]
    started = time.perf_counter()
    outputs = classify(texts, batch_size=args.pipeline_batch_size, truncation=True, max_length=args.seq_len)
    seconds = time.perf_counter() - started
    names = [output["label"] for output in outputs]
    labels = [names[start : start + args.texts] for start in range(0, len(names), args.texts)]
    return {"texts_per_second": len(texts) / seconds, "labels": labels}


@dataclass
class SideRun:
    """What one Temporal side's load produced."""

    load: InferenceLoad
    """Latencies, failures and wall time."""
    labels: list[list[str]]
    """Label names per request (empty for a failed one)."""
    cpu_seconds: dict[str, float]
    """CPU seconds each process spent during the load (server, workers, this process's clients)."""


async def send(
    client: Client, settings: DurabertSettings, texts: list[str], args: argparse.Namespace
) -> BertInferenceResult:
    """One request through ``run_inference``, the path ``durabert infer`` takes."""
    from durabert.orchestrator.inference_ops import run_inference

    request = BertInferenceRequest(run_id=RUN_ID, texts=texts, max_seq_length=args.seq_len, use_gpu=False)
    return await run_inference(client, settings, request)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a live process so far, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Split after the command name (which may hold spaces): state, field 3 of the line, is index 0, so
    # utime (field 14) and stime (field 15) are indexes 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_pids(cluster: LoadCluster, server_pid: int) -> dict[str, int]:
    """Who shares the CPU during a load: the server, each worker, and this process (the clients)."""
    pids = {"server": server_pid, "clients": os.getpid()}
    for role, worker in cluster.workers.items():
        assert worker.process is not None
        pids[role] = worker.process.pid
    return pids


async def temporal_side(
    connections: list[Client],
    settings: DurabertSettings,
    requests: list[list[str]],
    pids: dict[str, int],
    args: argparse.Namespace,
) -> SideRun:
    """Each connection sends its requests one after the other; latencies, labels and CPU per process."""
    labels: list[list[str]] = [[] for _ in requests]
    latencies: list[float] = []
    failures: list[str] = []

    async def client_loop(index: int, connection: Client) -> None:
        for item in range(index, len(requests), len(connections)):
            sent = time.perf_counter()
            try:
                result = await send(connection, settings, requests[item], args)
            except Exception as exc:
                failures.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - sent)
            labels[item] = result.predicted_label_names

    # Warm-up, not counted: this route's first request (the model is loaded already).
    await send(connections[0], settings, requests[0], args)
    cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    began = time.perf_counter()
    await asyncio.gather(*(client_loop(index, connection) for index, connection in enumerate(connections)))
    load = InferenceLoad(latencies, failures, time.perf_counter() - began, len(connections))
    cpu = {role: cpu_seconds(pid) - cpu_before[role] for role, pid in pids.items()}
    return SideRun(load, labels, cpu)


def figures(run: SideRun, texts_per_request: int, pipeline_tps: float) -> dict[str, Any]:
    """texts/s, requests/s, p50/p99 in ms, failures, the ratio to the pipeline, CPU ms per text."""
    load = run.load
    summary = load.summary()
    texts = len(load.latencies) * texts_per_request
    texts_per_second = texts / load.seconds
    cpu = {
        f"cpu_ms_per_text_{role}": round(1000 * spent / texts, 2) for role, spent in run.cpu_seconds.items()
    }
    return cpu | {
        "texts_per_second": round(texts_per_second, 1),
        "requests_per_second": summary["throughput_per_second"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "failures": summary["failures"],
        "ratio_to_pipeline": round(texts_per_second / pipeline_tps, 3),
    }


def carried_env() -> dict[str, str]:
    """The caller's ``PYTHONPATH``, for the workers too: it may point at a frozen copy of the code.

    The code can be measured from a ``git archive`` of a commit (PYTHONPATH before the editable
    installs) while others edit the working tree: workflow code is imported again for every run.
    """
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


async def configure_gpu_worker(
    cluster: LoadCluster, side: Side, client: Client, texts: list[str], args: argparse.Namespace
) -> bool:
    """Restart the GPU worker when this side needs other settings; True when it did.

    A restarted worker gets one request (which loads the model) and ``--settle-seconds`` for its
    training forkserver to finish importing, so neither costs the next measurement CPU.
    """
    wanted = carried_env() | dict(side.worker_env)
    if "gpu" in cluster.workers and cluster.extra_env == wanted:
        return False
    if "gpu" in cluster.workers:
        cluster.stop_worker("gpu")
    cluster.extra_env = wanted
    cluster.start_worker("gpu")
    await send(client, client_settings(cluster, side.route), texts, args)
    await asyncio.sleep(args.settle_seconds)
    return True


def side_order(names: list[str], repeat: int) -> list[str]:
    """Forward in even repeats, backward in odd ones, so no side always runs first or last."""
    return names if repeat % 2 == 0 else names[::-1]


async def one_repeat(
    repeat: int,
    cluster: LoadCluster,
    server_pid: int,
    connections: list[Client],
    classify: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run every Temporal side once between two pipeline runs; its ratio is to their mean.

    The CPU a shared machine leaves to this benchmark drifts within minutes (pipeline texts/s
    moved by 2x between repeats in a first version that ran the pipeline once per repeat); a
    pipeline run right before and right after each side measures the machine that side had.
    """
    requests = request_texts(args)
    temporal = sides(args)
    pipelines: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for name in side_order(list(temporal), repeat):
        if (
            await configure_gpu_worker(cluster, temporal[name], connections[0], requests[0], args)
            or not pipelines
        ):
            pipelines.append(pipeline_side(classify, requests, args))
        before = pipelines[-1]["texts_per_second"]
        settings = client_settings(cluster, temporal[name].route)
        run = await temporal_side(connections, settings, requests, process_pids(cluster, server_pid), args)
        pipelines.append(pipeline_side(classify, requests, args))
        around = statistics.fmean([before, pipelines[-1]["texts_per_second"]])
        result[name] = figures(run, args.texts, around) | {
            "pipeline_texts_per_second_around": round(around, 1),
            "label_mismatches": mismatches(run.labels, pipelines[0]["labels"]),
        }
        print(f"repeat {repeat} {name}: {result[name]}", flush=True)
    result["pipeline"] = {
        "texts_per_second": round(statistics.median(p["texts_per_second"] for p in pipelines), 1),
        "runs": len(pipelines),
    }
    # The machine may be shared: its load says how far to trust this repeat.
    result["machine"] = {"load_average_1min": round(os.getloadavg()[0], 2)}
    return result


def mismatches(served: list[list[str]], expected: list[list[str]]) -> int:
    """Texts whose served label differs from the pipeline's (failed requests, with no labels, skipped)."""
    return sum(
        a != b
        for got, want in zip(served, expected, strict=True)
        if got
        for a, b in zip(got, want, strict=True)
    )


def medians(repeats: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of every figure of every side over the repeats."""
    return {
        side: {key: round(statistics.median(r[side][key] for r in repeats), 3) for key in repeats[0][side]}
        for side in repeats[0]
    }


def build_pipeline(folder: Path) -> Any:
    """The in-process pipeline on the published model folder, warmed by one call."""
    from transformers import pipeline

    classify = pipeline("text-classification", model=str(folder), device="cpu")
    classify(make_texts(32, seed=9)[0], batch_size=32, truncation=True)
    return classify


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from durabert.orchestrator.devserver import DevServer, free_port

    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="durabert-serving-") as folder:
        root = Path(folder)
        server = DevServer(root / "temporal", port=free_port())
        server_pid = server.start()
        cluster = LoadCluster(
            server.address,
            root,
            torch_threads=args.torch_threads,
            extra_env=carried_env(),
            roles=("orchestrator",),
        )
        try:
            publish_model(cluster.artifact_root, RUN_ID)
            classify = build_pipeline(cluster.artifact_root / "runs" / RUN_ID / "model")
            cluster.start()
            connections = list(
                await asyncio.gather(
                    *(
                        Client.connect(server.address, data_converter=pydantic_data_converter)
                        for _ in range(args.clients)
                    )
                )
            )
            repeats = [
                await one_repeat(r, cluster, server_pid, connections, classify, args)
                for r in range(args.repeat)
            ]
        finally:
            cluster.stop()
            server.stop()
    return {"args": vars(args), "median": medians(repeats), "repeats": repeats}


OPTIONS: list[tuple[str, type, float, str]] = [
    ("--repeat", int, 3, "repeats of every side (median reported)"),
    ("--clients", int, 20, "concurrent client connections"),
    ("--texts", int, 8, "texts per request"),
    ("--rounds", int, 5, "requests each client sends, one after the other"),
    ("--seq-len", int, 128, "max_seq_length of every request"),
    ("--pipeline-batch-size", int, 32, "batch size of the pipeline"),
    ("--max-batch-size", int, 32, "DURABERT_INFERENCE__MAX_BATCH_SIZE of the GPU worker"),
    ("--max-wait-ms", float, 5.0, "DURABERT_INFERENCE__MAX_WAIT_MS of the GPU worker"),
    ("--slots", int, 64, "DURABERT_INFERENCE__MAX_CONCURRENT_REQUESTS of the GPU worker"),
    ("--torch-threads", int, 1, "torch threads of the GPU worker and of the pipeline"),
    ("--settle-seconds", float, 10.0, "pause after a GPU worker restart (its forkserver imports)"),
]
"""Command-line options: name, type, default, help."""


def main() -> None:
    """Parse options, run, print the figures as JSON."""
    from durabert.shared.logging import configure_logging

    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for name, kind, default, help_text in OPTIONS:
        options.add_argument(name, type=kind, default=kind(default), help=help_text)
    args = options.parse_args()
    # This process's settings come from the options only: no DURABERT_* of the caller's shell.
    for variable in [variable for variable in os.environ if variable.startswith("DURABERT_")]:
        del os.environ[variable]
    configure_logging("console", "WARNING")
    # A plain kill would skip the clean-up and leave the server and workers running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(json.dumps(asyncio.run(_main(args)), indent=2))


if __name__ == "__main__":
    main()
