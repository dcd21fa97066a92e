"""Training on an object-store artifact root: samples/s against a local root, and a fresh worker's resume.

Two measurements, in one run, against a moto S3 server on loopback (``support.s3.S3Server``):

(a) **Training throughput.** The ``fine_tune_bert`` activity (as a worker runs it: a child forked
    from the warm forkserver, heartbeats, checkpoints published and rotated) trains the same model
    on the same snapshot twice per repeat, once with a local artifact root and once with an
    ``s3://`` root, alternating (local, s3, s3, local, ...), each repeat in a fresh root. With the
    s3 root each checkpoint is uploaded by the child's background uploader (one in flight); the
    training loop waits only when the next checkpoint is due before the last upload finished.
    Reported: samples/s of the training loop (``global_step * batch_size / train seconds``), wall
    seconds of the activity (the s3 side also waits for its last checkpoint's and the final
    model's uploads), and from the heartbeats: how long each upload took against the checkpoint
    interval, how long training waited for one, and seconds per step with and without an upload
    in flight. Goal: s3 / local samples/s at least 0.97.

(b) **Time to the first resumed step on a fresh worker.** A new Python process with an empty
    ``DURABERT_WORK_DIR`` starts as ``durabert-gpu-worker`` does (``build_spec``: imports, store
    access check, GPU activities, forkserver warm-up; no Temporal connection, so no poll latency),
    then runs the activity for a run whose checkpoints are only in the bucket (the run of the last
    s3 repeat of (a), asked for more steps). Timed from just before the process is spawned to the
    first optimizer step after the resume point (its heartbeat), split into worker start,
    snapshot and checkpoint downloads (the child's ``artifact downloaded`` log lines) and the rest.
    The attempt is then cancelled (it checkpoints and stops, as on a preemption).

moto is an in-process Python server in this benchmark's own process: it is fast on loopback but
takes CPU from the same cores as training, so read the ratios, not the absolute seconds.

    .venv/bin/python bench/store_train_bench.py --model minilm --steps 40 --checkpoint-steps 10 --repeat 3
    .venv/bin/python bench/store_train_bench.py --model tiny --steps 20 --checkpoint-steps 5 --repeat 1
"""

import time

PROCESS_STARTED = time.time()  # a resume probe's interpreter is up (before the heavy imports below)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

RUN_ID = "bench"


@dataclass
class Timeline:
    """Heartbeats of one activity, each with the wall time it arrived."""

    beats: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    child_cpu_s: float = 0.0
    """CPU seconds of the training child, as last read from ``/proc`` (Linux) at a heartbeat."""

    def record(self, *details: Any) -> None:
        if details and isinstance(details[0], dict):
            self.beats.append((time.time(), details[0]))
            self.child_cpu_s = max(self.child_cpu_s, process_cpu_seconds(details[0].get("pid")))

    def first(self, predicate: Any) -> float | None:
        return next((at for at, beat in self.beats if predicate(beat)), None)

    def step_times(self) -> dict[int, float]:
        """When each training step was first heard of (pulses and loss logs)."""
        seen: dict[int, float] = {}
        for at, beat in self.beats:
            if beat.get("phase") == "training" and beat.get("step"):
                seen.setdefault(int(beat["step"]), at)
        return seen

    def checkpoint_reports(self) -> dict[int, float]:
        """When each checkpoint was reported (with an s3 root: once it was complete in the store)."""
        reported: dict[int, float] = {}
        for at, beat in self.beats:
            latest = beat.get("latest_checkpoint")
            if latest:
                reported.setdefault(int(latest["step"]), at)
        return reported


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a live process (all its threads); 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- (a) throughput -------------------------------------------------------------------------


def upload_figures(timeline: Timeline, checkpoint_steps: int, resumed: int = 0) -> dict[str, float]:
    """Per-checkpoint save-to-report time, training's wait for uploads, s/step with and without one.

    A checkpoint ``c`` is saved right after step ``c`` is logged and reported once it is in the
    store; the next save (step ``c + checkpoint_steps``) waits for that report. So the wait is
    ``report(c) - logged(c + checkpoint_steps)`` when positive (the local side's save time,
    which has no wait, is the baseline: it reads about the same).
    """
    steps, reports = timeline.step_times(), timeline.checkpoint_reports()
    saves = [c for c in sorted(reports) if c > resumed and c in steps]
    save_to_report = [reports[c] - steps[c] for c in saves]
    waited = 0.0
    for c in saves:
        due = steps.get(c + checkpoint_steps)
        if due is not None:
            waited += max(0.0, reports[c] - due)
    in_flight = [(steps[c], reports[c]) for c in saves]
    busy: list[float] = []
    idle: list[float] = []
    ordered = sorted(steps.items())
    for (s0, t0), (s1, t1) in itertools.pairwise(ordered):
        if any(s0 <= c < s1 for c in reports):
            continue  # this interval holds a save (writing the checkpoint), not plain steps
        per_step = (t1 - t0) / (s1 - s0)
        overlaps = any(start < t1 and t0 < end for start, end in in_flight)
        (busy if overlaps else idle).append(per_step)
    return {
        "save_to_report_s": statistics.median(save_to_report) if save_to_report else 0.0,
        "waited_s": waited,
        "s_per_step_upload_in_flight": statistics.median(busy) if busy else float("nan"),
        "s_per_step_no_upload": statistics.median(idle) if idle else float("nan"),
    }


