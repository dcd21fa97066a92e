"""The kustomize overlays render, validate strictly against two Kubernetes versions, and say true things.

``kubectl kustomize`` renders each overlay; every object is validated with kubernetes-validate
in strict mode (unknown fields rejected) against 1.29 and the newest version it ships; the
semantic checks in deploy_helpers then read the rendered YAML. Each kind of check is also
run on a deliberately broken copy, to prove it can fail.
"""

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from deploy_helpers import (
    CRD_KINDS,
    INFERENCE_QUEUE_SETTING,
    OVERLAYS,
    ROLES,
    Objects,
    all_problems,
    find,
    mutable,
    pod_settings,
    pod_spec,
    rendered,
    role_deployment,
    worker_container,
)
from kubernetes_validate.utils import latest_version

from durabert.shared import names

VERSIONS = ("1.29.0", latest_version())
EXPECT_GPU = {"local": False, "production": True, "keda": True, "object-store": True}


def validate_strict(objects: Objects, version: str) -> list[str]:
    """Validate every built-in object strictly; return one line per failure."""
    failures = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue  # no schema shipped; check_keda covers them
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            failures.append(f"{obj['kind']}/{obj['metadata']['name']} {path}: {exc.message}")
    return failures


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_all_roles(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = {obj["kind"] for obj in objects}
    assert {"Namespace", "ConfigMap", "Deployment", "PodDisruptionBudget"} <= kinds
    # A shared volume, or (object-store) none at all and MinIO with the Job that makes its bucket.
    if overlay == "object-store":
        assert "PersistentVolumeClaim" not in kinds
        assert {"StatefulSet", "Service", "Job"} <= kinds
    else:
        assert "PersistentVolumeClaim" in kinds
    assert {d["metadata"]["name"] for d in objects if d["kind"] == "Deployment"} == {
        role.deployment for role in ROLES.values()
    }
    if overlay == "keda":
        assert kinds >= CRD_KINDS


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str, version: str) -> None:
    assert validate_strict(list(rendered(overlay)), version) == []


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(obj: dict[str, Any]) -> None:
        target = obj
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


BROKEN_SCHEMA = {
    "unknown field": _set(("spec", "replicaz"), 2),
    "wrong type": _set(("spec", "template", "spec", "terminationGracePeriodSeconds"), "sixty"),
    "string port": _set(("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"), "8081"),
    "misspelled probe field": _set(
        ("spec", "template", "spec", "containers", 0, "livenessProbe", "httpGett"), {}
    ),
}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("breakage", sorted(BROKEN_SCHEMA))
def test_broken_manifest_fails_validation(breakage: str, version: str) -> None:
    objects = mutable("production")
    BROKEN_SCHEMA[breakage](find(objects, "Deployment", "durabert-data-worker"))
    failures = validate_strict(objects, version)
    assert len(failures) == 1
    assert failures[0].startswith("Deployment/durabert-data-worker")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_semantics(overlay: str) -> None:
    assert all_problems(list(rendered(overlay)), expect_gpu=EXPECT_GPU[overlay]) == []


