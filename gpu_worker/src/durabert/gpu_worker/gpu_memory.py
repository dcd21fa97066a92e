"""How much GPU memory warm inference may hold, and when it gives memory back to training.

The GPU worker serves inference from its main process (warm models, a batcher) and trains in
child processes on the same device. Each process has its own PyTorch caching allocator, which
keeps the blocks a forward pass reserved after the pass ends: one large batch would otherwise
leave inference holding gigabytes that a training child on that GPU can never get back.

The policy, for a CUDA device (``"cuda"`` is torch's current device, the one ``.to("cuda")``
uses in the worker and in its training children):

* **A cap.** The first time inference uses the device in this process, the process's
  allocator is capped at ``DURABERT_INFERENCE__GPU_MEMORY_FRACTION`` of the device's memory
  (PyTorch's per-process memory fraction). Inference can never reserve more: a batch that
  would need more fails in inference with ``OutOfMemoryError`` instead of growing into the
  memory training needs. Training children are separate processes and are not capped.
* **A release while training runs.** While at least one training attempt runs on the device,
  the allocator's reserved-but-unused blocks are returned to the driver after every inference
  forward pass, so between batches inference holds little more than its weights; entering a
  training attempt releases once, before its child starts. When no training runs the blocks
  are kept: the next batch reuses them without asking the driver (the fast path).
* **Out of memory.** A forward pass (or a load) that hits the cap is retried once after a
  release; if it still does not fit, the request fails with a retryable
  ``DeviceUnavailableError`` that names the setting to change.

Why a cap and not moving models to the CPU while training runs: inference would become many
times slower exactly while training runs, and each move costs seconds per model at every
training boundary. A BERT's weights are small (bert-base: ~0.4 GiB in fp32); what grows is the
memory a large batch reserves, which the cap bounds and the release returns.

What the default 0.25 means: on a 24 GiB GPU inference may reserve at most 6 GiB (enough for
two warm bert-base models and batches of 32 long texts), leaving ~18 GiB to training; on an
80 GiB GPU, 20 GiB and ~60 GiB. The CUDA context of the worker process itself (a few hundred
MiB) lies outside any allocator cap and comes on top.

MPS (Apple silicon) and CPU: nothing is capped or released. CPU memory is the host's. On MPS
the memory is unified with the host and torch's MPS fraction is relative to Metal's
recommended working set rather than to a device's memory, so the same setting would mean
something else; MPS is a development target here, and the policy leaves it alone. Nothing in
this module touches ``torch.cuda`` for a device other than CUDA, nor before inference has
used the CUDA device (a release would otherwise create a CUDA context in the worker process
just to free nothing).
"""

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.device import Device
from durabert.shared.errors import ErrorType, retryable_error
from durabert.shared.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")

_GIB = 1024**3


class CudaMemory(Protocol):
    """The ``torch.cuda`` calls the policy needs, on torch's current CUDA device (faked in tests)."""

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        """Cap this process's caching allocator at ``fraction`` of the device's memory."""

    def empty_cache(self) -> None:
        """Return the allocator's reserved-but-unused blocks to the driver."""

    def memory_reserved(self) -> int:
        """Bytes this process's allocator holds on the device (in use or cached)."""

    def mem_get_info(self) -> tuple[int, int]:
        """Free and total bytes of the device, as the driver sees them."""


class TorchCudaMemory:
    """:class:`CudaMemory` on ``torch.cuda`` (imported on first call, so the worker starts without torch)."""

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        """Cap this process's caching allocator at ``fraction`` of the current device's memory."""
        import torch

        torch.cuda.set_per_process_memory_fraction(fraction)

    def empty_cache(self) -> None:
        """Return the allocator's reserved-but-unused blocks to the driver."""
        import torch

        torch.cuda.empty_cache()

    def memory_reserved(self) -> int:
        """Bytes this process's allocator holds on the current device."""
        import torch

        return int(torch.cuda.memory_reserved())

    def mem_get_info(self) -> tuple[int, int]:
        """Free and total bytes of the current device."""
        import torch

        free, total = torch.cuda.mem_get_info()
        return int(free), int(total)


