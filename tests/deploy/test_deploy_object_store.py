"""The object-store overlay: no shared volume, pod-local work folders, credentials from a Secret only.

``overlays/object-store`` is rendered like every overlay (test_deploy_manifests.py runs all the
common checks on it, grace periods included); these tests say what is special about it, break a
copy for each of its checks, and run the MinIO bucket Job's own script against a real S3 API.
"""

import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
import pytest
from deploy_helpers import (
    ARTIFACT_CLAIM,
    MINIO,
    ROLES,
    Objects,
    all_problems,
    clean_env,
    container_env,
    find,
    mutable,
    pod_settings,
    pod_spec,
    rendered,
    role_deployment,
    worker_container,
)

if TYPE_CHECKING:
    from support.s3 import S3Server

OVERLAY = "object-store"


def test_no_pod_mounts_a_shared_claim_and_every_worker_works_on_its_own_volume() -> None:
    objects = mutable(OVERLAY)
    assert not [obj for obj in objects if obj["kind"] == "PersistentVolumeClaim"]
    for key in ROLES:
        deployment = role_deployment(objects, key)
        assert ARTIFACT_CLAIM not in str(pod_spec(deployment))
        assert not [v for v in pod_spec(deployment)["volumes"] if "persistentVolumeClaim" in v]
        settings = pod_settings(objects, worker_container(deployment))
        assert settings is not None
        assert settings.artifact_url == "s3://durabert/artifacts"
        # The local copy (artifact_dir) lies inside the work folder, on an emptyDir of its own.
        assert settings.artifact_dir.is_relative_to(settings.work_dir)
        mounts = {m["mountPath"]: m["name"] for m in worker_container(deployment)["volumeMounts"]}
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert "emptyDir" in volumes[mounts[str(settings.work_dir.parent)]]


def test_store_credentials_come_from_the_secret_and_the_endpoint_from_the_settings() -> None:
    objects = mutable(OVERLAY)
    configmap = find(objects, "ConfigMap", "durabert-settings")["data"]
    assert configmap["AWS_ENDPOINT_URL"] == f"http://{MINIO}.durabert.svc.cluster.local:9000"
    assert not {key for key in configmap if "SECRET" in key or "ACCESS_KEY" in key}
    for key in ("data", "gpu"):
        env = {item["name"]: item for item in worker_container(role_deployment(objects, key))["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "durabert-object-store"
    assert "AWS_SECRET_ACCESS_KEY" not in str(worker_container(role_deployment(objects, "orchestrator")))


def _put_claim_back(objects: Objects) -> None:
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": ARTIFACT_CLAIM, "namespace": "durabert"},
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
        }
    )
    spec = pod_spec(role_deployment(objects, "gpu"))
    spec["volumes"].append({"name": "artifacts", "persistentVolumeClaim": {"claimName": ARTIFACT_CLAIM}})


def _work_dir_on_the_root(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["DURABERT_WORK_DIR"] = "/home/durabert/work"


def _work_dir_in_memory(objects: Objects) -> None:
    for volume in pod_spec(role_deployment(objects, "data"))["volumes"]:
        if volume["name"] == "work":
            volume["emptyDir"]["medium"] = "Memory"


def _work_volume_too_big(objects: Objects) -> None:
    for volume in pod_spec(role_deployment(objects, "gpu"))["volumes"]:
        if volume["name"] == "work":
            volume["emptyDir"]["sizeLimit"] = "500Gi"


def _key_in_configmap(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["AWS_SECRET_ACCESS_KEY"] = "minio123"


def _key_as_literal(objects: Objects) -> None:
    for item in worker_container(role_deployment(objects, "gpu"))["env"]:
        if item["name"] == "AWS_SECRET_ACCESS_KEY":
            item.pop("valueFrom")
            item["value"] = "minio123"


def _committed_secret(objects: Objects) -> None:
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "durabert-object-store", "namespace": "durabert"},
            "stringData": {"access-key-id": "admin", "secret-access-key": "minio123"},
        }
    )


def _optional_credentials(objects: Objects) -> None:
    for item in worker_container(role_deployment(objects, "data"))["env"]:
        if item["name"] == "AWS_ACCESS_KEY_ID":
            item["valueFrom"]["secretKeyRef"]["optional"] = True


