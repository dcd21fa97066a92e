"""Training throughput: the ``fine_tune_bert`` activity against a plain ``Trainer`` script.

Both train the same model on the same snapshot with the same settings (batch size, sequence
length, steps, checkpoint interval, seed). The activity runs as the worker runs it: a
training child process (forked from the warmed forkserver), events streamed back,
heartbeats, completion markers, rotation, the final model published atomically. The plain
script is what a user would write: load, tokenize, ``Trainer(...).train()``, save.

Reported: samples/s of the training loop (``global_step * batch_size / train seconds``) and
wall seconds end to end. Goal: the activity's loop at least 0.97 of the plain script's.

    .venv/bin/python bench/train_bench.py --model minilm --steps 40 --batch-size 16 --seq-len 64
"""

import argparse
import asyncio
import json
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from durabert.shared.models import (
    DEFAULT_MODEL_NAME,
    BertFineTuneConfig,
    BertFineTuneRequest,
    DatasetSnapshotResult,
)
from durabert.shared.settings import DurabertSettings
from support.snapshots import write_parquet_snapshot

POSITIVE = ["wonderful", "moving", "brilliant", "funny", "gripping", "lovely", "superb", "charming"]
NEGATIVE = ["dull", "clumsy", "boring", "tedious", "awful", "bland", "messy", "lifeless"]
NOUNS = ["film", "story", "cast", "script", "ending", "score", "pacing", "direction", "dialogue", "camera"]