def _typo_in_configmap(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["DURABERT_TEMPORAL__ADRESS"] = "x:7233"


def _typo_in_env(objects: Objects) -> None:
    worker_container(role_deployment(objects, "gpu"))["env"].append(
        {"name": "DURABERT_GPU__DEVISE", "value": "cuda"}
    )


def _bad_value(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["DURABERT_TEMPORAL__ADDRESS"] = "no-port"


def _wrong_script(objects: Objects) -> None:
    worker_container(role_deployment(objects, "data"))["command"] = [ROLES["orchestrator"].script]


def _wrong_queue(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["DURABERT_QUEUES__GPU"] = "data-queue"


def _short_grace(objects: Objects) -> None:
    pod_spec(role_deployment(objects, "gpu"))["terminationGracePeriodSeconds"] = 120


def _root(objects: Objects) -> None:
    pod_spec(role_deployment(objects, "orchestrator"))["securityContext"]["runAsUser"] = 0


def _writable_root(objects: Objects) -> None:
    worker_container(role_deployment(objects, "data"))["securityContext"]["readOnlyRootFilesystem"] = False


def _moved_mount(objects: Objects) -> None:
    for mount in worker_container(role_deployment(objects, "gpu"))["volumeMounts"]:
        if mount["name"] == "artifacts":
            mount["mountPath"] = "/artifacts"


def _gpu_on_data(objects: Objects) -> None:
    worker_container(role_deployment(objects, "data"))["resources"]["limits"]["nvidia.com/gpu"] = 1


def _probe_port(objects: Objects) -> None:
    worker_container(role_deployment(objects, "orchestrator"))["readinessProbe"]["httpGet"]["port"] = 9464


def _replicas_under_hpa(objects: Objects) -> None:
    role_deployment(objects, "data")["spec"]["replicas"] = 3


def _keda_queue(objects: Objects) -> None:
    next(o for o in objects if o["kind"] == "ScaledObject")["spec"]["triggers"][0]["metadata"][
        "taskQueue"
    ] = "x"


def _keda_inference_queue(objects: Objects) -> None:
    # The second trigger watches the training queue again: inference backlogs would add no worker.
    next(o for o in objects if o["kind"] == "ScaledObject")["spec"]["triggers"][1]["metadata"][
        "taskQueue"
    ] = names.GPU_QUEUE


def _inference_on_training_queue(objects: Objects) -> None:
    # Inference requests would then queue behind fine-tunes for the one training slot.
    worker_container(role_deployment(objects, "gpu"))["env"].append(
        {"name": INFERENCE_QUEUE_SETTING, "value": names.GPU_QUEUE}
    )


def _keda_workflow_queue(objects: Objects) -> None:
    next(o for o in objects if o["kind"] == "ScaledObject")["spec"]["triggers"][0]["metadata"][
        "queueTypes"
    ] = "workflow"


def _service_links(objects: Objects) -> None:
    pod_spec(role_deployment(objects, "gpu"))["enableServiceLinks"] = True


def _set_env(objects: Objects, key: str, name: str, value: str) -> None:
    for item in worker_container(role_deployment(objects, key))["env"]:
        if item["name"] == name:
            item["value"] = value


def _orchestrator_mounts_artifacts(objects: Objects) -> None:
    spec = pod_spec(role_deployment(objects, "orchestrator"))
    spec["volumes"].append(
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "durabert-artifacts"}}
    )
    worker_container(role_deployment(objects, "orchestrator"))["volumeMounts"].append(
        {"name": "artifacts", "mountPath": "/var/lib/durabert"}
    )


def _ingress_from_anywhere(objects: Objects) -> None:
    del find(objects, "NetworkPolicy", "durabert-workers")["spec"]["ingress"][0]["from"]


def _ingress_from_another_namespace(objects: Objects) -> None:
    rule = find(objects, "NetworkPolicy", "durabert-workers")["spec"]["ingress"][0]
    rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] = "default"


def _ingress_on_another_port(objects: Objects) -> None:
    find(objects, "NetworkPolicy", "durabert-workers")["spec"]["ingress"][0]["ports"].append({"port": 8233})


def _grace_not_copied(objects: Objects) -> None:
    _set_env(objects, "gpu", "DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS", "300")


def _gpu_grace_too_short_for_a_checkpoint(objects: Objects) -> None:
    pod_spec(role_deployment(objects, "gpu"))["terminationGracePeriodSeconds"] = 60
    _set_env(objects, "gpu", "DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS", "60")


def _auto_device_on_gpu_nodes(objects: Objects) -> None:
    _set_env(objects, "gpu", "DURABERT_GPU__DEVICE", "auto")