class InferenceMemoryPolicy:
    """Bounds the GPU memory of inference in this process and gives it back while training runs.

    Safe to use from several threads: the batcher's thread calls :meth:`after_batch`, the event
    loop enters :meth:`training`.
    """

    def __init__(self, fraction: float, cuda: CudaMemory | None = None) -> None:
        """Create the policy; nothing touches the device until inference uses it.

        Args:
            fraction: Share of a CUDA device inference may hold
                (``settings.inference.gpu_memory_fraction``), in (0, 1].
            cuda: The CUDA memory calls; torch's by default.
        """
        if not 0 < fraction <= 1:
            raise ValueError(f"gpu memory fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        """Share of a CUDA device inference may hold."""
        self._cuda: CudaMemory = cuda if cuda is not None else TorchCudaMemory()
        self._lock = threading.Lock()
        self._capped: set[Device] = set()
        self._training: Counter[Device] = Counter()

    def before_inference(self, device: Device) -> None:
        """Cap this process's allocator on a CUDA device the first time inference uses it.

        Call it before a model is loaded onto ``device``. No-op for CPU and MPS, and after the first call.

        Args:
            device: The device inference is about to use.
        """
        if device != "cuda":
            return
        with self._lock:
            if device in self._capped:
                return
            self._cuda.set_per_process_memory_fraction(self.fraction)
            self._capped.add(device)
        _, total = self._cuda.mem_get_info()
        log.info(
            "capped inference GPU memory",
            device=device,
            fraction=self.fraction,
            cap_gib=round(total * self.fraction / _GIB, 2),
            device_gib=round(total / _GIB, 2),
        )

    def training_active(self, device: Device) -> bool:
        """Whether any training attempt of this worker runs on ``device`` now.

        Args:
            device: The device.

        Returns:
            True between entering and leaving :meth:`training` of at least one attempt.
        """
        with self._lock:
            return self._training[device] > 0

    @contextlib.contextmanager
    def training(self, device: Device) -> Iterator[None]:
        """Mark a training attempt on ``device`` for as long as the block runs.

        Entering releases inference's cached blocks at once, before the child starts; while any
        attempt is inside, :meth:`after_batch` releases after every forward pass. Attempts may
        overlap: the release stops when the last one leaves.

        Args:
            device: The device the attempt trains on.

        Yields:
            Nothing; wrap the attempt in it.
        """
        with self._lock:
            self._training[device] += 1
        try:
            self._release(device, "training starts")
            yield
        finally:
            with self._lock:
                self._training[device] -= 1

    def after_batch(self, device: Device) -> None:
        """Release inference's cached blocks after a forward pass, but only while training runs.

        Args:
            device: The device the pass ran on.
        """
        if self.training_active(device):
            self._release(device, "inference batch done during training", routine=True)

    def reserved_bytes(self, device: Device) -> int | None:
        """Bytes inference's allocator holds on ``device`` (a gauge for logs).

        Args:
            device: The device.

        Returns:
            The bytes, or None for a device the policy does not account (CPU, MPS, or CUDA
            before inference used it).
        """
        if not self._uses_cuda(device):
            return None
        return self._cuda.memory_reserved()

    def guarded(self, device: Device, work: Callable[[], T]) -> T:
        """Run a device step of inference (a load or a forward pass), retrying once if it hits the cap.

        Args:
            device: The device the step runs on.
            work: The step.

        Returns:
            What ``work`` returns.

        Raises:
            ApplicationError: ``DeviceUnavailableError`` (retryable) when the step does not fit
                in inference's share of the device even after a release.
        """
        if not self._uses_cuda(device):
            return work()
        import torch

        try:
            return work()
        except torch.OutOfMemoryError:
            pass  # leave the handler first: its traceback keeps the failed step's tensors alive
        self._release(device, "inference out of memory")
        try:
            return work()
        except torch.OutOfMemoryError as exc:
            raise self._out_of_memory(exc) from None

    def _out_of_memory(self, exc: BaseException) -> ApplicationError:
        _, total = self._cuda.mem_get_info()
        share = f"{total * self.fraction / _GIB:.1f} GiB of {total / _GIB:.1f} GiB"
        return retryable_error(
            ErrorType.DEVICE_UNAVAILABLE,
            "inference ran out of GPU memory within its share of the device "
            f"(DURABERT_INFERENCE__GPU_MEMORY_FRACTION={self.fraction}: {share}) even after releasing "
            "its cache; send fewer or shorter texts, lower DURABERT_INFERENCE__MAX_BATCH_SIZE or "
            "DURABERT_GPU__INFERENCE_CACHE_SIZE, or raise the fraction. The request is retried, maybe on "
            f"another worker ({str(exc).splitlines()[0][:200]})",
        )

    def _uses_cuda(self, device: Device) -> bool:
        """Whether inference has used this CUDA device, so torch.cuda calls on it cost no new context."""
        with self._lock:
            return device == "cuda" and device in self._capped

    def _release(self, device: Device, reason: str, *, routine: bool = False) -> None:
        """Return cached blocks; ``routine`` releases (one per batch during training) log at debug level."""
        if not self._uses_cuda(device):
            return
        self._cuda.empty_cache()
        report = log.debug if routine else log.info
        report(
            "released inference GPU cache",
            device=device,
            reason=reason,
            reserved_bytes=self._cuda.memory_reserved(),
        )
