"""The orchestrator and data worker stay free of heavy ML libraries.

``make test`` also runs this file inside each role's own environment
(``uv run --exact --package ...``), where torch is not even installed.
"""

import importlib
import importlib.util
import inspect
import json
import pkgutil
import signal
import subprocess
import sys
from pathlib import Path

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


def _walk_in_fresh_interpreter(package_name: str, watched: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Import every module of a package with :func:`_import_all`, in a new interpreter.

    A fresh interpreter, because the suite's own process may have imported torch for other
    tests. The walker's own source is what runs there, so the guard below tests this path.

    Returns:
        The modules walked, and which of ``watched`` ended up in ``sys.modules``.
    """
    code = (
        "import importlib, json, pkgutil, sys\n\n"
        + inspect.getsource(_import_all)
        + f"\nwalked = _import_all({package_name!r})\n"
        + f"print(json.dumps([walked, sorted(m for m in {watched!r} if m in sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    walked, found = json.loads(result.stdout.strip().splitlines()[-1])
    return walked, found


@pytest.mark.parametrize("package_name", sorted(FORBIDDEN))
def test_role_imports_no_ml_library(package_name: str) -> None:
    walked, bad = _walk_in_fresh_interpreter(package_name, FORBIDDEN[package_name])
    assert f"{package_name}.worker" in walked
    assert bad == [], f"{package_name} imported {', '.join(bad)}"


@pytest.mark.parametrize("package_name", sorted(FORBIDDEN))
def test_the_walk_reaches_every_module_and_sees_what_they_import(package_name: str) -> None:
    # Guards the check above with the same code path: the walk must reach every module file
    # of the package, and a library the role does import (temporalio) must be reported.
    walked, found = _walk_in_fresh_interpreter(package_name, ("temporalio", "durabert_no_such_module"))
    spec = importlib.util.find_spec(package_name)
    assert spec is not None
    assert spec.submodule_search_locations is not None
    folder = Path(next(iter(spec.submodule_search_locations)))
    on_disk = {
        ".".join([package_name, *path.relative_to(folder).with_suffix("").parts]).removesuffix(".__init__")
        for path in folder.rglob("*.py")
    }
    assert on_disk <= set(walked)
    assert found == ["temporalio"]


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
