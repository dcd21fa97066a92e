"""Device and precision selection with only the availability probes mocked."""

import pytest
from temporalio.exceptions import ApplicationError

from durabert.gpu_worker.device import select_device, select_precision


def yes() -> bool:
    return True


def no() -> bool:
    return False


@pytest.mark.parametrize(
    ("use_gpu", "preference", "cuda", "mps", "expected"),
    [
        (True, "auto", yes, yes, "cuda"),
        (True, "auto", no, yes, "mps"),
        (True, "auto", no, no, "cpu"),
        (False, "auto", yes, yes, "cpu"),
        (True, "cpu", yes, yes, "cpu"),
        (True, "mps", yes, yes, "mps"),
        (True, "cuda", yes, no, "cuda"),
    ],
)
def test_device_order_cuda_then_mps_then_cpu(use_gpu, preference, cuda, mps, expected):
    assert select_device(use_gpu, preference, has_cuda=cuda, has_mps=mps) == expected


@pytest.mark.parametrize("preference", ["cuda", "mps"])
def test_forced_device_that_is_missing_fails_retryably(preference):
    with pytest.raises(ApplicationError) as info:
        select_device(True, preference, has_cuda=no, has_mps=no)
    assert info.value.type == "DeviceUnavailableError"
    assert not info.value.non_retryable
    assert "DURABERT_GPU__DEVICE" in info.value.message


def test_real_probes_on_this_machine_pick_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device(True, "auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device(True, "auto") == "cuda"


def test_precision_bf16_on_capable_cuda_else_fp16_and_full_elsewhere():
    assert select_precision("cuda", has_bf16=yes) == "bf16"
    assert select_precision("cuda", has_bf16=no) == "fp16"
    assert select_precision("cpu", has_bf16=yes) == "fp32"
    assert select_precision("mps", has_bf16=yes) == "fp32"