async def through_activity(request: Any, settings: Any) -> tuple[Any, Timeline, float]:
    """Run the real activity outside Temporal; its result, heartbeats and wall seconds."""
    from temporalio.testing import ActivityEnvironment

    from durabert.gpu_worker.activities import GpuActivities

    activities = GpuActivities(settings)
    timeline = Timeline()
    environment = ActivityEnvironment()
    environment.on_heartbeat = timeline.record
    started = time.perf_counter()
    result = await environment.run(activities.fine_tune_bert, request)
    return result, timeline, time.perf_counter() - started


def cpu_seconds() -> float:
    """CPU seconds of this process so far (with an s3 root, mostly moto serving the uploads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_once(args: argparse.Namespace, side: str, index: int, bench: "Bench") -> dict[str, float]:
    """One training run on ``side`` ("local" or "s3") in a fresh root; its figures."""
    from durabert.shared.object_store import ObjectStore
    from durabert.shared.settings import DurabertSettings
    from train_bench import make_request, write_snapshot

    folder = bench.work / f"{side}-{index}"
    snapshot = write_snapshot(folder, args.train_rows, args.eval_rows)
    if side == "local":
        root: str | Path = folder
    else:
        # The data worker's part: the snapshot is in the store before training starts.
        root = f"{bench.bucket}/{side}-{index}"
        ObjectStore(str(root)).upload_folder(folder / snapshot.snapshot_path, snapshot.snapshot_path)
        shutil.rmtree(folder / snapshot.snapshot_path)
    settings = DurabertSettings(
        artifact_root=root,
        work_dir=folder / "work",
        data_dir=folder / "data",
        gpu={"device": "cpu"},
        log_level="WARNING",
    )
    request = make_request(args, snapshot, bench.model_name)
    cpu_before = cpu_seconds()
    result, timeline, wall = asyncio.run(through_activity(request, settings))
    figures = {
        "samples_per_s": result.global_step * args.batch_size / result.training_time_seconds,
        "loop_s": result.training_time_seconds,
        "wall_s": wall,
        "child_cpu_s": timeline.child_cpu_s,
        "bench_process_cpu_s": cpu_seconds() - cpu_before,
        **upload_figures(timeline, args.checkpoint_steps),
    }
    shutil.rmtree(folder, ignore_errors=True)
    if side == "s3":
        if bench.resumable is not None:  # moto keeps objects in memory: keep only the newest run
            old_root, _ = bench.resumable
            ObjectStore(bench.bucket).delete_prefix(old_root.removeprefix(bench.bucket))
        bench.resumable = (str(root), request)
    return figures


def checkpoint_size(bench: "Bench") -> tuple[int, int]:
    """Files and bytes of the newest checkpoint of the last s3 run, as the store lists them."""
    from durabert.shared.object_store import ObjectStore

    assert bench.resumable is not None
    objects = ObjectStore(bench.resumable[0])
    names = objects.list_children(f"runs/{RUN_ID}/checkpoints")
    newest = max(names, key=lambda name: int(name.rsplit("-", 1)[1]))
    marker = objects.read_marker(f"runs/{RUN_ID}/checkpoints/{newest}")
    assert marker is not None
    return len(marker.files), sum(entry.size for entry in marker.files.values())


# -- (b) a fresh worker resuming ------------------------------------------------------------


def probe_main(spec_file: str) -> None:
    """In a new process: start as the GPU worker does, resume the run, stop after its first step."""
    spec = json.loads(Path(spec_file).read_text())
    marks: dict[str, float] = {"spawned": spec["spawned_at"], "interpreter_up": PROCESS_STARTED}
    from durabert.gpu_worker.supervisor import training_context
    from durabert.gpu_worker.worker import build_spec
    from durabert.shared.logging import configure_logging
    from durabert.shared.models import BertFineTuneRequest
    from durabert.shared.settings import DurabertSettings

    marks["imported"] = time.time()
    settings = DurabertSettings()  # from the environment, as the worker reads it
    configure_logging(settings.log_format, settings.log_level)
    worker = build_spec(settings)  # store access check, activities, forkserver warm-up started
    marks["worker_built"] = time.time()
    # A trivial child from the forkserver returns once the forkserver finished its imports
    # (torch, transformers): the worker is now as warm as it gets before a task arrives.
    child = training_context().Process(target=os.getpid)  # type: ignore[attr-defined]
    child.start()
    child.join()
    marks["forkserver_ready"] = time.time()
    request = BertFineTuneRequest.model_validate_json(spec["request"])
    marks.update(asyncio.run(resume_until_first_step(worker.activities[0], request)))
    print("PROBE " + json.dumps(marks), flush=True)


async def resume_until_first_step(fine_tune: Any, request: Any) -> dict[str, float]:
    """Run the activity until the first step after the resume point, then cancel it (a preemption)."""
    from temporalio.testing import ActivityEnvironment

    timeline = Timeline()
    environment = ActivityEnvironment()
    marks: dict[str, float] = {}

    def on_heartbeat(*details: Any) -> None:
        timeline.record(*details)
        beat = timeline.beats[-1][1] if timeline.beats else {}
        resumed = beat.get("resumed_from_step")
        if beat.get("phase") == "training" and resumed is not None and beat.get("step", 0) > resumed:
            marks.setdefault("first_step", time.time())
            marks["resumed_from_step"] = float(resumed)
            environment.cancel()

    environment.on_heartbeat = on_heartbeat
    marks["activity_started"] = time.time()
    with contextlib.suppress(asyncio.CancelledError):  # cancelled after the first step, as planned
        await environment.run(fine_tune, request)
    for name, phase in (("child_loading", "loading"), ("child_tokenizing", "tokenizing")):
        marks[name] = timeline.first(lambda beat, p=phase: beat.get("phase") == p) or float("nan")
    marks["child_training"] = timeline.first(lambda beat: beat.get("phase") == "training") or float("nan")
    return marks


def downloads_from_log(log_file: Path) -> dict[str, float]:
    """Seconds of the child's snapshot and checkpoint downloads, from its JSON log lines."""
    seconds = {"snapshot_download_s": 0.0, "checkpoint_download_s": 0.0}
    for line in log_file.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or entry.get("event") != "artifact downloaded":
            continue
        kind = "snapshot" if "/snapshots/" in entry.get("store", "") else "checkpoint"
        seconds[f"{kind}_download_s"] += float(entry.get("seconds", 0.0))
    return seconds