def _two_roots(objects: Objects) -> None:
    worker_container(role_deployment(objects, "gpu"))["env"].append(
        {"name": "DURABERT_ARTIFACT_ROOT", "value": "s3://elsewhere/artifacts"}
    )


def _endpoint_elsewhere(objects: Objects) -> None:
    find(objects, "ConfigMap", "durabert-settings")["data"]["AWS_ENDPOINT_URL"] = "http://minio:9000"


def _other_secret_key(objects: Objects) -> None:
    for item in worker_container(role_deployment(objects, "gpu"))["env"]:
        if item["name"] == "AWS_SECRET_ACCESS_KEY":
            item["valueFrom"]["secretKeyRef"]["key"] = "password"


def _minio_open_to_all(objects: Objects) -> None:
    del find(objects, "NetworkPolicy", MINIO)["spec"]["ingress"][0]["from"]


def _minio_as_root(objects: Objects) -> None:
    pod_spec(find(objects, "StatefulSet", MINIO))["securityContext"]["runAsUser"] = 0


def _minio_volume_shared(objects: Objects) -> None:
    find(objects, "StatefulSet", MINIO)["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = [
        "ReadWriteMany"
    ]


BROKEN: dict[str, tuple[Callable[[Objects], None], str]] = {
    "shared claim put back": (_put_claim_back, "mounts the claim durabert-artifacts"),
    "work folder on the read-only root": (_work_dir_on_the_root, "is not on a writable pod-local volume"),
    "work folder in memory": (_work_dir_in_memory, "is not on a writable pod-local volume"),
    "work volume over the pod's disk limit": (_work_volume_too_big, "exceed the ephemeral-storage limit"),
    "key in the ConfigMap": (_key_in_configmap, "AWS_SECRET_ACCESS_KEY is a credential"),
    "key as a literal": (_key_as_literal, "AWS_SECRET_ACCESS_KEY is not from a Secret"),
    "committed Secret": (_committed_secret, "never committed"),
    "optional credentials": (_optional_credentials, "AWS_ACCESS_KEY_ID must come from a required Secret"),
    "two roots": (_two_roots, "must share one object-store root"),
    "endpoint is not MinIO": (_endpoint_elsewhere, "AWS_ENDPOINT_URL 'http://minio:9000'"),
    "another Secret key": (_other_secret_key, "AWS_SECRET_ACCESS_KEY is not MinIO's MINIO_ROOT_PASSWORD"),
    "MinIO open to everyone": (_minio_open_to_all, "lets everyone reach MinIO"),
    "MinIO as root": (_minio_as_root, f"{MINIO}/minio: runs as root"),
    "MinIO on a shared volume": (_minio_volume_shared, "replaces the shared ReadWriteMany volume"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_object_store_check_can_fail(case: str) -> None:
    breaker, expected = BROKEN[case]
    objects = mutable(OVERLAY)
    breaker(objects)
    problems = all_problems(objects, expect_gpu=True)
    assert any(expected in problem for problem in problems), problems


def test_the_bucket_job_creates_the_bucket_of_the_artifact_root(s3_server: "S3Server") -> None:
    objects = mutable(OVERLAY)
    (container,) = pod_spec(find(objects, "Job", f"{MINIO}-bucket"))["containers"]
    # The bucket comes from the overlay's own settings; the endpoint and keys from the test server.
    env = {"DURABERT_ARTIFACT_ROOT": container_env(objects, container)["DURABERT_ARTIFACT_ROOT"]}
    env |= s3_server.env()
    command = [sys.executable, *container["command"][1:]]
    assert container["command"][0] == "python"
    for _ in range(2):  # a second apply runs the Job again: an existing bucket is fine
        done = subprocess.run(command, env=clean_env(**env), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "bucket durabert is ready" in done.stdout
    s3 = boto3.client("s3", **_client_options(s3_server.env()))
    assert "durabert" in [bucket["Name"] for bucket in s3.list_buckets()["Buckets"]]


def _client_options(env: dict[str, str]) -> dict[str, str]:
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


def test_the_bucket_job_runs_the_data_worker_image() -> None:
    # The script needs s3fs, which the data worker's image has; a re-tag must carry the Job along.
    objects = rendered(OVERLAY)
    (container,) = pod_spec(find(objects, "Job", f"{MINIO}-bucket"))["containers"]
    assert container["image"] == worker_container(role_deployment(objects, "data"))["image"]
