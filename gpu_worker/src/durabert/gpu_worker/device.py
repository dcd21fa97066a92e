"""Choosing the device and the mixed precision a run uses.

Pure functions: the availability probes are passed in (defaulting to torch's), so the
choice is testable without a GPU and without importing torch at module import time.
"""

from collections.abc import Callable
from typing import Literal

from temporalio.exceptions import ApplicationError

from durabert.shared.errors import ErrorType, retryable_error

Device = Literal["cuda", "mps", "cpu"]
"""A device durabert trains or infers on."""
DevicePreference = Literal["auto", "cuda", "mps", "cpu"]
"""The worker's ``DURABERT_GPU__DEVICE`` setting."""
Precision = Literal["bf16", "fp16", "fp32"]
"""Numeric precision of training."""


def _unavailable(device: str) -> ApplicationError:
    return retryable_error(
        ErrorType.DEVICE_UNAVAILABLE,
        f"DURABERT_GPU__DEVICE is {device!r} but this worker has no such device (driver missing or the "
        "device is not visible to the container); the attempt is retried, maybe on another worker",
    )


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (the probe mocked in tests)."""
    import torch

    return bool(torch.cuda.is_available())


def mps_available() -> bool:
    """Whether torch sees an Apple MPS device (the probe mocked in tests)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cuda_bf16_supported() -> bool:
    """Whether the CUDA device computes in bfloat16 (Ampere and newer)."""
    import torch

    return bool(torch.cuda.is_bf16_supported())


def select_device(
    use_gpu: bool,
    preference: DevicePreference,
    *,
    has_cuda: Callable[[], bool] = cuda_available,
    has_mps: Callable[[], bool] = mps_available,
) -> Device:
    """Pick the device: CUDA, then Apple MPS, then CPU.

    Args:
        use_gpu: The request's wish; False forces CPU whatever the worker has.
        preference: The worker's setting: ``auto`` or one forced device.
        has_cuda: Probe for a CUDA device.
        has_mps: Probe for an Apple MPS device.

    Returns:
        The device to use.

    Raises:
        ApplicationError: ``DeviceUnavailableError`` (retried) when the worker is set to a device
            it lacks: a misconfigured node must not silently train a thousand times slower on CPU,
            and another worker may serve the attempt.
    """
    if not use_gpu or preference == "cpu":
        return "cpu"
    if preference == "cuda":
        if not has_cuda():
            raise _unavailable("cuda")
        return "cuda"
    if preference == "mps":
        if not has_mps():
            raise _unavailable("mps")
        return "mps"
    if has_cuda():
        return "cuda"
    if has_mps():
        return "mps"
    return "cpu"


def select_precision(device: Device, *, has_bf16: Callable[[], bool] = cuda_bf16_supported) -> Precision:
    """Pick mixed precision: bf16 on CUDA where supported, else fp16; full precision elsewhere.

    Args:
        device: The chosen device.
        has_bf16: Probe for bfloat16 support on the CUDA device.

    Returns:
        ``bf16``, ``fp16`` or ``fp32``.
    """
    if device != "cuda":
        # MPS autocast is not supported by the Trainer's mixed precision flags; CPU fp16 is slower.
        return "fp32"
    return "bf16" if has_bf16() else "fp16"