BROKEN_SEMANTICS: dict[str, tuple[str, Callable[[Objects], None], str]] = {
    "typo in ConfigMap": (
        "production",
        _typo_in_configmap,
        "DURABERT_TEMPORAL__ADRESS is not a durabert setting",
    ),
    "typo in env": ("production", _typo_in_env, "DURABERT_GPU__DEVISE is not a durabert setting"),
    "bad value": ("local", _bad_value, "settings do not parse"),
    "wrong script": ("production", _wrong_script, "expected ['durabert-data-worker']"),
    "wrong queue": ("production", _wrong_queue, "polls 'data-queue', expected 'gpu-queue'"),
    "short grace": ("production", _short_grace, "terminationGracePeriodSeconds 120"),
    "root": ("production", _root, "runs as root"),
    "writable root": ("local", _writable_root, "root filesystem must be read-only"),
    "moved mount": ("production", _moved_mount, "mounted at different paths"),
    "GPU on data worker": ("production", _gpu_on_data, "asks for 1 GPU in limits"),
    "probe port": ("production", _probe_port, "readinessProbe"),
    "replicas under HPA": ("production", _replicas_under_hpa, "sets replicas although"),
    "KEDA queue": ("keda", _keda_queue, "scaler watches 'x'"),
    "KEDA workflow queue": ("keda", _keda_workflow_queue, "queueTypes must include activity"),
    "KEDA inference queue": ("keda", _keda_inference_queue, "no scaler trigger watches 'inference-queue'"),
    "inference on the training queue": (
        "production",
        _inference_on_training_queue,
        "DURABERT_QUEUES__INFERENCE is DURABERT_QUEUES__GPU's queue 'gpu-queue'",
    ),
    "service links": ("local", _service_links, "service links"),
    "orchestrator mounts artifacts": (
        "production",
        _orchestrator_mounts_artifacts,
        "mounts durabert-artifacts, which workflows never read",
    ),
    "ingress from anywhere": ("production", _ingress_from_anywhere, "lets every pod and address in"),
    "ingress from another namespace": ("local", _ingress_from_another_namespace, "not only the monitoring"),
    "ingress on another port": (
        "production",
        _ingress_on_another_port,
        "opens ports ['8081', '8233', '9464']",
    ),
    "grace period not copied": (
        "keda",
        _grace_not_copied,
        "terminationGracePeriodSeconds 180 differs from DURABERT_WORKER__TERMINATION_GRACE_PERIOD_SECONDS"
        " 300",
    ),
    "no time to checkpoint": (
        "production",
        _gpu_grace_too_short_for_a_checkpoint,
        "a fine-tune gets 25s to checkpoint after SIGTERM",
    ),
    "auto device on GPU nodes": (
        "production",
        _auto_device_on_gpu_nodes,
        "DURABERT_GPU__DEVICE=auto on a GPU",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SEMANTICS))
def test_semantic_check_can_fail(case: str) -> None:
    overlay, breaker, expected = BROKEN_SEMANTICS[case]
    objects = mutable(overlay)
    breaker(objects)
    problems = all_problems(objects, expect_gpu=EXPECT_GPU[overlay])
    assert any(expected in problem for problem in problems), problems


def test_local_overlay_requests_no_gpu_and_production_does() -> None:
    local = role_deployment(mutable("local"), "gpu")
    production = role_deployment(mutable("production"), "gpu")
    assert "nvidia.com/gpu" not in str(local)
    assert worker_container(production)["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The local cluster's GPU check is the inverse one: a GPU request there is a problem.
    assert all_problems(mutable("production"), expect_gpu=False) != []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_roles_shutdown_budget_comes_from_its_grace_period(overlay: str) -> None:
    objects = mutable(overlay)
    budgets = {}
    for key in ROLES:
        deployment = role_deployment(objects, key)
        settings = pod_settings(objects, worker_container(deployment))
        assert settings is not None
        worker = settings.worker
        assert (
            worker.termination_grace_period_seconds == pod_spec(deployment)["terminationGracePeriodSeconds"]
        )
        budgets[key] = (worker.termination_grace_period_seconds, worker.graceful_shutdown_timeout_seconds)
    assert budgets == {"orchestrator": (60, 40), "data": (90, 70), "gpu": (180, 160)}
    gpu = pod_settings(objects, worker_container(role_deployment(objects, "gpu")))
    assert gpu is not None
    assert gpu.worker.child_stop_seconds == 145


def test_the_orchestrator_mounts_no_artifact_volume_and_only_monitoring_reaches_the_workers() -> None:
    objects = mutable("production")
    orchestrator = role_deployment(objects, "orchestrator")
    assert "durabert-artifacts" not in str(pod_spec(orchestrator))
    for key in ("data", "gpu"):
        assert "durabert-artifacts" in str(pod_spec(role_deployment(objects, key)))
    (rule,) = find(objects, "NetworkPolicy", "durabert-workers")["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    assert sorted(port["port"] for port in rule["ports"]) == [8081, 9464]
