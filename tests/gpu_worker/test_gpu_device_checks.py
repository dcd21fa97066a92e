"""No silent CPU fallback: a warning with the reason, the GPU checked before training, the device shown."""

import functools
import json
import threading
import warnings

import pytest
from gpu_helpers import make_request, write_snapshot
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker import device, preparation
from durabert.gpu_worker.attempt import TrainingAttempt
from durabert.gpu_worker.events import TrainJob
from durabert.gpu_worker.reporting import HeartbeatReporter, StallWatchdog
from durabert.gpu_worker.supervisor import TrainingChild
from durabert.gpu_worker.training import run_training
from durabert.shared.artifacts import ArtifactStore
from durabert.shared.logging import configure_logging
from durabert.shared.models import TrainingHeartbeat
from durabert.shared.settings import DurabertSettings


def no() -> bool:
    return False


def log_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_auto_falling_back_to_cpu_warns_once_with_the_reason(monkeypatch, capsys):
    configure_logging("json", "INFO")
    monkeypatch.setattr(device, "_warned_fallbacks", set())
    reason = functools.partial(str, "CUDA initialization failed: driver too old (found version 11040)")
    for _ in range(3):  # every inference call and attempt selects a device: one warning per cause
        assert device.select_device(True, "auto", has_cuda=no, has_mps=no, cuda_reason=reason) == "cpu"
    warned = [line for line in log_lines(capsys.readouterr().err) if line.get("level") == "warning"]
    assert len(warned) == 1
    assert warned[0]["reason"] == "CUDA initialization failed: driver too old (found version 11040)"
    assert "DURABERT_GPU__DEVICE=cuda" in warned[0]["event"]
    # Asked for CPU (use_gpu false, or the setting): nothing to warn about.
    monkeypatch.setattr(device, "_warned_fallbacks", set())
    device.select_device(False, "auto", has_cuda=no, has_mps=no, cuda_reason=reason)
    device.select_device(True, "cpu", has_cuda=no, has_mps=no, cuda_reason=reason)
    assert not [line for line in log_lines(capsys.readouterr().err) if line.get("level") == "warning"]


def test_the_reason_is_torchs_own_initialization_warning_or_what_the_build_shows(monkeypatch):
    import torch

    def broken_driver() -> bool:
        warnings.warn(
            "CUDA initialization: The NVIDIA driver on your system is too old", UserWarning, stacklevel=1
        )
        return False

    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(torch.cuda, "is_available", broken_driver)
    assert device.cuda_unavailable_reason() == (
        "CUDA initialization failed: CUDA initialization: The NVIDIA driver on your system is too old"
    )
    monkeypatch.setattr(torch.cuda, "is_available", no)

    def no_driver() -> None:
        raise RuntimeError("Found no NVIDIA driver on your system.")

    monkeypatch.setattr(torch.cuda, "init", no_driver)
    assert (
        device.cuda_unavailable_reason()
        == "CUDA initialization failed: Found no NVIDIA driver on your system."
    )
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "sees no CUDA device" in device.cuda_unavailable_reason()
    assert "CUDA_VISIBLE_DEVICES='' hides them" in device.cuda_unavailable_reason()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert device.cuda_unavailable_reason() == "this torch build has no CUDA support (a CPU-only wheel)"


def test_a_device_that_does_not_compute_is_unavailable_and_retried():
    def broken(target: str) -> None:
        raise RuntimeError("CUDA error: no CUDA-capable device is detected")

    with pytest.raises(ApplicationError) as info:
        device.check_device_usable("cuda", allocate=broken)
    assert info.value.type == "DeviceUnavailableError"
    assert not info.value.non_retryable
    assert "no CUDA-capable device is detected" in info.value.message
    device.check_device_usable("cpu", allocate=broken)  # CPU is never probed


def test_an_attempt_on_a_node_without_a_usable_gpu_fails_before_it_touches_the_run(
    tmp_path, tiny_model_dir, monkeypatch
):
    def broken(target: str) -> None:
        raise RuntimeError("CUDA driver initialization failed, you might not have a CUDA gpu.")

    monkeypatch.setattr(
        preparation, "check_device_usable", functools.partial(device.check_device_usable, allocate=broken)
    )
    settings = DurabertSettings(artifact_root=tmp_path, data_dir=tmp_path / "data", gpu={"device": "cuda"})
    job = TrainJob(
        request=make_request(tiny_model_dir, write_snapshot(tmp_path)), settings=settings, device="cuda"
    )
    with pytest.raises(ApplicationError) as info:
        run_training(job, lambda e: None, threading.Event())
    assert info.value.type == "DeviceUnavailableError"
    assert not info.value.non_retryable
    assert not ArtifactStore(tmp_path).run_dir("run-1").exists()  # another worker takes it over cleanly


def test_the_heartbeat_names_the_device(tmp_path, tiny_model_dir):
    settings = DurabertSettings(artifact_root=tmp_path, data_dir=tmp_path / "data")
    job = TrainJob(
        request=make_request(tiny_model_dir, write_snapshot(tmp_path)), settings=settings, device="cpu"
    )
    sent: list[dict] = []
    reporter = HeartbeatReporter("run-1", 1, heartbeat=lambda details: sent.append(details))
    TrainingAttempt(TrainingChild(job), reporter, StallWatchdog(600), stop_seconds=30)
    reporter.heartbeat()
    assert TrainingHeartbeat.model_validate(sent[0]).device == "cpu"
    # Before a device is known the field is left out, so older readers still accept the record.
    assert "device" not in TrainingHeartbeat(attempt=1).model_dump(mode="json")
