"""Choosing the device and the mixed precision a run uses.

Pure functions: the availability probes are passed in (defaulting to torch's), so the
choice is testable without a GPU and without importing torch at module import time.
``auto`` never falls back to CPU silently: the worker logs why no GPU was usable.
"""

import os
import warnings
from collections.abc import Callable
from typing import Literal

from temporalio.exceptions import ApplicationError

from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.logging import get_logger

log = get_logger(__name__)

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


def cuda_unavailable_reason() -> str:
    """Say why torch sees no usable CUDA device, as precisely as torch lets us know.

    Returns:
        torch's own initialization warning when it gave one (a driver too old, a failed
        ``cuInit``), else what this process's torch build and environment show.
    """
    import torch

    if torch.version.cuda is None:
        return "this torch build has no CUDA support (a CPU-only wheel)"
    # torch reports a broken driver as a UserWarning from is_available(), not as an error.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if caught:
        return f"CUDA initialization failed: {caught[0].message}"
    if available:
        return "CUDA is available"
    try:
        # Without a device this creates no context; it raises torch's own reason (no driver, ...).
        torch.cuda.init()
    except (RuntimeError, AssertionError) as exc:
        return f"CUDA initialization failed: {exc}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"torch (CUDA {torch.version.cuda}) sees no CUDA device: no NVIDIA driver or device in this "
        f"container, or CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'!r} hides them"
    )


_warned_fallbacks: set[str] = set()


def _warn_cpu_fallback(reason: Callable[[], str]) -> None:
    """Log, once per reason in this process, that ``auto`` falls back to CPU and why."""
    why = reason()
    if why not in _warned_fallbacks:
        _warned_fallbacks.add(why)
        log.warning(
            "no usable GPU: DURABERT_GPU__DEVICE=auto trains and infers on CPU, many times slower "
            "(set DURABERT_GPU__DEVICE=cuda to require a GPU)",
            reason=why,
        )


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
    cuda_reason: Callable[[], str] = cuda_unavailable_reason,
) -> Device:
    """Pick the device: CUDA, then Apple MPS, then CPU.

    Args:
        use_gpu: The request's wish; False forces CPU whatever the worker has.
        preference: The worker's setting: ``auto`` or one forced device.
        has_cuda: Probe for a CUDA device.
        has_mps: Probe for an Apple MPS device.
        cuda_reason: Says why CUDA is unusable, for the warning when ``auto`` falls back to CPU.

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
    _warn_cpu_fallback(cuda_reason)
    return "cpu"


def _allocate_on(device: Device) -> None:
    import torch

    torch.zeros(1, device=device).add_(1)
    if device == "cuda":
        torch.cuda.synchronize()


def check_device_usable(device: Device, *, allocate: Callable[[Device], None] = _allocate_on) -> None:
    """Make sure the chosen GPU computes, in the process that trains on it.

    torch can list a device whose driver or memory is broken; the first tensor then fails
    deep inside training with a bare ``RuntimeError``. Checked up front, the attempt fails as
    retryable ``DeviceUnavailableError`` before it touches the run folder, and moves on.

    Args:
        device: The device the worker chose.
        allocate: Puts a tensor on the device (mocked in tests).

    Raises:
        ApplicationError: ``DeviceUnavailableError`` (retried) when the device does not compute.
    """
    if device == "cpu":
        return
    try:
        allocate(device)
    except (RuntimeError, AssertionError) as exc:  # torch raises AssertionError for a build without it
        raise retryable_error(
            ErrorType.DEVICE_UNAVAILABLE,
            f"the {device} device of this worker is not usable ({type(exc).__name__}: {str(exc)[:300]}); "
            "the attempt is retried, maybe on another worker",
        ) from None


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
