"""The GPU-memory policy of warm inference, with only the CUDA memory calls faked (no GPU here)."""

import threading

import pytest
import torch
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.gpu_memory import InferenceMemoryPolicy

GIB = 1024**3


class FakeCudaMemory:
    """Records the calls a GPU would receive; a 24 GiB device holding ``reserved`` bytes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float | None]] = []
        self.reserved = 3 * GIB

    def set_per_process_memory_fraction(self, fraction: float) -> None:
        self.calls.append(("cap", fraction))

    def empty_cache(self) -> None:
        self.calls.append(("release", None))
        self.reserved = GIB  # what the warm weights keep

    def memory_reserved(self) -> int:
        return self.reserved

    def mem_get_info(self) -> tuple[int, int]:
        return 10 * GIB, 24 * GIB

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)


@pytest.fixture
def cuda() -> FakeCudaMemory:
    return FakeCudaMemory()


@pytest.fixture
def policy(cuda: FakeCudaMemory) -> InferenceMemoryPolicy:
    return InferenceMemoryPolicy(0.25, cuda)


def test_cap_is_set_once_per_process_on_cuda(policy, cuda):
    for _ in range(3):
        policy.before_inference("cuda")
    assert cuda.calls == [("cap", 0.25)]


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_cpu_and_mps_are_neither_capped_nor_released(policy, cuda, device):
    policy.before_inference(device)
    with policy.training(device):
        policy.after_batch(device)
    assert policy.reserved_bytes(device) is None
    assert cuda.calls == []


def test_training_before_any_inference_touches_no_cuda(policy, cuda):
    # A release would create a CUDA context in the worker process just to free nothing.
    with policy.training("cuda"):
        policy.after_batch("cuda")
    assert cuda.calls == []


def test_no_release_after_batches_while_no_training_runs(policy, cuda):
    policy.before_inference("cuda")
    for _ in range(3):
        policy.after_batch("cuda")
    assert cuda.count("release") == 0
    assert policy.reserved_bytes("cuda") == 3 * GIB  # the cache is kept: the fast path


def test_training_releases_at_start_and_after_each_batch_then_stops(policy, cuda):
    policy.before_inference("cuda")
    with policy.training("cuda"):
        assert cuda.count("release") == 1  # at once, before the child starts
        assert policy.reserved_bytes("cuda") == GIB
        policy.after_batch("cuda")
        policy.after_batch("cuda")
        assert cuda.count("release") == 3
    policy.after_batch("cuda")
    assert cuda.count("release") == 3
    assert not policy.training_active("cuda")


def test_training_on_cpu_does_not_release_cuda_inference(policy, cuda):
    policy.before_inference("cuda")
    with policy.training("cpu"):
        policy.after_batch("cuda")
    assert cuda.count("release") == 0


def test_overlapping_attempts_release_until_the_last_one_leaves(policy, cuda):
    policy.before_inference("cuda")
    first = policy.training("cuda")
    second = policy.training("cuda")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert policy.training_active("cuda")
    policy.after_batch("cuda")
    assert cuda.count("release") == 3  # two starts and one batch
    second.__exit__(None, None, None)
    assert not policy.training_active("cuda")


def test_a_failed_attempt_still_ends_the_training_state(policy):
    policy.before_inference("cuda")
    with pytest.raises(RuntimeError, match="child died"), policy.training("cuda"):
        raise RuntimeError("child died")
    assert not policy.training_active("cuda")


def test_attempts_from_many_threads_are_counted_right(policy):
    policy.before_inference("cuda")
    inside = threading.Barrier(8)

    def attempt() -> None:
        with policy.training("cuda"):
            inside.wait(timeout=10)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not policy.training_active("cuda")


def out_of_memory_until(successes_after: int):
    """A step that raises CUDA's out-of-memory error on its first ``successes_after`` calls."""
    calls = []

    def step() -> str:
        calls.append(1)
        if len(calls) <= successes_after:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "logits"

    return step, calls


def test_out_of_memory_releases_and_retries_once(policy, cuda):
    policy.before_inference("cuda")
    step, calls = out_of_memory_until(1)
    assert policy.guarded("cuda", step) == "logits"
    assert len(calls) == 2
    assert cuda.count("release") == 1


def test_out_of_memory_twice_fails_with_a_clear_retryable_error(policy, cuda):
    policy.before_inference("cuda")
    step, calls = out_of_memory_until(2)
    with pytest.raises(ApplicationError) as info:
        policy.guarded("cuda", step)
    assert len(calls) == 2
    assert cuda.count("release") == 1
    assert info.value.type == "DeviceUnavailableError"
    assert not info.value.non_retryable
    assert "DURABERT_INFERENCE__GPU_MEMORY_FRACTION=0.25" in info.value.message
    assert "6.0 GiB of 24.0 GiB" in info.value.message


def test_other_errors_are_not_retried(policy, cuda):
    policy.before_inference("cuda")
    calls = []

    def broken() -> None:
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        policy.guarded("cuda", broken)
    assert len(calls) == 1
    assert cuda.calls == [("cap", 0.25)]


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_a_fraction_outside_0_to_1_is_refused(fraction):
    with pytest.raises(ValueError, match="fraction"):
        InferenceMemoryPolicy(fraction, FakeCudaMemory())


def test_real_torch_on_cpu_never_touches_torch_cuda(monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("torch.cuda was called for a CPU device")

    for name in ("set_per_process_memory_fraction", "empty_cache", "memory_reserved", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, forbidden)
    policy = InferenceMemoryPolicy(0.25)  # torch's own CUDA calls
    layer = torch.nn.Linear(4, 2)
    policy.before_inference("cpu")
    with policy.training("cpu"), torch.inference_mode():
        logits = policy.guarded("cpu", lambda: layer(torch.ones(3, 4)))
        policy.after_batch("cpu")
    assert logits.shape == (3, 2)
    assert policy.reserved_bytes("cpu") is None
