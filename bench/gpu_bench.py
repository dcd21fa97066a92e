"""GPU training throughput: MiniLM on CUDA with bf16, the activity against a plain ``Trainer`` script.

One command on a machine with a CUDA GPU (from the repository root, after ``uv sync``):

    .venv/bin/python bench/gpu_bench.py

Defaults: all-MiniLM-L6-v2, 300 steps, batch 32, sequence length 128, a checkpoint every 100
steps, 3 alternating repeats. It prints JSON with the GPU's name, samples/s of both paths
and their ratio (goal: the activity at least 0.97 of the plain script).
"""

import json
import sys

from train_bench import parser, run


def main() -> None:
    """Check for CUDA, run the training benchmark on it and print the summary with the GPU's name."""
    import torch

    from durabert.gpu_worker.device import select_precision
    from durabert.shared.logging import configure_logging

    if not torch.cuda.is_available():
        sys.exit("gpu_bench.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    configure_logging("console", "WARNING")
    args = parser(
        {
            "model": "minilm",
            "device": "cuda",
            "steps": 300,
            "batch_size": 32,
            "seq_len": 128,
            "checkpoint_steps": 100,
            "train_rows": 12000,
            "repeat": 3,
        }
    ).parse_args()
    summary = run(args)
    summary["gpu"] = torch.cuda.get_device_name(0)
    summary["precision_expected"] = select_precision("cuda")
    summary["torch"] = torch.__version__
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