def resume_once(args: argparse.Namespace, index: int, bench: "Bench") -> dict[str, float]:
    """A fresh worker process (empty work dir) resumes the last s3 run; the split of its time."""
    assert bench.resumable is not None
    assert bench.server_env is not None
    root, request = bench.resumable
    probe_dir = bench.work / f"probe-{index}"
    probe_dir.mkdir()
    resumed = request.model_copy(
        update={"config": request.config.model_copy(update={"max_steps": args.steps * 100})}
    )
    env = {
        **os.environ,
        **bench.server_env,
        "DURABERT_ARTIFACT_ROOT": root,
        "DURABERT_WORK_DIR": str(probe_dir / "work"),  # empty: a new machine
        "DURABERT_DATA_DIR": str(probe_dir / "data"),
        "DURABERT_GPU__DEVICE": "cpu",
        "DURABERT_LOG_FORMAT": "json",
        "DURABERT_LOG_LEVEL": "INFO",
        "HF_HUB_OFFLINE": "1",
    }
    spec_file = probe_dir / "spec.json"
    log_file = probe_dir / "probe.log"
    spawned_at = time.time()
    spec_file.write_text(json.dumps({"spawned_at": spawned_at, "request": resumed.model_dump_json()}))
    with log_file.open("w") as log:
        done = subprocess.run(
            [sys.executable, __file__, "--resume-probe", str(spec_file)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            timeout=600,
            check=False,
        )
    line = next((text for text in done.stdout.splitlines() if text.startswith("PROBE ")), None)
    if line is None:
        raise RuntimeError(f"resume probe failed (exit {done.returncode}); see {log_file}:\n{done.stdout}")
    marks = json.loads(line.removeprefix("PROBE "))
    return split_resume(marks, downloads_from_log(log_file))


def split_resume(marks: dict[str, float], downloads: dict[str, float]) -> dict[str, float]:
    """Worker start, downloads and the rest, in seconds from the spawn; the first step's total."""
    total = marks["first_step"] - marks["spawned"]
    worker_start = marks["forkserver_ready"] - marks["spawned"]
    moved = downloads["snapshot_download_s"] + downloads["checkpoint_download_s"]
    prepare = marks["child_training"] - marks["child_loading"]
    return {
        "total_s": total,
        "worker_start_s": worker_start,
        "  interpreter_and_imports_s": marks["imported"] - marks["spawned"],
        "  store_check_activities_s": marks["worker_built"] - marks["imported"],
        "  forkserver_imports_s": marks["forkserver_ready"] - marks["worker_built"],
        "downloads_s": moved,
        "  snapshot_download_s": downloads["snapshot_download_s"],
        "  checkpoint_download_s": downloads["checkpoint_download_s"],
        "rest_s": total - worker_start - moved,
        "  activity_to_child_loading_s": marks["child_loading"] - marks["activity_started"],
        "  prepare_without_downloads_s": prepare - moved,
        "  trainer_resume_and_first_step_s": marks["first_step"] - marks["child_training"],
        "resumed_from_step": marks["resumed_from_step"],
    }


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Bench:
    """What the parts of one benchmark run share."""

    work: Path
    model_name: str
    bucket: str = ""
    server_env: dict[str, str] | None = None
    resumable: tuple[str, Any] | None = None
    """The last s3 run's artifact root and request: what the resume probes resume."""


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Throughput repeats (alternating sides), then resume probes; medians and ratios."""
    from durabert.shared.models import DEFAULT_MODEL_NAME
    from support.s3 import S3Server
    from support.tiny_model import save_tiny_bert
    from train_bench import warm_forkserver

    warm_forkserver()
    work = Path(tempfile.mkdtemp(prefix="durabert-store-train-bench-"))
    model_name = DEFAULT_MODEL_NAME if args.model == "minilm" else str(save_tiny_bert(work / "tiny"))
    bench = Bench(work=work, model_name=model_name)
    results: dict[str, list[dict[str, float]]] = {"local": [], "s3": []}
    probes: list[dict[str, float]] = []
    try:
        with S3Server() as server:
            bench.server_env = server.env()
            os.environ.update(bench.server_env)  # the training child takes the worker's AWS_* variables
            bench.bucket = server.new_bucket(f"bench-{uuid.uuid4().hex[:8]}")
            # Untimed: the first run in a process pays one-off costs (page cache, lazy imports).
            train_once(argparse.Namespace(**{**vars(args), "steps": 2}), "local", -1, bench)
            for index in range(args.repeat):
                for side in ("local", "s3") if index % 2 == 0 else ("s3", "local"):
                    figures = train_once(args, side, index, bench)
                    results[side].append(figures)
                    print(side, index, {key: round(value, 3) for key, value in figures.items()}, flush=True)
            files, size = checkpoint_size(bench)
            for index in range(args.resume_repeat):
                probe = resume_once(args, index, bench)
                probes.append(probe)
                print(
                    "resume",
                    index,
                    {key.strip(): round(value, 2) for key, value in probe.items()},
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {
        "args": vars(args),
        "checkpoint": {"files": files, "MiB": round(size / 2**20, 1)},
        "local": medians(results["local"]),
        "s3": medians(results["s3"]),
        "all_samples_per_s": {
            side: [round(r["samples_per_s"], 2) for r in runs] for side, runs in results.items()
        },
    }
    summary["ratio_samples_per_s"] = summary["s3"]["samples_per_s"] / summary["local"]["samples_per_s"]
    # Each repeat's own pair ran back to back: its ratio is less exposed to load that comes and goes.
    paired = [
        s3["samples_per_s"] / local["samples_per_s"]
        for s3, local in zip(results["s3"], results["local"], strict=True)
    ]
    summary["paired_ratios"] = [round(ratio, 3) for ratio in paired]
    summary["median_paired_ratio"] = statistics.median(paired)
    summary["ratio_wall"] = summary["local"]["wall_s"] / summary["s3"]["wall_s"]
    if probes:
        summary["resume"] = medians(probes)
        summary["all_resume_total_s"] = [round(p["total_s"], 2) for p in probes]
    return summary


def parser() -> argparse.ArgumentParser:
    """Command-line options (the training ones as ``train_bench``'s)."""
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    options.add_argument("--steps", type=int, default=40)
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--seq-len", type=int, default=64)
    options.add_argument("--checkpoint-steps", type=int, default=10)
    options.add_argument("--train-rows", type=int, default=2000)
    options.add_argument("--eval-rows", type=int, default=64)
    options.add_argument("--repeat", type=int, default=3, help="training runs per side")
    options.add_argument("--resume-repeat", type=int, default=3, help="fresh-worker resumes")
    options.add_argument("--resume-probe", help=argparse.SUPPRESS)  # internal: the probe process
    return options


def main() -> None:
    """Run and print the summary as JSON (or, with --resume-probe, be the probe process)."""
    args = parser().parse_args()
    if args.resume_probe:
        probe_main(args.resume_probe)
        return
    from durabert.shared.logging import configure_logging

    configure_logging("console", "WARNING")
    args.device = "cpu"  # train_bench.make_request reads it; the object-store side is about the store
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
