"""Inference latency: warm ``run_bert_inference``, the original design's load-per-call, a pipeline.

All three classify the same texts with the same model folder (all-MiniLM-L6-v2 with a
classification head, laid out as a finished run's ``runs/<run_id>/model``), on CPU:

- warm activity: ``run_bert_inference`` through ``ActivityEnvironment``; the first call
  (which loads the model) is excluded, as a worker serving requests has long paid it;
- seed: load tokenizer and model from the folder on every call, then predict (what the original design did);
- pipeline: ``transformers.pipeline("text-classification")`` built once, called with the same batch size.

    .venv/bin/python bench/inference_bench.py --repeat 5
"""

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from durabert.shared.models import BertInferenceRequest
from durabert.shared.settings import DurabertSettings
from train_bench import make_texts


def publish_model(root: Path, run_id: str) -> Path:
    """Write MiniLM with a 2-label head as a finished run's model folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from durabert.gpu_worker.model_folder import MODEL_MANIFEST
    from durabert.gpu_worker.model_source import packaged_minilm_path
    from durabert.shared.artifacts import ArtifactStore, write_json_atomic

    folder = ArtifactStore(root).model_dir(run_id)
    source = packaged_minilm_path()
    labels = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    write_json_atomic(folder / MODEL_MANIFEST, {"run_id": run_id})
    return folder


def seed_load_per_call(folder: Path, texts: list[str], batch_size: int, max_len: int) -> list[int]:
    """The original design's way: load everything, predict, throw it away."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ids: list[int] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = tokenizer(
                texts[start : start + batch_size],
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            ids.extend(model(**inputs).logits.argmax(-1).tolist())
    return ids


def timed(call: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Time the three approaches for each text count."""
    from temporalio.testing import ActivityEnvironment
    from transformers import pipeline

    from durabert.gpu_worker.activities import GpuActivities

    work = Path(tempfile.mkdtemp(prefix="durabert-infer-bench-"))
    try:
        folder = publish_model(work, "bench")
        activities = GpuActivities(DurabertSettings(artifact_root=work, data_dir=work / "data"))
        classify = pipeline("text-classification", model=str(folder), device="cpu")
        loop = asyncio.new_event_loop()
        summary: dict[str, Any] = {"args": vars(args), "results": {}}
        for count in args.counts:
            texts, _ = make_texts(count, seed=3)
            request = BertInferenceRequest(
                run_id="bench",
                texts=texts,
                batch_size=args.batch_size,
                max_seq_length=args.seq_len,
                use_gpu=False,
            )

            def warm(request: BertInferenceRequest = request) -> Any:
                return loop.run_until_complete(
                    ActivityEnvironment().run(activities.run_bert_inference, request)
                )

            warm()  # first call loads the model: excluded
            figures = {
                "warm_activity_s": timed(warm, args.repeat),
                "seed_load_per_call_s": timed(
                    lambda texts=texts: seed_load_per_call(folder, texts, args.batch_size, args.seq_len),
                    args.repeat,
                ),
                "pipeline_s": timed(
                    lambda texts=texts: classify(
                        texts, batch_size=args.batch_size, truncation=True, max_length=args.seq_len
                    ),
                    args.repeat,
                ),
            }
            figures["model_loads"] = activities.cache.loads
            summary["results"][str(count)] = figures
            print(count, {key: round(value, 4) for key, value in figures.items()}, flush=True)
        loop.close()
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse options, run, print JSON."""
    from durabert.shared.logging import configure_logging

    options = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--counts", type=int, nargs="+", default=[8, 256])
    options.add_argument("--batch-size", type=int, default=32)
    options.add_argument("--seq-len", type=int, default=128)
    options.add_argument("--repeat", type=int, default=5)
    configure_logging("console", "WARNING")
    print(json.dumps(run(options.parse_args()), indent=2))


if __name__ == "__main__":
    main()