def make_texts(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Review-like sentences of 20-40 words with balanced 0/1 labels."""
    rng = random.Random(seed)
    texts, labels = [], []
    for index in range(count):
        label = index % 2
        words = []
        for _ in range(rng.randint(4, 8)):
            word = rng.choice(POSITIVE if label else NEGATIVE)
            words.append(f"the {rng.choice(NOUNS)} was {word}")
        texts.append(" and ".join(words))
        labels.append(label)
    return texts, labels


def write_snapshot(root: Path, train_rows: int, eval_rows: int) -> DatasetSnapshotResult:
    """Write a snapshot in the data worker's layout under ``root``."""
    return write_parquet_snapshot(
        root,
        make_texts(train_rows, 1),
        make_texts(eval_rows, 2),
        snapshot_id="bench",
        text_field="text",
        dataset_name="parquet",
    )


def make_request(
    args: argparse.Namespace, snapshot: DatasetSnapshotResult, model_name: str
) -> BertFineTuneRequest:
    """The request both paths train with."""
    config = BertFineTuneConfig(
        dataset_name="parquet",
        data_files="unused",
        model_name=model_name,
        max_steps=args.steps,
        batch_size=args.batch_size,
        max_seq_length=args.seq_len,
        checkpoint_steps=args.checkpoint_steps,
        save_total_limit=2,
        learning_rate=5e-5,
        use_gpu=args.device != "cpu",
    )
    return BertFineTuneRequest(run_id="bench", config=config, dataset_snapshot=snapshot)


def plain_trainer(request: BertFineTuneRequest, root: Path, device: str, precision: str) -> dict[str, float]:
    """What a user would write without durabert: same model, data, arguments; no child, no markers."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from durabert.gpu_worker.model_source import resolve_model_source
    from durabert.shared.artifacts import ArtifactStore

    started = time.perf_counter()
    config = request.config
    source = resolve_model_source(config.model_name, ArtifactStore(root))
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    folder = root / "snapshots" / "bench"

    def load(name: str) -> Any:
        dataset = Dataset(pq.read_table(folder / f"{name}.parquet"))
        return dataset.map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=config.max_seq_length),
            batched=True,
            remove_columns=["text"],
        ).rename_column("label", "labels")

    out = root / "plain-run"
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(out),
            per_device_train_batch_size=config.batch_size,
            per_device_eval_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            max_steps=config.max_steps or -1,
            save_strategy="steps",
            save_steps=config.checkpoint_steps,
            save_total_limit=config.save_total_limit,
            logging_steps=max(1, config.checkpoint_steps // 5),
            report_to="none",
            disable_tqdm=True,
            seed=config.seed,
            use_cpu=device == "cpu",
            bf16=precision == "bf16",
            fp16=precision == "fp16",
        ),
        train_dataset=load("train"),
        eval_dataset=load("eval"),
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    loop_started = time.perf_counter()
    trainer.train()
    loop_seconds = time.perf_counter() - loop_started
    trainer.evaluate()
    trainer.save_model(str(out / "model"))
    steps = trainer.state.global_step
    return {
        "samples_per_s": steps * config.batch_size / loop_seconds,
        "loop_s": loop_seconds,
        "wall_s": time.perf_counter() - started,
    }


async def through_activity(request: BertFineTuneRequest, settings: DurabertSettings) -> dict[str, float]:
    """The real activity, as a worker runs it (outside Temporal: no signals to send)."""
    from temporalio.testing import ActivityEnvironment

    from durabert.gpu_worker.activities import GpuActivities

    activities = GpuActivities(settings)
    started = time.perf_counter()
    result = await ActivityEnvironment().run(activities.fine_tune_bert, request)
    wall = time.perf_counter() - started
    return {
        "samples_per_s": result.global_step * request.config.batch_size / result.training_time_seconds,
        "loop_s": result.training_time_seconds,
        "wall_s": wall,
    }


def warm_forkserver() -> None:
    """Start the training forkserver and wait for its imports, as a running worker has done."""
    from multiprocessing import forkserver

    from durabert.gpu_worker.supervisor import training_context

    training_context()
    forkserver.ensure_running()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both paths ``--repeat`` times, alternating, each in a fresh artifact root."""
    from durabert.gpu_worker.device import select_precision
    from support.tiny_model import save_tiny_bert

    warm_forkserver()
    work = Path(tempfile.mkdtemp(prefix="durabert-train-bench-"))
    model_name = DEFAULT_MODEL_NAME if args.model == "minilm" else str(save_tiny_bert(work / "tiny"))
    precision = select_precision(args.device)
    results: dict[str, list[dict[str, float]]] = {"activity": [], "plain": []}
    try:
        for index in range(args.repeat):
            for path in ("plain", "activity") if index % 2 == 0 else ("activity", "plain"):
                root = work / f"{path}-{index}"
                snapshot = write_snapshot(root, args.train_rows, args.eval_rows)
                request = make_request(args, snapshot, model_name)
                if path == "plain":
                    figures = plain_trainer(request, root, args.device, precision)
                else:
                    settings = DurabertSettings(
                        artifact_root=root,
                        data_dir=root / "data",
                        gpu={"device": args.device},
                        log_level="WARNING",
                    )
                    figures = asyncio.run(through_activity(request, settings))
                results[path].append(figures)
                print(path, {key: round(value, 3) for key, value in figures.items()}, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, Any] = {"args": vars(args), "precision": precision}
    for path, runs in results.items():
        summary[path] = {
            key: statistics.median(run[key] for run in runs) for key in ("samples_per_s", "loop_s", "wall_s")
        }
    summary["ratio_samples_per_s"] = summary["activity"]["samples_per_s"] / summary["plain"]["samples_per_s"]
    summary["ratio_wall"] = summary["plain"]["wall_s"] / summary["activity"]["wall_s"]
    return summary


def parser(defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """Command-line options (shared with the GPU benchmark)."""
    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--model", choices=["minilm", "tiny"], default="minilm")
    options.add_argument("--device", choices=["cpu", "cuda", "mps"], default="cpu")
    options.add_argument("--steps", type=int, default=40)
    options.add_argument("--batch-size", type=int, default=16)
    options.add_argument("--seq-len", type=int, default=64)
    options.add_argument("--checkpoint-steps", type=int, default=20)
    options.add_argument("--train-rows", type=int, default=2000)
    options.add_argument("--eval-rows", type=int, default=200)
    options.add_argument("--repeat", type=int, default=1)
    options.set_defaults(**(defaults or {}))
    return options


def main() -> None:
    """Run and print the summary as JSON."""
    from durabert.shared.logging import configure_logging

    configure_logging("console", "WARNING")
    print(json.dumps(run(parser().parse_args()), indent=2))


if __name__ == "__main__":
    main()
