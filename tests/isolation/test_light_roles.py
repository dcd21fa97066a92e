"""The orchestrator and data worker stay free of heavy ML libraries.

``make test`` also runs this file inside each role's own environment
(``uv run --exact --package ...``), where torch is not even installed.
"""

import importlib
import pkgutil
import signal
import subprocess
import sys

import pytest

from support.processes import WorkerProcess

FORBIDDEN = {
    "durabert.orchestrator": ("torch", "transformers", "datasets"),
    "durabert.data_worker": ("torch", "transformers"),
}


def _import_all(package_name: str) -> list[str]:
    package = importlib.import_module(package_name)
    names = [package_name]
    for info in pkgutil.walk_packages(package.__path__, prefix=package_name + "."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names


@pytest.mark.parametrize("package_name", sorted(FORBIDDEN))
def test_role_imports_no_ml_library(package_name: str) -> None:
    # A fresh interpreter: the suite's own process may have imported torch for other tests.
    code = (
        "import sys, importlib, pkgutil\n"
        f"p = importlib.import_module({package_name!r})\n"
        "for i in pkgutil.walk_packages(p.__path__, prefix=p.__name__ + '.'):\n"
        "    importlib.import_module(i.name)\n"
        f"bad = sorted(m for m in {FORBIDDEN[package_name]!r} if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "", f"{package_name} imported {result.stdout.strip()}"


@pytest.mark.parametrize(
    "script", ["durabert-orchestrator-worker", "durabert-data-worker"], ids=["orchestrator", "data"]
)
def test_light_worker_starts_and_drains_on_sigterm(script: str, worker_env: dict[str, str]) -> None:
    worker = WorkerProcess(script, worker_env)
    try:
        worker.start()
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert any(line.get("event") == "worker stopped" for line in worker.lines)
    finally:
        worker.stop()


def test_import_all_lists_modules() -> None:
    # Guards the walker used above: it must see the orchestrator's worker module.
    assert "durabert.orchestrator.worker" in _import_all("durabert.orchestrator")
