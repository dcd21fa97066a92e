"""The orchestrator Deployment carries its Worker Versioning build id, taken from its image tag.

Every rendered overlay is checked: the orchestrator's settings parse to a deployment version whose
build id is the tag of the image it runs, and the activity workers (unversioned by design) carry
no build id. A copy with the replacement removed shows the check can fail.
"""

import copy

import pytest
from deploy_helpers import OVERLAYS, ROLES, Objects, container_env, deployments, find, pod_settings, rendered
from deploy_helpers import worker_container as container_of

ORCHESTRATOR = ROLES["orchestrator"].deployment


def build_id_problems(objects: Objects) -> list[str]:
    """Problems with the build ids of the rendered Deployments."""
    problems = []
    for deployment in deployments(objects):
        name = deployment["metadata"]["name"]
        container = container_of(deployment)
        build_id = container_env(objects, container).get("DURABERT_WORKER__BUILD_ID")
        if name != ORCHESTRATOR:
            if build_id is not None:
                problems.append(f"{name}: activity workers stay unversioned, but it sets a build id")
            continue
        settings = pod_settings(objects, container)
        version = settings.worker.deployment_version if settings else None
        tag = container["image"].rpartition(":")[2]
        if version is None or version.build_id != tag:
            problems.append(f"{name}: build id {build_id!r} is not the image tag {tag!r}")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_orchestrator_build_id_is_its_image_tag(overlay: str) -> None:
    objects = rendered(overlay)
    assert build_id_problems(objects) == []
    container = container_of(find(objects, "Deployment", ORCHESTRATOR))
    assert container_env(objects, container)["DURABERT_WORKER__DEPLOYMENT_NAME"] == "durabert-orchestrator"


def test_the_build_id_check_can_fail() -> None:
    objects = copy.deepcopy(list(rendered("production")))
    container = container_of(find(objects, "Deployment", ORCHESTRATOR))
    container["image"] = container["image"].rpartition(":")[0] + ":0.3.0"  # re-tagged, id not following
    assert build_id_problems(objects) == [f"{ORCHESTRATOR}: build id '0.1.0' is not the image tag '0.3.0'"]
    gpu = container_of(find(objects, "Deployment", ROLES["gpu"].deployment))
    gpu["env"].append({"name": "DURABERT_WORKER__BUILD_ID", "value": "0.1.0"})
    assert len(build_id_problems(objects)) == 2
