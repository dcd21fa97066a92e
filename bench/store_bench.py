"""Object-store transfers: ``ObjectStore.upload_folder``/``download_folder`` against plain boto3.

A checkpoint-shaped folder (the files and sizes of an all-MiniLM-L6-v2 ``Trainer``
checkpoint: an 87 MB ``model.safetensors``, a smaller ``optimizer.pt``, the RNG/scheduler
state and a few JSON files; random bytes) goes up and comes back from a moto S3 server on
loopback (``support.s3.S3Server``), once through durabert and once through boto3's
``upload_file``/``download_file`` of the same files. The two sides alternate, each repeat
into fresh keys and folders; medians are reported.

* ours: SHA-256 of every file, the upload, then the completion marker (upload); the marker
  read, the download into a hidden folder, the size and SHA-256 check against the marker and
  the swap into place (download).
* plain: boto3's managed transfers (multipart, threads) of the same files, no checks.

moto is an in-process Python server, so it is the bottleneck and the absolute figures are a
lower bound of what a real S3 endpoint gives; the ratio is the part to read.

Usage::

    .venv/bin/python bench/store_bench.py [--repeat 5] [--model-mb 87]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from durabert.shared.object_store import ObjectStore, describe_folder
from support.s3 import S3Server

SMALL_FILES = {
    "config.json": 700,
    "trainer_state.json": 4_000,
    "training_args.bin": 5_400,
    "rng_state.pth": 14_000,
    "scheduler.pt": 1_100,
    "tokenizer.json": 700_000,
    "tokenizer_config.json": 1_300,
    "special_tokens_map.json": 700,
    "vocab.txt": 230_000,
}


def write_checkpoint(folder: Path, model_mb: int, optimizer_mb: int) -> int:
    """Random bytes in a MiniLM checkpoint's files; returns the total size."""
    folder.mkdir(parents=True)
    sizes = {"model.safetensors": model_mb << 20, "optimizer.pt": optimizer_mb << 20, **SMALL_FILES}
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    return sum(sizes.values())


def timed(work: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def plain_upload(client: Any, bucket: str, folder: Path, prefix: str) -> None:
    """boto3's managed upload of every file."""
    for path in sorted(folder.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def plain_download(client: Any, bucket: str, names: list[str], prefix: str, folder: Path) -> None:
    """boto3's managed download of every file."""
    folder.mkdir(parents=True)
    for name in names:
        client.download_file(bucket, f"{prefix}/{name}", str(folder / name))


def main() -> None:
    """Run the comparison and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model-mb", type=int, default=87)
    parser.add_argument("--optimizer-mb", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    with S3Server() as server:
        os.environ.update(server.env())
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        root = server.new_bucket(bucket)
        store = ObjectStore(root, retry_seconds=60)
        client = server.client()
        source = work / "checkpoint-500"
        total = write_checkpoint(source, args.model_mb, args.optimizer_mb)
        names = sorted(describe_folder(source))
        times: dict[str, list[float]] = {"ours up": [], "plain up": [], "ours down": [], "plain down": []}
        for repeat in range(args.repeat):
            sides = ["ours", "plain"] if repeat % 2 == 0 else ["plain", "ours"]
            for side in sides:
                prefix = f"{side}/{repeat}"
                if side == "ours":
                    times["ours up"].append(timed(lambda p=prefix: store.upload_folder(source, p)))
                    target = work / f"ours-{repeat}"
                    times["ours down"].append(timed(lambda p=prefix, t=target: store.download_folder(p, t)))
                else:
                    times["plain up"].append(timed(lambda p=prefix: plain_upload(client, bucket, source, p)))
                    target = work / f"plain-{repeat}"
                    times["plain down"].append(
                        timed(lambda p=prefix, t=target: plain_download(client, bucket, names, p, t))
                    )
                shutil.rmtree(target)
    shutil.rmtree(work)

    megabytes = total / 2**20
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"checkpoint: {len(names)} files, {megabytes:.1f} MiB; {args.repeat} repeats, medians\n")
    print("| transfer | ours s | ours MiB/s | plain boto3 s | plain MiB/s | ours / plain time |")
    print("| --- | --- | --- | --- | --- | --- |")
    for direction, label in (("up", "upload"), ("down", "download")):
        ours, plain = medians[f"ours {direction}"], medians[f"plain {direction}"]
        print(
            f"| {label} | {ours:.2f} | {megabytes / ours:.0f} | {plain:.2f} | {megabytes / plain:.0f} "
            f"| {ours / plain:.2f} |"
        )
    print("\nall runs (s):", {name: [round(value, 2) for value in values] for name, values in times.items()})


if __name__ == "__main__":
    main()
